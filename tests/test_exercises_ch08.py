"""Chapter 8's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest
import torch
from exercise_cells import run_starter, starter_cells
from torch import nn
from torch.optim import lr_scheduler
from torch.utils import benchmark
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from helpers.exercises import ch08_cache, ch08_schedules
from helpers.exercises.ch08 import (
    check_cache_sweep,
    check_gflops,
    check_inference_tensors,
    check_mid_epoch_resume,
    check_warmup,
)

STARTERS = starter_cells("08")
NAMES = {"torch": torch, "nn": nn, "DataLoader": DataLoader, "Callable": Callable}
RIGHT = {"features + w": False, "features * w": True, "relu(features + w)": False, "features @ W": True}


def test_the_chapter_has_one_starter_per_exercise_and_each_is_not_attempted_untouched():
    expected = [
        ("8.1", ["gflops", "width_rounds` and `cache_verdict"]),
        ("8.2", ["checkpoint_mid_epoch` and `remaining_batches"]),
        ("8.3", ["warmup_hold_decay"]),
        ("8.4", ["fails` and `saves"]),
    ]
    assert len(STARTERS) == len(expected)
    for source, (exercise, names) in zip(STARTERS, expected, strict=True):
        out = run_starter(source, **NAMES)
        assert out == "".join(
            f"… Exercise {exercise}: not attempted yet: fill in `{name}` above\n" for name in names
        )


def starter_with(index: int, old: str, new: str) -> str:
    """Run starter ``index`` with ``old`` replaced by the reader's ``new`` code."""
    source = STARTERS[index]
    assert old in source
    return run_starter(source.replace(old, new), **NAMES, itertools=itertools, lr_scheduler=lr_scheduler)


def failed_with(verdict, hint: str | None, *message: str) -> None:
    assert verdict.status == "failed", verdict
    assert verdict.hint == hint or (hint is not None and verdict.hint and hint in verdict.hint), verdict
    for part in message:
        assert part in verdict.message, verdict


@pytest.mark.parametrize(
    ("check", "args", "name"),
    [
        (check_cache_sweep, (12, None), "width_rounds"),
        (check_mid_epoch_resume, ([], None), "checkpoint_mid_epoch"),
        (check_warmup, (0.5,), "warmup_hold_decay"),
        (check_inference_tensors, ({**RIGHT}, None), "saves"),
    ],
)
def test_a_value_where_a_function_belongs_is_named(check, args, name):
    verdict = check(*args)
    assert verdict.status == "failed" and verdict.message.startswith(f"{name} should be a function, got")


# --- 8.1: the width sweep's rounds and their verdict ------------------------------------


def rounds_right(measure, models, n_rounds):
    readings = {hidden: [] for hidden in models}
    for _ in range(n_rounds):
        for hidden, net in models.items():
            readings[hidden].append(measure(net))
    return readings


def rounds_blocked(measure, models, n_rounds):
    return {hidden: [measure(net) for _ in range(n_rounds)] for hidden, net in models.items()}


def rounds_best_only(measure, models, n_rounds):
    return {hidden: max(values) for hidden, values in rounds_right(measure, models, n_rounds).items()}


def rounds_fixed_three(measure, models, n_rounds):
    return rounds_right(measure, models, 3)


def verdict_by(
    *, reference="best", compare="rounds", noise=0.25, inside="strict", all_beyond=True, margin=0.1
):
    """A sound rule (the solution's, or one with other thresholds), or one with a slip."""

    def verdict(rounds, l2_bytes):
        size = (lambda h: 4 * h * h) if inside != "h2" else (lambda h: h * h)
        strict = inside != "or-equal"
        ins = [h for h in rounds if size(h) < l2_bytes or (not strict and size(h) == l2_bytes)]
        beyond = [h for h in rounds if size(h) > l2_bytes]
        ref = max(ins, key=lambda h: max(rounds[h])) if reference == "best" else min(ins)
        if compare == "rounds":
            fell = [h for h in beyond if max(rounds[h]) * (1 + margin) < min(rounds[ref])]
        else:
            fell = [h for h in beyond if max(rounds[h]) * (1 + margin) < max(rounds[ref])]
        if (len(fell) == len(beyond)) if all_beyond else fell:
            return "fell"
        spread = max(max(r) / min(r) - 1 for r in rounds.values())
        return "no dip" if not fell and (noise is None or spread <= noise) else "undecided"

    return verdict


def test_cache_sweep_reference_passes():
    assert check_cache_sweep(rounds_right, verdict_by())


def test_the_cases_verdicts_are_the_references():
    for rounds, l2_bytes, right, hints in ch08_cache.CASES:
        assert verdict_by()(rounds, l2_bytes) == right
        assert right not in hints


@pytest.mark.parametrize(("margin", "noise"), [(0.2, 0.3), (0.05, 0.5), (0.1, 0.15)])
def test_a_sound_rule_with_other_thresholds_passes(margin, noise):
    # the reader designs the rule: thresholds other than the solution's pass too
    assert check_cache_sweep(rounds_right, verdict_by(margin=margin, noise=noise))


@pytest.mark.parametrize(
    ("rounds", "verdict", "hint"),
    [
        (rounds_blocked, verdict_by(), "interleave: each round measures every width once"),
        (rounds_best_only, verdict_by(), "keep every round's reading"),
        (rounds_fixed_three, verdict_by(), "n_rounds readings per width"),
        (rounds_right, verdict_by(reference="narrowest"), "not the narrowest"),
        (rounds_right, verdict_by(compare="best"), "not means or bests"),
        (rounds_right, verdict_by(noise=None), "say 'undecided'"),
        (rounds_right, verdict_by(inside="or-equal"), "inside means 4 h² < L2"),
        (rounds_right, verdict_by(inside="h2"), "inside means 4 h² < L2"),
        (rounds_right, verdict_by(all_beyond=False), "needs every width beyond the cache to fall"),
        (rounds_right, verdict_by(noise=0.0), "that is 'no dip'"),
    ],
)
def test_cache_sweep_mistakes_get_their_hints(rounds, verdict, hint):
    failed_with(check_cache_sweep(rounds, verdict), hint)


def test_cache_sweep_other_wrong_answers_fail():
    failed_with(check_cache_sweep(rounds_right, lambda rounds, l2_bytes: "dip"), None, "not one of")
    failed_with(check_cache_sweep(rounds_right, 3), None, "cache_verdict should be a function")
    failed_with(check_cache_sweep(lambda m, models, n: [], verdict_by()), None, "not a dict")


def test_a_reader_who_measures_width_by_width_gets_the_hint():
    out = starter_with(
        0,
        "raise NotImplementedError  # your code here\n\n\ndef cache_verdict",
        "return {h: [measure(net) for _ in range(n_rounds)] for h, net in models.items()}"
        "\n\n\ndef cache_verdict",
    )
    gflops_line, sweep_line = out.splitlines()[:2]
    assert gflops_line == "… Exercise 8.1: not attempted yet: fill in `gflops` above"
    assert sweep_line.startswith("✗ Exercise 8.1: measure was called on widths ")
    assert "interleave" in out


def gflops_right(net, x):
    with FlopCounterMode(display=False) as counter:
        net(x)
    timer = benchmark.Timer("net(x)", globals={"net": net, "x": x}, num_threads=1)
    return counter.get_total_flops() / timer.blocked_autorange(min_run_time=0.1).median / 1e9


def gflops_seconds(net, x):
    timer = benchmark.Timer("net(x)", globals={"net": net, "x": x}, num_threads=1)
    return timer.blocked_autorange(min_run_time=0.1).median


def gflops_default_threads(net, x):
    with FlopCounterMode(display=False) as counter:
        net(x)
    start = time.perf_counter()
    for _ in range(5):
        net(x)
    return counter.get_total_flops() / ((time.perf_counter() - start) / 5) / 1e9


def gflops_cold(net, x):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        net(x)
        seconds = time.perf_counter() - start
        with FlopCounterMode(display=False) as counter:
            net(x)
        with FlopCounterMode(display=False) as counter:
            net(x)
    finally:
        torch.set_num_threads(threads)
    return counter.get_total_flops() / seconds / 1e9


def test_gflops_reference_passes():
    assert check_gflops(gflops_right)


@pytest.mark.parametrize(
    ("gflops", "hint"),
    [
        (lambda net, x: gflops_right(net, x) / 2, "counts as two operations"),
        (gflops_seconds, "not the seconds a call takes"),
        (gflops_default_threads, "time on one thread"),
        (gflops_cold, "warm up first"),
        (lambda net, x: gflops_right(net, x) * 1e9, "return GFLOP/s"),
    ],
)
def test_gflops_mistakes_get_their_hints(gflops, hint):
    failed_with(check_gflops(gflops), hint)


def test_gflops_other_wrong_answers_fail():
    failed_with(check_gflops(lambda net, x: "fast"), None, "not a positive number")
    failed_with(check_gflops(lambda net, x: gflops_right(net, x) * 3), None)


# --- 8.2: the batches of a resumed epoch ----------------------------------------------


def at_start(loader, shuffle_rng, steps_done):
    state = shuffle_rng.get_state()  # before the epoch draws
    for step, _ in enumerate(loader):
        if step == steps_done:
            break
    return {"step": steps_done, "rng": state}


def at_save(loader, shuffle_rng, steps_done):
    for step, _ in enumerate(loader):
        if step == steps_done:
            return {"step": steps_done, "rng": shuffle_rng.get_state()}
    raise AssertionError("the epoch is longer than steps_done")


def remaining(loader, shuffle_rng, checkpoint):
    shuffle_rng.set_state(checkpoint["rng"])
    return itertools.islice(iter(loader), checkpoint["step"], None)


def skipping(skip):
    """remaining_batches that skips ``skip(steps_done)`` batches."""
    return lambda loader, rng, c: list(remaining(loader, rng, {**c, "step": skip(c["step"])}))


def test_mid_epoch_resume_reference_passes():
    verdict = check_mid_epoch_resume(at_start, remaining)
    assert verdict and "last 5 of 8 batches" in verdict.message
    assert check_mid_epoch_resume(at_start, lambda *a: list(remaining(*a)))  # a list does as well


def not_restored(loader, shuffle_rng, checkpoint):
    return itertools.islice(iter(loader), checkpoint["step"], None)


def restored_late(loader, shuffle_rng, checkpoint):
    batches = iter(loader)
    shuffle_rng.set_state(checkpoint["rng"])
    return itertools.islice(batches, checkpoint["step"], None)


def restored_and_reset(loader, shuffle_rng, checkpoint):
    now = shuffle_rng.get_state()
    batches = list(remaining(loader, shuffle_rng, checkpoint))
    shuffle_rng.set_state(now)  # as if a copy of the generator had been restored
    return batches


@pytest.mark.parametrize(
    ("save", "resume", "hint", "what"),
    [
        (at_save, remaining, "state at the moment of saving", "remaining batches (batch sampler)"),
        (at_start, not_restored, "restore the checkpoint's state into shuffle_rng first", "entries differ"),
        (at_start, skipping(lambda n: n + 1), "skips one batch too many", "has shape (4, 4)"),
        (at_start, skipping(lambda n: n - 1), "repeats the last batch done", "has shape (6, 4)"),
        (at_start, skipping(lambda n: 0), "those are all the epoch's batches", "has shape (8, 4)"),
        (at_start, restored_late, "restore the state before calling it", "entries differ"),
        (at_start, restored_and_reset, "restore into shuffle_rng itself", "the epoch after the resumed one"),
    ],
)
def test_mid_epoch_resume_mistakes_get_their_hints(save, resume, hint, what):
    failed_with(check_mid_epoch_resume(save, resume), hint, what)


def test_mid_epoch_resume_other_wrong_answers_fail_without_a_hint():
    def reversed_order(*args):
        return list(remaining(*args))[::-1]

    failed_with(check_mid_epoch_resume(at_start, reversed_order), None, "entries differ from the reference")
    failed_with(check_mid_epoch_resume(at_start, lambda *a: []), None, "has shape (0, 4), expected (5, 4)")
    failed_with(
        check_mid_epoch_resume(at_start, lambda *a: 5), None, "should be an iterable of batches, got int"
    )
    failed_with(
        check_mid_epoch_resume(at_start, lambda *a: [x for x, _ in remaining(*a)]),
        None,
        "should yield the loader's batches, pairs (x, y)",
    )
    failed_with(
        check_mid_epoch_resume(lambda *a: 3, remaining), None, "should return the checkpoint's dict, got int"
    )
    failed_with(check_mid_epoch_resume(at_start, []), None, "remaining_batches should be a function")


def test_a_checkpoint_that_weights_only_cannot_read_fails():
    def keeps_the_generator(loader, shuffle_rng, steps_done):
        return {"step": steps_done, "generator": shuffle_rng}

    failed_with(
        check_mid_epoch_resume(keeps_the_generator, remaining),
        None,
        "weights_only=True) cannot read the checkpoint back",
    )


def test_a_reader_who_keeps_the_state_at_saving_gets_the_hint():
    source = STARTERS[1]
    body = "raise NotImplementedError  # your code here"
    assert source.count(body) == 2
    save = (
        "for step, _ in enumerate(loader):\n"
        "        if step == steps_done:\n"
        "            return {'step': step, 'rng': shuffle_rng.get_state()}"
    )
    resume = (
        "shuffle_rng.set_state(checkpoint['rng'])\n"
        "    return itertools.islice(iter(loader), checkpoint['step'], None)"
    )
    out = run_starter(source.replace(body, save, 1).replace(body, resume, 1), **NAMES, itertools=itertools)
    assert out.startswith("✗ Exercise 8.2: the sample numbers of the remaining batches (batch sampler)")
    assert "Hint: the checkpoint kept the generator's state at the moment of saving" in out


# --- 8.3: warm-up, hold, decay --------------------------------------------------------


def linear(optimizer, start, iters, end=1.0):
    return lr_scheduler.LinearLR(optimizer, start_factor=start, end_factor=end, total_iters=iters)


def wsd(*, warm=lambda e: e, start=0.01, milestone=lambda t, e: t - 2 * e, decay=lambda e: 2 * e):
    """A warm-up, hold, decay build; each keyword changes one part, as a mistake would."""

    def build(name, optimizer, peak_lr, total_steps, steps_per_epoch):
        e = steps_per_epoch
        parts = [linear(optimizer, start, warm(e)), linear(optimizer, 1.0, decay(e), end=0.0)]
        return lr_scheduler.SequentialLR(optimizer, parts, milestones=[milestone(total_steps, e)])

    return build


def test_warmup_reference_and_other_right_builds_pass():
    verdict = check_warmup(wsd())
    assert (
        verdict and "over 184 steps of 23 per epoch at peak 0.5, the rate starts at 0.005" in verdict.message
    )
    assert (
        "reaches 0.5 at step 23, holds it to step 137 and falls to 0.0109 at the last step" in verdict.message
    )

    def three(name, opt, peak, total, per_epoch):
        hold = lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=total)
        parts = [linear(opt, 0.01, per_epoch), hold, linear(opt, 1.0, 2 * per_epoch, end=0.0)]
        return lr_scheduler.SequentialLR(opt, parts, milestones=[per_epoch, total - 2 * per_epoch])

    def factor(step, total, per_epoch):
        decay_start = total - 2 * per_epoch
        if step < decay_start:
            return 0.01 + 0.99 * min(step / per_epoch, 1.0)
        return 1 - (step - decay_start) / (2 * per_epoch)

    assert check_warmup(three)
    assert check_warmup(lambda n, opt, peak, t, e: lr_scheduler.LambdaLR(opt, lambda s: factor(s, t, e)))


def test_the_reference_rates_are_the_spec():
    rates = ch08_schedules.warmup_hold_decay_rates(0.5, 184, 23)
    assert rates[0] == pytest.approx(0.005) and rates[23] == 0.5 and rates[137] == 0.5
    assert rates[11] == pytest.approx(0.5 * (0.01 + 0.99 * 11 / 23))
    assert rates[138] == 0.5 and rates[139] == pytest.approx(0.5 * 45 / 46)
    assert rates[183] == pytest.approx(0.5 / 46)


@pytest.mark.parametrize(
    ("wrong", "hint", "message"),
    [
        (lambda n, opt, peak, t, e: None, "return a scheduler", "that is the constant rate"),
        (
            wsd(warm=lambda e: 1, milestone=lambda t, e: t // e - 2, decay=lambda e: 2),
            "count in steps (epochs × steps_per_epoch)",
            "entries differ",
        ),
        (
            wsd(milestone=lambda t, e: t - 2 * e + 1),
            "the decay starts one step late",
            "45 of 184 entries differ",
        ),
        (wsd(milestone=lambda t, e: t - 2 * e - 1), "the decay starts one step early", "entries differ"),
        (wsd(warm=lambda e: e + 1), "the warm-up is one step too long", "entries differ"),
        (wsd(warm=lambda e: e - 1), "the warm-up is one step too short", "entries differ"),
        (wsd(start=1.0), "the warm-up starts at the full rate", "23 of 184 entries differ"),
        (wsd(decay=lambda e: 2 * e - 1), "the last step trained at a rate of 0", "entries differ"),
        (
            wsd(milestone=lambda t, e: e, decay=lambda e: 184 - e),
            "hold the peak between the warm-up and the decay",
            "entries differ",
        ),
    ],
)
def test_warmup_mistakes_get_their_hints(wrong, hint, message):
    failed_with(check_warmup(wrong), hint, message)


def test_a_rate_that_changes_once_per_epoch_gets_the_hint():
    def factor(step, total, per_epoch):
        step = step // per_epoch * per_epoch  # the epoch's first step
        if step < total - 2 * per_epoch:
            return 0.01 + 0.99 * min(step / per_epoch, 1.0)
        return 1 - (step - (total - 2 * per_epoch)) / (2 * per_epoch)

    failed_with(
        check_warmup(lambda n, opt, peak, t, e: lr_scheduler.LambdaLR(opt, lambda s: factor(s, t, e))),
        "changes after every optimizer step",
        "entries differ",
    )


def test_warmup_other_wrong_answers_fail_without_a_hint():
    plateau = lambda n, opt, peak, t, e: lr_scheduler.ReduceLROnPlateau(opt)  # noqa: E731
    failed_with(check_warmup(plateau), None, "steps once per epoch with the validation loss")
    failed_with(check_warmup(lambda *a: "warm-up"), None, "should return a learning-rate scheduler, got str")
    # section 8.3's warm-up + cosine: a schedule, but not this one
    failed_with(check_warmup(wsd(decay=lambda e: 1000)), None, "entries differ")
    # right at 0.5 over 184 steps of 23, wrong over 60 of 12: lengths fixed at the first run's
    failed_with(
        check_warmup(wsd(warm=lambda e: 23, milestone=lambda t, e: t - 46, decay=lambda e: 46)),
        None,
        "the rate of each of 60 steps at peak 0.05",
    )


def test_a_reader_who_counts_in_epochs_gets_the_hint():
    out = starter_with(
        2,
        "raise NotImplementedError  # your code here",
        "epochs = total_steps // steps_per_epoch\n"
        "    warmup = lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=1)\n"
        "    decay = lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=2)\n"
        "    return lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[epochs - 2])",
    )
    assert out.startswith("✗ Exercise 8.3: the rate of each of 184 steps at peak 0.5, 23 steps per epoch")
    assert "Hint: those lengths count epochs" in out


# --- 8.4: inference tensors in autograd -----------------------------------------------


def saved_during(compute):
    saved = []

    def keep(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        compute()
    return saved


def saves_reference(features, compute):
    return any(tensor is features for tensor in saved_during(compute))


def saves_by_storage(features, compute):
    address = features.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == address for t in saved_during(compute))


def test_inference_reference_and_a_storage_comparison_pass():
    verdict = check_inference_tensors(RIGHT, saves_reference)
    assert verdict and "features * w and features @ W fail" in verdict.message
    assert "in all 10 combinations (5 of them fail)" in verdict.message
    assert check_inference_tensors(RIGHT, lambda f, c: torch.tensor(saves_by_storage(f, c)))


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("features + w", "saves nothing, so it works"),
        ("features * w", "features itself, which autograd must save"),
        ("relu(features + w)", "relu saves its own output"),
        ("features @ W", "so features is saved"),
    ],
)
def test_inference_wrong_predictions_get_their_hints(name, hint):
    verdict = check_inference_tensors({**RIGHT, name: not RIGHT[name]}, saves_reference)
    failed_with(verdict, hint, f"fails[{name!r}]")


@pytest.mark.parametrize(
    ("saves", "hint", "message"),
    [
        (lambda f, c: bool(saved_during(c)), "not whether anything is saved", "relu(features + w)"),
        (
            lambda f, c: any(t.shape == f.shape and torch.equal(t, f) for t in saved_during(c)),
            "compare identity (`is`) or storage, not values",
            "features.clone() * w",
        ),
        (lambda f, c: c().requires_grad, "the question is what autograd saves", "features + w"),
        (lambda f, c: False, "call compute() inside the saved_tensors_hooks block", "features * w"),
    ],
)
def test_inference_saves_mistakes_get_their_hints(saves, hint, message):
    failed_with(check_inference_tensors(RIGHT, saves), hint, message)


def test_inference_other_wrong_answers_fail_without_a_hint():
    def broken(features, compute):
        raise RuntimeError("something else")

    failed_with(check_inference_tensors(RIGHT, broken), None, "your code raised RuntimeError: something else")
    # "more than one tensor saved": right for the four, wrong for (features + w) ** 2
    failed_with(
        check_inference_tensors(RIGHT, lambda f, c: len(saved_during(c)) >= 2),
        None,
        "saves is False for features * w",
    )
    failed_with(check_inference_tensors(RIGHT, lambda f, c: "yes"), None, "True or False, got 'yes'")
    failed_with(check_inference_tensors(RIGHT, lambda f, c: torch.ones(2)), None, "True or False, got tensor")
    failed_with(check_inference_tensors([], saves_reference), None, "fails should be a dict with the keys")
    failed_with(
        check_inference_tensors({**RIGHT, "features @ W": 1}, saves_reference), None, "True or False, got 1"
    )
    half_done = check_inference_tensors({**RIGHT, "features @ W": ...}, saves_reference)
    assert half_done.status == "not attempted"


def filled_predictions(source: str) -> str:
    for name, value in RIGHT.items():
        source = source.replace(f'"{name}": ...,', f'"{name}": {value},')
    return source


def test_predictions_alone_are_not_yet_an_attempt():
    out = run_starter(filled_predictions(STARTERS[3]), **NAMES)
    assert out == "… Exercise 8.4: not attempted yet: fill in `fails` and `saves` above\n"


def test_a_reader_who_compares_values_gets_the_hint():
    source = filled_predictions(STARTERS[3]).replace(
        "raise NotImplementedError  # your code here",
        "saved = []\n"
        "    with torch.autograd.graph.saved_tensors_hooks(\n"
        "        lambda t: saved.append(t) or t, lambda t: t\n"
        "    ):\n"
        "        compute()\n"
        "    return any(t.shape == features.shape and t.equal(features) for t in saved)",
    )
    out = run_starter(source, **NAMES)
    assert out.startswith("✗ Exercise 8.4: saves is True for features.clone() * w")
    assert out.endswith("compare identity (`is`) or storage, not values\n")

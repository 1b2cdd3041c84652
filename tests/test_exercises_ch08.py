"""Chapter 8's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import copy
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

from helpers.exercises import ch08_optim, ch08_schedules
from helpers.exercises.ch08 import (
    check_inference_tensors,
    check_mid_epoch_resume,
    check_step_seconds,
    check_update_gap,
    check_warmup,
)

STARTERS = starter_cells("08")
NAMES = {"torch": torch, "nn": nn, "DataLoader": DataLoader, "Callable": Callable}
RIGHT = {"features + w": False, "features * w": True, "relu(features + w)": False, "features @ W": True}


def test_the_chapter_has_one_starter_per_exercise_and_each_is_not_attempted_untouched():
    expected = [
        ("8.1", ["step_seconds", "update_gap"]),
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
        (check_step_seconds, (12,), "step_seconds"),
        (check_update_gap, (12,), "update_gap"),
        (check_mid_epoch_resume, ([], None), "checkpoint_mid_epoch"),
        (check_warmup, (0.5,), "warmup_hold_decay"),
        (check_inference_tensors, ({**RIGHT}, None), "saves"),
    ],
)
def test_a_value_where_a_function_belongs_is_named(check, args, name):
    verdict = check(*args)
    assert verdict.status == "failed" and verdict.message.startswith(f"{name} should be a function, got")


# --- 8.1: an optimizer's step alone, and the gap between two optimizers' updates ------


def step_right(optimizer):
    timer = benchmark.Timer("optimizer.step()", globals={"optimizer": optimizer}, num_threads=1)
    return timer.blocked_autorange(min_run_time=0.1).median


def step_with_zero_grad(optimizer):
    def one_step():
        optimizer.zero_grad()
        optimizer.step()

    timer = benchmark.Timer("one_step()", globals={"one_step": one_step}, num_threads=1)
    return timer.blocked_autorange(min_run_time=0.1).median


def step_default_threads(optimizer):
    timer = benchmark.Timer(
        "optimizer.step()", globals={"optimizer": optimizer}, num_threads=torch.get_num_threads()
    )
    return timer.blocked_autorange(min_run_time=0.1).median


def step_cold(optimizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        optimizer.step()
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def test_step_seconds_reference_passes():
    assert check_step_seconds(step_right)


@pytest.mark.parametrize(
    ("step_seconds", "hint"),
    [
        (step_with_zero_grad, "no zero_grad"),
        (step_default_threads, "time on one thread"),
        (step_cold, "warm up first"),
        (lambda optimizer: step_right(optimizer) * 1e3, "return seconds"),
        (lambda optimizer: step_right(optimizer) * 1e6, "return seconds"),
    ],
)
def test_step_seconds_mistakes_get_their_hints(step_seconds, hint):
    failed_with(check_step_seconds(step_seconds), hint)


def test_step_seconds_other_wrong_answers_fail():
    failed_with(check_step_seconds(lambda optimizer: "fast"), None, "not a positive number")
    failed_with(check_step_seconds(lambda optimizer: step_right(optimizer) * 3), None, "warm steps took")
    failed_with(check_step_seconds(lambda optimizer: 1.0), None, "never called optimizer.step()")


def gap_shared(net, grads, options_a, options_b):
    # both optimizers on one set of tensors: each step moves them twice, no gap
    model = copy.deepcopy(net)
    optimizers = [torch.optim.AdamW(model.parameters(), **o) for o in (options_a, options_b)]
    for step_grads in grads:
        for optimizer in optimizers:
            for parameter, grad in zip(model.parameters(), step_grads, strict=True):
                parameter.grad = grad.clone()
            optimizer.step()
    return 0.0


def gap_in_place(net, grads, options_a, options_b):
    # the caller's net trained as the first copy
    other = copy.deepcopy(net)
    optimizers = [torch.optim.AdamW(m.parameters(), **o) for m, o in ((net, options_a), (other, options_b))]
    for step_grads in grads:
        for model, optimizer in zip((net, other), optimizers, strict=True):
            for parameter, grad in zip(model.parameters(), step_grads, strict=True):
                parameter.grad = grad.clone()
            optimizer.step()
    return max((a - b).abs().max().item() for a, b in zip(net.parameters(), other.parameters(), strict=True))


def gap_first_grads_only(net, grads, options_a, options_b):
    return ch08_optim.reference_update_gap(net, [grads[0]] * len(grads), options_a, options_b)


def gap_mean(net, grads, options_a, options_b):
    copies = [copy.deepcopy(net) for _ in range(2)]
    optimizers = [
        torch.optim.AdamW(m.parameters(), **o) for m, o in zip(copies, (options_a, options_b), strict=True)
    ]
    for step_grads in grads:
        for model, optimizer in zip(copies, optimizers, strict=True):
            for parameter, grad in zip(model.parameters(), step_grads, strict=True):
                parameter.grad = grad.clone()
            optimizer.step()
    pairs = zip(copies[0].parameters(), copies[1].parameters(), strict=True)
    return max((a - b).abs().mean().item() for a, b in pairs)


def test_update_gap_reference_passes():
    assert check_update_gap(ch08_optim.reference_update_gap)


def test_the_rate_case_cannot_have_a_zero_gap():
    seed, steps, options_a, options_b = ch08_optim.CASES[0]
    net, grads = ch08_optim._case(seed, steps)
    assert ch08_optim.reference_update_gap(net, grads, options_a, options_b) > 1e-3


@pytest.mark.parametrize(
    ("update_gap", "hint"),
    [
        (gap_shared, "both optimizers stepped the same tensors"),
        (gap_in_place, "work on copies"),
        (gap_first_grads_only, "set every step's gradients"),
        (gap_mean, "not a mean"),
    ],
)
def test_update_gap_mistakes_get_their_hints(update_gap, hint):
    failed_with(check_update_gap(update_gap), hint)


def test_update_gap_other_wrong_answers_fail():
    failed_with(check_update_gap(lambda net, grads, a, b: -1.0), None, "not a number at or above 0")
    failed_with(check_update_gap(lambda net, grads, a, b: 1.0), None, "expected")


def test_a_tensor_gap_of_one_element_is_read_as_its_number():
    def as_tensor(net, grads, options_a, options_b):
        return torch.tensor(ch08_optim.reference_update_gap(net, grads, options_a, options_b))

    assert check_update_gap(as_tensor)


def test_a_reader_who_shares_the_parameters_gets_the_hint():
    out = starter_with(
        0,
        "raise NotImplementedError  # your code here\n\n\nfrom helpers",
        "return 0.0\n\n\nfrom helpers",
    )
    step_line, gap_line = out.splitlines()[:2]
    assert step_line == "… Exercise 8.1: not attempted yet: fill in `step_seconds` above"
    assert gap_line.startswith("✗ Exercise 8.1: update_gap(net, 3 steps of gradients")
    assert "own copy of the model" in out


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

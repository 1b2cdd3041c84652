"""Chapter 8's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
from exercise_cells import run_starter, starter_cells
from torch import nn
from torch.optim import lr_scheduler
from torch.utils import benchmark
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from helpers.exercises import ch08
from helpers.exercises.ch08 import (
    check_compare,
    check_gflops,
    check_inference_tensors,
    check_remaining_batches,
)

STARTERS = starter_cells("08")
GRID = {("constant", 0.05): [0.31, 0.33], ("StepLR", 0.05): [0.20, 0.21], ("constant", 0.5): [2.3, 2.1]}
NAMES = {"torch": torch, "nn": nn, "DataLoader": DataLoader, "final_val": GRID}
RIGHT = {"features + w": False, "features * w": True, "relu(features + w)": False, "features @ W": True}


def test_the_chapter_has_one_starter_per_exercise_and_each_is_not_attempted_untouched():
    expected = [
        ("8.1", "gflops"),
        ("8.2", "remaining_batches"),
        ("8.3", "compare"),
        ("8.4", "fails` and `saves"),
    ]
    assert len(STARTERS) == len(expected)
    for source, (exercise, name) in zip(STARTERS, expected, strict=True):
        out = run_starter(source, **NAMES)
        assert out == f"… Exercise {exercise}: not attempted yet: fill in `{name}` above\n"


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
        (check_gflops, (12,), "gflops"),
        (check_remaining_batches, ([],), "remaining_batches"),
        (check_compare, ("better", GRID), "compare"),
        (check_inference_tensors, ({**RIGHT}, None), "saves"),
    ],
)
def test_a_value_where_a_function_belongs_is_named(check, args, name):
    verdict = check(*args)
    assert verdict.status == "failed" and verdict.message.startswith(f"{name} should be a function, got")


# --- 8.1: a throughput, measured -----------------------------------------------------


def counted(net, x):
    with FlopCounterMode(display=False) as counter:
        net(x)
    return counter.get_total_flops()


def gflops_reference(net, x):
    timer = benchmark.Timer("net(x)", globals={"net": net, "x": x}, num_threads=1)
    return counted(net, x) / timer.blocked_autorange(min_run_time=0.2).median / 1e9


def hand_timed(net, x, *, calls=10, warmup=2, threads=1, restore=True, scale=1.0):
    """A hand loop: ``warmup`` untimed calls, then the mean of ``calls`` timed ones."""
    ops = counted(net, x)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    for _ in range(warmup):
        net(x)
    start = time.perf_counter()
    for _ in range(calls):
        net(x)
    seconds = (time.perf_counter() - start) / calls
    if restore:
        torch.set_num_threads(before)
    return ops / seconds / 1e9 * scale


def test_gflops_reference_and_a_warmed_up_hand_loop_pass_and_leave_the_threads_alone():
    threads = torch.get_num_threads()
    verdict = check_gflops(gflops_reference)
    assert verdict and "for a stand-in of 8,192 operations and 2 ms per call" in verdict.message
    assert check_gflops(hand_timed)
    assert check_gflops(lambda net, x: torch.tensor(hand_timed(net, x)))
    assert torch.get_num_threads() == threads


def test_the_stand_in_counts_what_flop_counter_mode_counts_and_sleeps_as_declared():
    net = ch08._Standin()
    x = torch.zeros(ch08.STANDIN_BATCH, 16)
    assert counted(net, x) == 2 * ch08.STANDIN_BATCH * 16 * 4
    start = time.perf_counter()
    net(x)  # the second call: still a slow one
    assert time.perf_counter() - start >= ch08.FIRST_CALLS_S
    start = time.perf_counter()
    net(x)
    assert ch08.CALL_S <= time.perf_counter() - start < ch08.FIRST_CALLS_S


@pytest.mark.parametrize(
    ("options", "hint", "message"),
    [
        ({"scale": 1e9}, "that is in FLOP/s", "expected about"),
        ({"scale": 1e3}, "that is in MFLOP/s", "expected about"),
        ({"scale": 1 / ch08.STANDIN_BATCH}, "do not divide them by the batch size", "expected about"),
        ({"scale": ch08.STANDIN_BATCH}, "do not multiply by the batch size", "expected about"),
        ({"warmup": 0}, "time only after a warm-up", "expected about"),
        ({"threads": 3}, "Timer(..., num_threads=1)", "ran with 3 threads, not one"),
        ({"restore": False}, "put it back after timing", "left torch with 1 threads"),
    ],
)
def test_gflops_mistakes_get_their_hints(options, hint, message):
    failed_with(check_gflops(lambda net, x: hand_timed(net, x, **options)), hint, message)


def test_gflops_other_wrong_answers_fail_without_a_hint():
    failed_with(check_gflops(lambda net, x: hand_timed(net, x, scale=3.3)), None, "expected about")
    failed_with(check_gflops(lambda net, x: -1.0), None, "not a positive throughput")
    failed_with(check_gflops(lambda net, x: True), None, "gflops(net, x) should be a number, got bool")
    failed_with(check_gflops(lambda net, x: "fast"), None, "got str")


def test_a_reader_who_times_without_warming_up_gets_the_hint():
    out = starter_with(
        0,
        "raise NotImplementedError  # your code here",
        "import time\n"
        "    start = time.perf_counter()\n"
        "    net(x)\n"
        "    return 8192 / (time.perf_counter() - start) / 1e9",
    )
    assert out.startswith("✗ Exercise 8.1: gflops(net, x) is ")
    assert out.endswith("as Timer.blocked_autorange does\n")


# --- 8.2: the batches of a resumed epoch ----------------------------------------------


def remaining(loader, shuffle_rng, saved_state, steps_done):
    shuffle_rng.set_state(saved_state)
    return itertools.islice(iter(loader), steps_done, None)


def test_remaining_batches_reference_passes():
    verdict = check_remaining_batches(remaining)
    assert verdict and "last 5 of 8 batches" in verdict.message
    assert check_remaining_batches(lambda *a: list(remaining(*a)))  # a list does as well


def not_restored(loader, shuffle_rng, saved_state, steps_done):
    return itertools.islice(iter(loader), steps_done, None)


def restored_late(loader, shuffle_rng, saved_state, steps_done):
    batches = iter(loader)
    shuffle_rng.set_state(saved_state)
    return itertools.islice(batches, steps_done, None)


def restored_and_reset(loader, shuffle_rng, saved_state, steps_done):
    now = shuffle_rng.get_state()
    batches = list(remaining(loader, shuffle_rng, saved_state, steps_done))
    shuffle_rng.set_state(now)  # as if a copy of the generator had been restored
    return batches


@pytest.mark.parametrize(
    ("wrong", "hint", "what"),
    [
        (not_restored, "restore saved_state into shuffle_rng first", "remaining batches (batch sampler)"),
        (lambda *a: list(remaining(*a[:3], a[3] + 1)), "skips one batch too many", "has shape (4, 4)"),
        (lambda *a: list(remaining(*a[:3], a[3] - 1)), "repeats the last batch done", "has shape (6, 4)"),
        (lambda *a: list(remaining(*a[:3], 0)), "those are all the epoch's batches", "has shape (8, 4)"),
        (restored_late, "restore the state before calling it", "entries differ"),
        (restored_and_reset, "restore into shuffle_rng itself", "the epoch after the resumed one"),
    ],
)
def test_remaining_batches_mistakes_get_their_hints(wrong, hint, what):
    failed_with(check_remaining_batches(wrong), hint, what)


def test_remaining_batches_other_wrong_answers_fail_without_a_hint():
    def reversed_order(*args):
        return list(remaining(*args))[::-1]

    failed_with(check_remaining_batches(reversed_order), None, "entries differ from the reference")
    failed_with(check_remaining_batches(lambda *a: []), None, "has shape (0, 4), expected (5, 4)")
    failed_with(check_remaining_batches(lambda *a: 5), None, "should be an iterable of batches, got int")
    failed_with(
        check_remaining_batches(lambda *a: [x for x, _ in remaining(*a)]),
        None,
        "should yield the loader's batches, pairs (x, y)",
    )


def test_a_reader_who_restores_after_iter_gets_the_hint():
    out = starter_with(
        1,
        "raise NotImplementedError  # your code here",
        "batches = iter(loader)\n"
        "    shuffle_rng.set_state(saved_state)\n"
        "    return itertools.islice(batches, steps_done, None)",
    )
    assert out.startswith("✗ Exercise 8.2: the sample numbers of the remaining batches (batch sampler)")
    assert out.endswith("Hint: iter(loader) draws from the generator: restore the state before calling it\n")


# --- 8.3: warm-up, then a constant rate -----------------------------------------------


def rule(a, b):
    gap = sum(b) / 2 - sum(a) / 2
    noise = max(abs(a[0] - a[1]), abs(b[0] - b[1]))
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


def test_compare_reference_passes_and_counts_the_grid_pairs():
    verdict = check_compare(rule, GRID)
    assert verdict and "8 made-up pairs and the 2 neighbouring pairs of the grid" in verdict.message


def means_only(a, b):
    return "better" if sum(a) < sum(b) else "worse" if sum(a) > sum(b) else "tie"


def smaller_spread(a, b):
    gap = sum(b) / 2 - sum(a) / 2
    noise = min(abs(a[0] - a[1]), abs(b[0] - b[1]))
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


def spread_rule(a, b, combine):
    """The rule with the two arms' spreads combined otherwise than by max."""
    gap = sum(b) / 2 - sum(a) / 2
    noise = combine(abs(a[0] - a[1]), abs(b[0] - b[1]))
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (means_only, "smaller than the seeds' spread is noise"),
        (smaller_spread, "the LARGER of the two arms' seed spreads"),
        (lambda a, b: means_only([a[0]] * 2, [b[0]] * 2), "not seed 0 alone"),
        (lambda a, b: rule(b, a), "the LOWER loss is the better one"),
        (lambda a, b: spread_rule(a, b, lambda x, y: x + y), "not with their sum"),
        (lambda a, b: spread_rule(a, b, lambda x, y: (x + y) / 2), "not with their mean"),
    ],
)
def test_compare_mistakes_get_their_hints(wrong, hint):
    failed_with(check_compare(wrong, GRID), hint, "expected")


def test_compare_other_wrong_answers_fail_without_a_hint():
    failed_with(check_compare(lambda a, b: "tie", GRID), None, "is 'tie', expected 'better'")
    failed_with(check_compare(lambda a, b: True, GRID), None, "one of 'better', 'worse', 'tie', got True")
    failed_with(check_compare(rule, {"constant": [0.3, 0.3]}), None, "grid should be section 8.3's dict")
    # right on the made-up pairs, wrong on the grid: a tie read as a sign
    grid_only = {"x": [0.10, 0.50], "y": [0.40, 0.42]}

    def sloppy(a, b):
        return "better" if (a, b) == ([0.1, 0.5], [0.4, 0.42]) else rule(a, b)

    failed_with(check_compare(sloppy, grid_only), None, "compare([0.1, 0.5], [0.4, 0.42]) is 'better'")


def test_a_reader_who_compares_means_only_gets_the_hint():
    out = starter_with(
        2,
        "raise NotImplementedError  # your code here",
        "return 'better' if sum(a) < sum(b) else 'worse'",
    )
    assert out.startswith("✗ Exercise 8.3: compare(")
    assert "Hint: a gap between the means smaller than the seeds' spread is noise" in out


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

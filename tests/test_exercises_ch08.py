"""Chapter 8's exercise checkers: right answers pass, the usual mistakes get their hints."""

from __future__ import annotations

import itertools

import pytest
import torch
from exercise_cells import run_starter, starter_cells
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader

from helpers.exercises.ch08 import (
    check_compare,
    check_flops_per_sample,
    check_inference_tensors,
    check_remaining_batches,
)

STARTERS = starter_cells("08")
GRID = {("constant", 0.05): [0.31, 0.33], ("StepLR", 0.05): [0.20, 0.21], ("constant", 0.5): [2.3, 2.1]}
NAMES = {"torch": torch, "DataLoader": DataLoader, "final_val": GRID}
RIGHT = {"features + w": False, "features * w": True, "relu(features + w)": False, "features @ W": True}


def test_the_chapter_has_one_starter_per_exercise_and_each_is_not_attempted_untouched():
    expected = [
        ("8.1", "flops_per_sample"),
        ("8.2", "remaining_batches"),
        ("8.3", "compare"),
        ("8.4", "fails` and `make_usable"),
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
        (check_flops_per_sample, (12,), "flops_per_sample"),
        (check_remaining_batches, ([],), "remaining_batches"),
        (check_compare, ("better", GRID), "compare"),
        (check_inference_tensors, ({**RIGHT}, None), "make_usable"),
    ],
)
def test_a_value_where_a_function_belongs_is_named(check, args, name):
    verdict = check(*args)
    assert verdict.status == "failed" and verdict.message.startswith(f"{name} should be a function, got")


# --- 8.1: operations per sample -------------------------------------------------------


def test_flops_reference_passes_and_states_the_count(capsys):
    verdict = check_flops_per_sample(lambda h: 2 * (64 * h + h * h + 10 * h))
    assert verdict and "FlopCounterMode at widths 1, 7, 300, 2048 (8,691,712" in verdict.message
    assert check_flops_per_sample(lambda h: torch.tensor(2.0 * (64 * h + h * h + 10 * h)))


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        (lambda h: 64 * h + h * h + 10 * h, "that is half"),
        (lambda h: 64 * h + h + h * h + h + 10 * h + 10, "counts the parameters"),
        (lambda h: 2 * (64 * h + h * h), "output layer (hidden -> 10) is missing"),
        (lambda h: 2 * (64 * h + h + 10 * h), "hidden x hidden multiply-adds"),
        (lambda h: 2 * (64 * h + h * h + 10 * h) + 2 * h + 10, "bias additions"),
        (lambda h: 512 * 2 * (64 * h + h * h + 10 * h), "a batch of 512"),
    ],
)
def test_flops_mistakes_get_their_hints(wrong, hint):
    failed_with(check_flops_per_sample(wrong), hint, "entries differ from the reference")


def test_flops_other_wrong_answers_fail_without_a_hint():
    failed_with(check_flops_per_sample(lambda h: 2 * (64 * h + h * h + 10 * h) + 1), None)
    failed_with(
        check_flops_per_sample(lambda h: True), None, "flops_per_sample(1) should be a number, got bool"
    )
    failed_with(check_flops_per_sample(lambda h: "many"), None, "got str")


def test_a_reader_filling_the_flops_starter_with_multiply_adds_gets_the_hint():
    out = starter_with(
        0, "raise NotImplementedError  # your code here", "return 64 * hidden + hidden**2 + 10 * hidden"
    )
    assert out.startswith("✗ Exercise 8.1: flops_per_sample at widths (1, 7, 300, 2048): 4 of 4")
    assert out.endswith(
        "Hint: that is half: count a multiply-add as two operations, as FlopCounterMode does\n"
    )


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


def test_inference_reference_passes():
    verdict = check_inference_tensors(RIGHT, lambda features: features.clone())
    assert verdict and "features * w and features @ W fail" in verdict.message


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
    verdict = check_inference_tensors({**RIGHT, name: not RIGHT[name]}, lambda f: f.clone())
    failed_with(verdict, hint, f"fails[{name!r}]")


@pytest.mark.parametrize(
    ("make_usable", "hint", "message"),
    [
        (lambda f: f.detach(), "call .clone() outside inference_mode", "still an inference tensor"),
        (lambda f: f.requires_grad_(), "give autograd a normal copy", "make_usable raised RuntimeError"),
    ],
)
def test_inference_make_usable_mistakes_get_their_hints(make_usable, hint, message):
    failed_with(check_inference_tensors(RIGHT, make_usable), hint, message)


def test_inference_other_wrong_answers_fail_without_a_hint():
    def broken(features):
        raise RuntimeError("something else")

    failed_with(check_inference_tensors(RIGHT, broken), None, "your code raised RuntimeError: something else")
    failed_with(check_inference_tensors(RIGHT, lambda f: f.clone() + 1), None, "entries differ")
    failed_with(check_inference_tensors(RIGHT, lambda f: f.numpy()), None, "should be a tensor, got ndarray")
    failed_with(check_inference_tensors([], lambda f: f), None, "fails should be a dict with the keys")
    failed_with(
        check_inference_tensors({**RIGHT, "features @ W": 1}, lambda f: f), None, "True or False, got 1"
    )
    half_done = check_inference_tensors({**RIGHT, "features @ W": ...}, lambda f: f.clone())
    assert half_done.status == "not attempted"


def filled_predictions(source: str) -> str:
    for name, value in RIGHT.items():
        source = source.replace(f'"{name}": ...,', f'"{name}": {value},')
    return source


def test_predictions_alone_are_not_yet_an_attempt():
    out = run_starter(filled_predictions(STARTERS[3]), **NAMES)
    assert out == "… Exercise 8.4: not attempted yet: fill in `fails` and `make_usable` above\n"


def test_a_reader_who_detaches_gets_the_hint():
    source = filled_predictions(STARTERS[3]).replace(
        "raise NotImplementedError  # your code here", "return features.detach()"
    )
    out = run_starter(source, **NAMES)
    assert out.startswith("✗ Exercise 8.4: make_usable(features) is still an inference tensor\n")
    assert out.endswith("call .clone() outside inference_mode\n")

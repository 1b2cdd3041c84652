"""Checker for the batch-size sweep of chapter 2's exercise 2.5, and the hints it shares.

:func:`check_sweep_batch_sizes` hands the reader's ``sweep_batch_sizes`` a training
function of its own that trains nothing: it records every call and answers with a
made-up run (a best validation loss from a hand-made table, a best epoch and a
validation curve), so the check
takes milliseconds. It checks which runs were asked for (two per batch size other than
32, at the rate the rule picks for 32 scaled by √(B/32) and by B/32), which run was kept
for each size (section 2.5's rule: the smallest rate within 1 % of the lowest loss) and
the reader's common target loss (any one loss, the same for every kept run, that each
kept run reaches and that some kept run needs more than one epoch to reach), the epoch at
which each kept run first reached it and the count of optimizer updates up to it.
Re-exported by :mod:`helpers.exercises.ch02`; introduced with chapter 2's exercises.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from helpers.exercises import Mismatch, checker, expect
from helpers.exercises import ch02_references as ref

__all__ = ["RATE_HINTS", "TARGET_HINTS", "UPDATE_HINTS", "check_sweep_batch_sizes"]

TARGET_HINTS = {
    "no target": "add an entry 'target' to each kept run: your common target loss, one number, "
    "the same for every kept run",
    "differ": "one target for all kept runs: a loss each run must reach, so that the counts "
    "compare like with like",
    "own best": "that is the run's own best epoch; runs whose bests differ are not compared like "
    "for like: count the epochs until the validation loss first reaches your common target",
    "unreached": "not every kept run reaches that target: a common target must be one that "
    "each of them reaches (no kept run's best loss may lie above it)",
    "first": "target_epoch is the first epoch (counted from 1) whose validation loss is at most the target",
    "epoch one": "every kept run reaches that target at epoch 1, so it tells the runs apart by "
    "nothing: choose a more demanding target that each of them still reaches",
}

UPDATE_HINTS = {
    "floor": "the last, shorter batch is an update too (DataLoader keeps it: drop_last=False), "
    "so an epoch has ceil(n_train / batch_size) updates, math.ceil, not n_train // batch_size",
    "before best": "epochs count from 1, and the target epoch's own updates came before its "
    "validation loss was measured: count epochs 1 to target_epoch",
    "one epoch": "that is one epoch's updates: multiply by the number of epochs up to the target",
    "examples": "one update per batch, not per example: divide by the batch size",
    "ceil total": "round up each epoch's batch count, not the total: every epoch ends with its "
    "own short batch, so the count is best_epoch * ceil(n_train / batch_size)",
}

RATE_HINTS = {
    "lowest": "that is the rate with the lowest loss outright; the rule takes the smallest rate "
    "whose loss is within 1 % of that lowest loss",
    "largest": "that is the largest rate within 1 % of the best; the rule takes the smallest, the "
    "gentlest rate that does about as well",
}

_CALL_HINTS = {
    "from lowest": "scale the rate the rule picks for batches of 32, not the one with the lowest "
    "loss outright: the rule takes the smallest rate within 1 % of the lowest loss",
    "inverted": "a larger batch gets a larger rate: multiply by √(B/32) and by B/32, not by their inverses",
    "with 32": "batches of 32 are section 2.7's runs (`runs_32`): train only the other sizes",
}
_CALL_HINTS["from largest"] = "scale the rate the rule picks for batches of 32: " + RATE_HINTS["largest"]
_TWO_RUNS = "train two runs per other size, one at each scaled rate (√(B/32) and B/32)"
_CALL_HINTS |= {"sqrt only": _TWO_RUNS, "linear only": _TWO_RUNS}


class _Recorder:
    """A stand-in for ``train_and_validate``: records each (lr, batch size), trains nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def __call__(self, lr: float, batch_size: int) -> dict:
        self.calls.append((float(lr), int(batch_size)))
        return ref.sweep_run(lr, batch_size)


def _calls(pairs: list[tuple[float, int]]) -> list[tuple[float, int]]:
    return sorted((round(lr, 12), size) for lr, size in pairs)


def _common_target(kept: dict) -> float:
    """The one target loss the kept runs carry, checked to be reached by each, not by all at
    epoch 1."""
    targets = {size: run.get("target") for size, run in kept.items()}
    expect(
        all(t is not None for t in targets.values()),
        "a kept run has no 'target' entry",
        TARGET_HINTS["no target"],
    )
    expect(
        all(isinstance(t, numbers.Real) and not isinstance(t, bool) for t in targets.values()),
        f"each 'target' should be one number, got {targets!r}",
        TARGET_HINTS["no target"],
    )
    own_bests = all(t == kept[size]["best_val"] for size, t in targets.items())
    expect(
        len(set(targets.values())) == 1,
        f"your targets differ between batch sizes: {targets!r}",
        TARGET_HINTS["own best"] if own_bests else TARGET_HINTS["differ"],
    )
    target = float(next(iter(targets.values())))
    short = [size for size, run in kept.items() if min(run["val"]) > target]
    expect(
        not short,
        f"the kept run for batches of {short[0] if short else ''} never reaches your target loss, {target:g}",
        TARGET_HINTS["unreached"],
    )
    expect(
        any(run["val"][0] > target for run in kept.values()),
        f"every kept run is below your target loss, {target:g}, after its first epoch",
        TARGET_HINTS["epoch one"],
    )
    return target


@checker("2.5", "sweep_batch_sizes")
def check_sweep_batch_sizes(sweep_batch_sizes: Callable[..., Any]) -> str:
    """``sweep_batch_sizes(train, runs_32, sizes, n_train)``: the kept run per size, with its updates."""
    train = _Recorder()
    runs_32 = ref.sweep_runs_32()
    kept = sweep_batch_sizes(train, runs_32, ref.SWEEP_SIZES, ref.SWEEP_N_TRAIN)
    got_calls, want_calls = _calls(train.calls), _calls(ref.sweep_calls())
    if got_calls != want_calls:
        hint = next(
            (h for name, h in _CALL_HINTS.items() if got_calls == _calls(ref.sweep_calls(name))),
            None,
        )
        shown = ", ".join(f"({lr:g}, {size})" for lr, size in got_calls) or "never"
        expected = ", ".join(f"({lr:g}, {size})" for lr, size in want_calls)
        raise Mismatch(f"train(lr, batch_size) was called with {shown}; expected {expected}", hint)
    expect(
        isinstance(kept, dict) and sorted(kept) == sorted(ref.SWEEP_SIZES),
        f"sweep_batch_sizes should return a dict keyed by the batch sizes {list(ref.SWEEP_SIZES)}, "
        f"got {kept if not isinstance(kept, dict) else sorted(kept)!r}",
        "batches of 32 belong in the result too, chosen from runs_32 by the same rule"
        if isinstance(kept, dict) and sorted(kept) == [s for s in sorted(ref.SWEEP_SIZES) if s != 32]
        else None,
    )
    for size in ref.SWEEP_SIZES:
        run = kept[size]
        expect(
            isinstance(run, dict) and "lr" in run and "updates" in run,
            f"for batches of {size} you returned {type(run).__name__}; expected the kept run's "
            "dictionary, with 'target', 'target_epoch' and 'updates' entries added",
        )
        want = ref.sweep_kept(size)
        mistakes = ref.sweep_rate_mistakes(size)
        hint = next((RATE_HINTS[name] for name, lr in mistakes.items() if run["lr"] == lr), None)
        expect(
            run["lr"] == want["lr"],
            f"for batches of {size} you kept the run at lr {run['lr']:g}; the rule keeps lr {want['lr']:g}",
            hint,
        )
    target = _common_target(kept)
    for size in ref.SWEEP_SIZES:
        run = kept[size]
        epoch = run.get("target_epoch")
        want_epoch = ref.first_epoch_at(run["val"], target)
        hint = TARGET_HINTS["own best"] if epoch == run["best_epoch"] else TARGET_HINTS["first"]
        expect(
            "target_epoch" in run,
            f"for batches of {size} there is no 'target_epoch' entry",
            "add an entry 'target_epoch': the first epoch (from 1) at which the kept run "
            "reaches your common target loss",
        )
        expect(
            epoch == want_epoch,
            f"for batches of {size} your target_epoch is {epoch!r}; the kept run first reaches "
            f"your target loss, {target:g}, at epoch {want_epoch}",
            hint,
        )
        updates = run["updates"]
        expect(
            isinstance(updates, numbers.Integral) and not isinstance(updates, bool),
            f"the updates for batches of {size} should be a whole number (an int), got {updates!r}",
            "a count of updates is an int: round n_train / batch_size up with math.ceil"
            if isinstance(updates, float)
            else None,
        )
        case = (want_epoch, ref.SWEEP_N_TRAIN, size)
        made = ref.update_mistakes(*case)
        hint = next((UPDATE_HINTS[name] for name, count in made.items() if updates == count), None)
        right = ref.updates_to_best(*case)
        expect(
            updates == right,
            f"for batches of {size} you counted {updates} updates to the target epoch, "
            f"{want_epoch}; expected {right}",
            hint,
        )
    kept_text = ", ".join(f"lr {kept[size]['lr']:g} for {size}" for size in sorted(kept))
    return (
        f"on the checker's made-up runs (not the chapter's), it asked for {len(want_calls)} runs, "
        f"two per batch size other than 32, and kept {kept_text}, "
        f"each with the epoch it first reached your common target loss, {target:g}, and its "
        "count of updates to it"
    )

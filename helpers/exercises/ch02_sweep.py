"""Checker for the batch-size sweep of chapter 2's exercise 2.5, and the hints it shares.

:func:`check_sweep_batch_sizes` hands the reader's ``sweep_batch_sizes`` a training
function of its own that trains nothing: it records every call and answers with a
made-up run (a best validation loss from a hand-made table, a best epoch and a
validation curve), so the check
takes milliseconds. It checks which runs were asked for (two per batch size other than
32, at the rate the rule picks for 32 scaled by √(B/32) and by B/32), which run was kept
for each size (section 2.5's rule: the smallest rate within 1 % of the lowest loss) and
the epoch at which each kept run first reached the common target loss (the most demanding
one every kept run reaches: the worst of their best validation losses) and the count of
optimizer updates up to it. Re-exported by :mod:`helpers.exercises.ch02`; introduced with
chapter 2's exercises.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from helpers.exercises import Mismatch, checker, expect
from helpers.exercises import ch02_references as ref

__all__ = ["RATE_HINTS", "TARGET_HINTS", "UPDATE_HINTS", "check_sweep_batch_sizes"]

TARGET_HINTS = {
    "own best": "that is the run's own best epoch; runs whose bests differ are not compared like "
    "for like: count the epochs until the validation loss first reaches the common target, the "
    "worst (highest) of the kept runs' best losses",
    "all tried": "the target is the worst of the kept runs' best losses (one per batch size), "
    "not of every run tried",
    "loose": "your target is reached sooner than it need be: take the most demanding loss that "
    "every kept run still reaches",
    "lowest target": "not every kept run reaches that target: a common target must be one that "
    "each of them reaches",
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
        run, want = kept[size], ref.sweep_kept(size)
        expect(
            isinstance(run, dict) and "lr" in run and "updates" in run,
            f"for batches of {size} you returned {type(run).__name__}; expected the kept run's "
            "dictionary, with 'target_epoch' and 'updates' entries added",
        )
        mistakes = ref.sweep_rate_mistakes(size)
        hint = next((RATE_HINTS[name] for name, lr in mistakes.items() if run["lr"] == lr), None)
        expect(
            run["lr"] == want["lr"],
            f"for batches of {size} you kept the run at lr {run['lr']:g}; the rule keeps lr {want['lr']:g}",
            hint,
        )
        epoch = run.get("target_epoch")
        want_epoch = ref.first_epoch_at(want["val"], ref.sweep_target())
        made = ref.target_epoch_mistakes(size)
        hint = next((TARGET_HINTS[name] for name, e in made.items() if epoch == e), None)
        if hint is None and isinstance(epoch, int) and epoch < want_epoch:
            hint = TARGET_HINTS["loose"]
        expect(
            epoch == want_epoch,
            f"for batches of {size} your target_epoch is {epoch!r}; the kept run first reaches "
            f"the common target loss, {ref.sweep_target():g}, at epoch {want_epoch}",
            hint
            if epoch is not None
            else TARGET_HINTS["lowest target"]
            if "target_epoch" in run
            else "add an entry 'target_epoch': the first epoch (from 1) at which the kept run "
            "reaches your common target loss",
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
        f"asked for {len(want_calls)} runs, two per batch size other than 32, and kept {kept_text}, "
        "each with the epoch it reached the common target loss and its count of updates to it"
    )

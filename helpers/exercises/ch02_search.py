"""Checker for the selection step of chapter 2's exercise 2.3 (the logistic-regression search).

:func:`check_choose_run` gives the reader's ``choose_run`` hand-made tables of validation
losses, one list per learning rate and one loss per epoch, and compares its answer (the
rate and epoch with the lowest loss, whether that epoch is its run's last, whether the
rate lies at the edge of the grid) with the answer worked out here. For the usual
mistakes (the last epoch's loss instead of the lowest, epochs counted from 0, an edge
read from the dict's order) it names the mistake. Re-exported by
:mod:`helpers.exercises.ch02`; introduced with chapter 2's exercises.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from helpers.exercises import checker, expect

__all__ = ["check_choose_run"]

# rate -> validation loss per epoch; no ties, and each table fails a different mistake:
# the first chooses the largest rate, the second a rate listed last but inside the grid
# whose best epoch is its last, the third the smallest rate, in a shorter run
_TABLES: tuple[dict[float, list[float]], ...] = (
    {0.01: [0.9, 0.7, 0.5, 0.45], 0.1: [0.6, 0.3, 0.25, 0.28], 1.0: [0.5, 0.2, 0.4, 0.6]},
    {
        0.3: [0.5, 0.35, 0.3, 0.4],
        1.0: [0.4, 0.6, 0.8, 0.9],
        0.03: [0.8, 0.6, 0.5, 0.42],
        0.1: [0.6, 0.4, 0.3, 0.25],
    },
    {0.01: [0.5, 0.3, 0.32], 0.03: [0.4, 0.35, 0.5], 0.1: [0.45, 0.6, 0.7]},
)

_LAST = (
    "compare each run's lowest validation loss (the epoch `fit(select='loss')` keeps), not its last epoch's"
)
_HIGHEST = "keep the lowest validation loss, not the highest"
_FROM_ONE = "count epochs from 1, as `history.best_epoch` does (list index + 1)"
_OPEN = (
    "flag a best epoch that is its run's last (section 2.7's still_improving, with that "
    "run's number of epochs): more epochs might lower the loss further"
)
_EDGE = (
    "a choice is at the edge of the grid when it is the smallest or the largest rate tried: "
    "compare with min() and max() of the rates, not with the dict's first and last keys"
)


def _pick(table: dict[float, list[float]], score: Callable[[list[float]], float]) -> float:
    return min(table, key=lambda rate: score(table[rate]))


@checker("2.3", "choose_run")
def check_choose_run(choose_run: Callable[[dict[float, list[float]]], Any]) -> str:
    """``choose_run(val_losses)`` -> ``(rate, best_epoch, still_improving, at_edge)``."""
    for table in _TABLES:
        given = {rate: list(losses) for rate, losses in table.items()}
        got = choose_run(given)
        where = f"for the losses {table}"
        expect(given == table, f"{where}, choose_run changed the losses it was given")
        expect(
            isinstance(got, tuple | list) and len(got) == 4,
            f"{where}, choose_run returned {got!r}, not (rate, best_epoch, still_improving, at_edge)",
        )
        rate, epoch, open_end, edge = got
        want = _pick(table, min)
        losses = table[want]
        want_epoch = losses.index(min(losses)) + 1
        hint = (
            _LAST
            if rate == _pick(table, lambda run: run[-1]) != want
            else _HIGHEST
            if rate == _pick(table, lambda run: -max(run)) != want
            else None
        )
        expect(rate == want, f"{where}, choose_run chose rate {rate!r}; expected {want:g}", hint)
        expect(
            isinstance(epoch, numbers.Integral) and epoch == want_epoch,
            f"{where}, choose_run gave best epoch {epoch!r}; expected {want_epoch} (counted from 1)",
            _FROM_ONE if epoch == want_epoch - 1 else _LAST if epoch == len(losses) else None,
        )
        want_open = want_epoch == len(losses)
        expect(
            isinstance(open_end, bool | numbers.Integral) and bool(open_end) == want_open,
            f"{where}, choose_run said still improving: {open_end!r}; expected {want_open}",
            _OPEN,
        )
        want_edge = want in (min(table), max(table))
        expect(
            isinstance(edge, bool | numbers.Integral) and bool(edge) == want_edge,
            f"{where}, choose_run said at the edge: {edge!r}; expected {want_edge}",
            _EDGE,
        )
    return (
        f"chooses the rate and epoch with the lowest validation loss in {len(_TABLES)} hand-made "
        "tables, counts its epoch from 1, and flags a best epoch that is its run's last and a "
        "rate at either edge of the grid, in whatever order the rates come"
    )

"""Checkers for the book's exercises: run the reader's attempt, say precisely what is off.

Every exercise has a *starter cell*: a skeleton the reader fills in (a function whose body
is ``raise NotImplementedError``, a value left as ``...``), then a call to the exercise's
checker. A checker is a function decorated with :func:`checker`; it tries the attempt on
fresh inputs against a reference and

- prints ``✓ Exercise 4.1: <the fact it measured>`` when the attempt is right,
- prints ``✗ Exercise 4.1: <what is off>`` and, for a known common mistake, a hint line,
- prints ``… Exercise 4.1: not attempted yet: fill in `gru_step` above`` while the
  skeleton is untouched, and raises nothing in any case, so a chapter executes whole.

It returns a :class:`Verdict`, true only when the attempt passed: the solution cell runs
the same checker on the reference solution and asserts it. Inside a check,
:func:`expect`, :func:`expect_tensor` and :func:`expect_close` raise :class:`Mismatch`
with the message the reader sees. Introduced with chapter 1's exercises; one module per
chapter holds that chapter's checkers (``helpers.exercises.ch04`` ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "Mismatch",
    "NotAttempted",
    "Verdict",
    "checker",
    "expect",
    "expect_close",
    "expect_tensor",
    "require_attempt",
]

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
_SYMBOLS = {PASSED: "✓", FAILED: "✗", NOT_ATTEMPTED: "…"}


class Mismatch(Exception):
    """The attempt ran but is wrong: ``message`` says how, ``hint`` what usually causes it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


class NotAttempted(Exception):
    """The starter is still a skeleton (raised by :func:`require_attempt`)."""


@dataclass(frozen=True)
class Verdict:
    """What a checker concluded. True only when the attempt passed."""

    exercise: str
    status: str
    message: str
    hint: str | None = None

    def __bool__(self) -> bool:
        return self.status == PASSED

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        line = f"{_SYMBOLS[self.status]} Exercise {self.exercise}: {self.message}"
        return line if self.hint is None else f"{line}\n  Hint: {self.hint}"

    def _ipython_display_(self) -> None:
        """Show nothing when a cell ends with the check: the checker printed it already."""


def require_attempt(value: Any, name: str) -> None:
    """Raise :class:`NotAttempted` while ``value`` is still the starter's ``...``."""
    if value is Ellipsis:
        raise NotAttempted(name)


def checker(exercise: str, attempt: str) -> Callable[[Callable[..., str]], Callable[..., Verdict]]:
    """Turn ``check(*reader_objects) -> str`` into a checker for exercise ``exercise``.

    ``attempt`` names what the reader fills in (shown in the "not attempted" line). The
    check returns the sentence to print on success and raises :class:`Mismatch` otherwise.
    A ``NotImplementedError`` from the reader's code, or a ``...`` passed for any argument,
    means "not attempted"; any other exception from the reader's code is reported as a
    failure that names it, not raised.
    """
    if not isinstance(exercise, str) or not exercise:
        raise ValueError(f"exercise must be a non-empty string like '4.1', got {exercise!r}")
    if not isinstance(attempt, str) or not attempt:
        raise ValueError(f"attempt must name what the reader fills in, got {attempt!r}")

    def decorate(check: Callable[..., str]) -> Callable[..., Verdict]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> Verdict:
            verdict = _judge(check, exercise, attempt, args, kwargs)
            print(verdict)
            return verdict

        return run

    return decorate


def _judge(check: Callable[..., str], exercise: str, attempt: str, args: tuple, kwargs: dict) -> Verdict:
    if any(value is Ellipsis for value in (*args, *kwargs.values())):
        return Verdict(exercise, NOT_ATTEMPTED, f"not attempted yet: fill in `{attempt}` above")
    try:
        fact = check(*args, **kwargs)
    except (NotImplementedError, NotAttempted):
        return Verdict(exercise, NOT_ATTEMPTED, f"not attempted yet: fill in `{attempt}` above")
    except Mismatch as wrong:
        return Verdict(exercise, FAILED, wrong.message, wrong.hint)
    except Exception as error:  # the reader's code raised: report it, do not stop the notebook
        return Verdict(exercise, FAILED, f"your code raised {type(error).__name__}: {error}")
    if not isinstance(fact, str) or not fact:
        raise TypeError(f"the check for exercise {exercise} must return the sentence to print, got {fact!r}")
    return Verdict(exercise, PASSED, fact)


def expect(condition: bool, message: str, hint: str | None = None) -> None:
    """Raise :class:`Mismatch` with ``message`` (and ``hint``) unless ``condition`` holds."""
    if not condition:
        raise Mismatch(message, hint)


def expect_close(got: Any, want: float, what: str, *, tol: float, hint: str | None = None) -> float:
    """``got`` must be a real number within ``tol`` of ``want``; returns it as a float."""
    if isinstance(got, torch.Tensor):
        expect(got.numel() == 1, f"{what} should be one number, got a tensor of shape {tuple(got.shape)}")
        got = got.item()
    expect(
        isinstance(got, (int, float)) and not isinstance(got, bool),
        f"{what} should be a number, got {type(got).__name__}",
    )
    expect(math.isfinite(got), f"{what} is {got}, not a finite number", hint)
    expect(abs(got - want) <= tol, f"{what} is {got:.6g}, expected {want:.6g} (± {tol:.2g})", hint)
    return float(got)


def expect_tensor(
    got: Any,
    want: torch.Tensor,
    what: str,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    mistakes: dict[str, torch.Tensor] | None = None,
    check_dtype: bool = True,
) -> float:
    """``got`` must be a tensor of ``want``'s shape (and dtype) with close values.

    Returns the largest absolute difference. On a mismatch, the message names the first
    thing that differs: type, shape, dtype, or how many entries differ, the largest
    difference and where. ``mistakes`` maps a hint to the tensor a known mistake produces;
    when ``got`` matches one, that hint is given.
    """
    expect(isinstance(got, torch.Tensor), f"{what} should be a tensor, got {type(got).__name__}")
    shape, expected = tuple(got.shape), tuple(want.shape)
    hint = _matching_mistake(got, mistakes, atol, rtol)
    expect(shape == expected, f"{what} has shape {shape}, expected {expected}", hint)
    if check_dtype:
        expect(got.dtype == want.dtype, f"{what} has dtype {got.dtype}, expected {want.dtype}", hint)
    got_, want_ = got.detach().cpu().to(torch.float64), want.detach().cpu().to(torch.float64)
    expect(not got_.isnan().any() or want_.isnan().any(), f"{what} contains NaN", hint)
    gap = (got_ - want_).abs()
    wrong = ~torch.isclose(got_, want_, rtol=rtol, atol=atol, equal_nan=True)
    if wrong.any():
        where = tuple(int(i) for i in torch.nonzero(gap == gap[wrong].max())[0])
        raise Mismatch(
            f"{what}: {int(wrong.sum())} of {wrong.numel()} entries differ from the reference, "
            f"the largest by {gap[wrong].max().item():.3g} at index {list(where)}",
            hint,
        )
    return gap.max().item() if gap.numel() else 0.0


def _matching_mistake(
    got: torch.Tensor, mistakes: dict[str, torch.Tensor] | None, atol: float, rtol: float
) -> str | None:
    for hint, produced in (mistakes or {}).items():
        if got.shape == produced.shape and torch.allclose(
            got.detach().cpu().double(), produced.detach().cpu().double(), rtol=rtol, atol=atol
        ):
            return hint
    return None

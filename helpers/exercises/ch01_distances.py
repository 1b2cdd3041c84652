"""Chapter 1's distance checkers (1.4 and 1.5) and the call recorder all its checkers use.

:class:`_CallRecorder` is a ``TorchFunctionMode`` that notes the name and result shape
of every torch function called inside it (so a checker can ask whether the reader made a
matrix product, how big an intermediate got, or whether ``torch.logsumexp`` was called);
:func:`_run` calls the reader's function under it; :func:`_compare` is
:func:`~helpers.exercises.expect_tensor` offering only the mistakes an input can tell
apart. The checkers compare with ``torch.cdist`` and a float64 difference form.
Re-exported by :mod:`helpers.exercises.ch01`; introduced with chapter 1's exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from helpers.exercises import Mismatch, checker, expect, expect_tensor

__all__ = ["check_distances_matmul", "check_relative_errors"]

# Torch functions that multiply matrices (`a @ b` arrives as "matmul").
_MATRIX_PRODUCTS = frozenset(
    {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "addmm", "linear", "tensordot"}
)


class _CallRecorder(TorchFunctionMode):
    """Record the name, result shape and result dtype of every torch function called inside."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else ()
        if isinstance(result, torch.Tensor):
            self.dtypes.add(result.dtype)
        self.calls.append((getattr(func, "__name__", ""), shape))
        return result

    def made_matrix_product(self) -> bool:
        """Whether any recorded call multiplied matrices."""
        return any(name in _MATRIX_PRODUCTS for name, _ in self.calls)

    def called(self, *names: str) -> bool:
        """Whether any recorded call has one of ``names`` (``torch.f`` and ``Tensor.f`` are "f")."""
        return any(name in names for name, _ in self.calls)

    def largest_result(self) -> tuple[int, ...]:
        """The shape of the largest tensor (by its number of elements) any call returned."""
        return max((shape for _, shape in self.calls), key=lambda s: torch.Size(s).numel(), default=())


def _run(
    function: Any,
    args: tuple,
    name: str,
    error_hints: dict[str, str] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> tuple[Any, _CallRecorder]:
    """Call the reader's ``function(*args, **kwargs)``, recording the torch calls it makes.

    An error whose text contains a key of ``error_hints`` becomes a :class:`Mismatch` with
    that hint; other errors (and ``NotImplementedError``, "not attempted") propagate.
    """
    expect(callable(function), f"`{name}` should be a function, got {type(function).__name__}")
    recorder = _CallRecorder()
    try:
        with recorder:
            result = function(*args, **(kwargs or {}))
    except NotImplementedError:
        raise
    except (RuntimeError, TypeError) as error:
        for marker, hint in (error_hints or {}).items():
            if marker in str(error):
                raise Mismatch(f"{name} raised {type(error).__name__}: {error}", hint) from error
        raise
    return result, recorder


def _compare(
    got: Any, want: torch.Tensor, what: str, mistakes: dict[str, torch.Tensor], **tolerance: float
) -> float:
    """:func:`expect_tensor`, offering only the mistakes that this input tells from ``want``.

    (In float32, for example, rounding float32 points to float32 changes nothing.)
    """
    atol, rtol = tolerance.get("atol", 1e-5), tolerance.get("rtol", 1e-4)
    distinct = {
        hint: made
        for hint, made in mistakes.items()
        if made.shape != want.shape or not torch.allclose(made, want, atol=atol, rtol=rtol)
    }
    return expect_tensor(got, want, what, atol=atol, rtol=rtol, mistakes=distinct)


# ---------------------------------------------------------------- exercise 1.4
_PLUS = "the cross term has the wrong sign: |p - c|² = |p|² - 2 p·c + |c|²."
_NO_TWO = "the cross term needs its factor 2: |p - c|² = |p|² - 2 p·c + |c|²."
_SQRT = "these are distances; the matrix holds their squares, so take no square root."
_NORM_AXIS = (
    "the point norms broadcast along the columns: (P,) + (P, C) pairs norm j with column j. "
    "Keep them as a column, sum(dim=1, keepdim=True), shape (P, 1)."
)
_NOT_TRANSPOSED = "(P, D) @ (C, D) does not multiply: use centres.T, (P, D) @ (D, C) -> (P, C)."
_DIFFERENCE_FORM = (
    "your function builds a (P, C, D) tensor, a row for every pair, as section 1.13 does; "
    "expand the square instead: the cross terms of all pairs are one product, (P, D) @ (D, C)."
)


def _squared_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(P, C) squared distances, subtracting first (the reference for 1.4 and 1.5)."""
    return (points.unsqueeze(1) - centres.unsqueeze(0)).square().sum(dim=2)


_NO_STABLE = (
    "the starter's function has a third argument, stable=False: with stable=True it "
    "runs your repaired version, the one that survives the shift."
)
_IN_FLOAT64 = (
    "float64 hides the cancellation, but at twice the memory, and most GPUs compute float64 "
    "many times slower than float32 (MPS not at all). Keep float32 and change what you "
    "subtract: one common point off both sets changes no distance."
)
_OWN_MEANS = (
    "you subtracted a different point from each set (each set's own mean), which moves one "
    "set against the other and changes every distance: subtract the same point, the mean "
    "of the points say, from both sets."
)
_NOT_REPAIRED = (
    "after the shift every squared norm is about 2e6, and float32 rounds each by about 0.1, "
    "more than the small distances. With stable=True, subtract one common point (the mean "
    "of the points, say) from both sets first: that changes no distance."
)


def _run_distances(
    distances_matmul: Any, points: torch.Tensor, centres: torch.Tensor, stable: bool
) -> tuple[Any, _CallRecorder]:
    """The reader's ``distances_matmul(points, centres[, stable=True])``."""
    errors = {"cannot be multiplied": _NOT_TRANSPOSED, "unexpected keyword argument": _NO_STABLE}
    if not stable:
        return _run(distances_matmul, (points, centres), "distances_matmul", errors)
    try:
        return _run(distances_matmul, (points, centres), "distances_matmul", errors, {"stable": True})
    except NotImplementedError:
        raise Mismatch(
            "distances_matmul is right, but not yet repaired: with stable=True it raises NotImplementedError",
            _NOT_REPAIRED,
        ) from None


@checker("1.4", "distances_matmul")
def check_distances_matmul(distances_matmul: Callable[..., torch.Tensor]) -> str:
    """Exercise 1.4: ``distances_matmul(points, centres, stable=False)`` by expanding the square.

    Both versions must be right on fresh sets and make one matrix product; with both
    sets shifted by 1,000 the ``stable=True`` one (the repair) must stay in float32 and
    keep its largest relative error below 1e-2, against float64 distances computed from
    the very float32 shifted sets it receives.
    """
    gen = torch.Generator().manual_seed(104)
    worst = 0.0
    # as many points as centres first, so that (P,) point norms broadcast silently
    for count, dim in ((6, 6), (7, 5)):
        points = torch.randn(count, 3, generator=gen)
        centres = torch.randn(dim, 3, generator=gen)
        want = torch.cdist(points.double(), centres.double()).square().float()
        cross = points @ centres.T
        point_norms, centre_norms = points.square().sum(dim=1), centres.square().sum(dim=1)
        mistakes = {
            _PLUS: point_norms[:, None] + 2 * cross + centre_norms,
            _NO_TWO: point_norms[:, None] - cross + centre_norms,
            _SQRT: want.sqrt(),
        }
        if count == dim:
            mistakes[_NORM_AXIS] = point_norms - 2 * cross + centre_norms
        own_means = _squared_distances(points - points.mean(dim=0), centres - centres.mean(dim=0))
        for stable in (False, True):
            got, recorder = _run_distances(distances_matmul, points, centres, stable)
            call = "distances_matmul(points, centres, stable=True)" if stable else "distances_matmul"
            what = f"{call} for {count} points and {dim} centres"
            if stable:
                # before comparing values: a float64 result would fail on its dtype, without the hint
                expect(
                    torch.float64 not in recorder.dtypes,
                    f"{what} computes in float64 on float32 sets",
                    _IN_FLOAT64,
                )
            wrong = {**mistakes, _OWN_MEANS: own_means} if stable else mistakes
            worst = max(worst, _compare(got, want, what, wrong, atol=1e-4, rtol=1e-4))
            largest = recorder.largest_result()
            expect(
                torch.Size(largest).numel() < count * dim * 3,
                f"{what} is right, but on the way it makes a tensor of shape {largest}",
                _DIFFERENCE_FORM,
            )
            expect(
                recorder.made_matrix_product(),
                f"{what} is right, but makes no matrix product (@)",
                "compute the cross term p·c for all pairs at once as points @ centres.T.",
            )
    # the reference starts from the float32 shifted sets the function receives, so the
    # errors measure what each version adds, not the rounding of the shift itself
    far_points, far_centres = points + 1000, centres + 1000
    reference = _squared_distances(far_points.double(), far_centres.double())
    error = {}
    for stable in (False, True):
        shifted, _ = _run_distances(distances_matmul, far_points, far_centres, stable)
        error[stable] = ((shifted.double() - reference) / reference).abs().max().item()
    shifted_errors = (
        f"with both sets shifted by 1,000 (float32) its largest relative error against "
        f"float64 distances of those shifted sets is {error[False]:.1e}, "
        f"and {error[True]:.1e} with stable=True"
    )
    expect(
        error[True] < 1e-2,
        f"distances_matmul is right, but not yet repaired: {shifted_errors}",
        _NOT_REPAIRED,
    )
    return (
        f"matches float64 torch.cdist to {worst:.1e} on 2 fresh sets, with one matrix product; "
        + shifted_errors
    )


# ---------------------------------------------------------------- exercise 1.5
_SAME_DTYPE = (
    "every error is zero, so the reference was computed in the same precision as the result: "
    "compute it from points.double() and centres.double()."
)
_ROUNDED_INPUTS = (
    "your float64 reference starts from the rounded low-precision inputs, so it leaves out the "
    "rounding of the inputs, the main error: convert the original points to float64."
)
_NO_ABS = "some errors are negative: take the absolute value of the difference."
_BY_RESULT = "divide by the float64 reference distances, not by the low-precision result."
_SUBTRACTED_LOW = (
    "you subtracted in low precision and converted afterwards: the reference was rounded to "
    "the result's dtype first, which moves it by up to half that dtype's eps (6e-8 of each "
    "distance in float32), as much as the float32 errors being measured. Convert the "
    "low-precision result with .double() before subtracting the float64 reference."
)
_NOT_FLOAT64 = (
    "return the errors in float64, as the exercise asks: convert the low-precision result "
    "with .double() and keep the subtraction, the division and the result in float64. "
    "(Rounding the reference to float32 would move it by up to 6e-8 of each distance, the "
    "size of the float32 errors being measured.)"
)


@checker("1.5", "relative_errors")
def check_relative_errors(relative_errors: Callable[..., torch.Tensor]) -> str:
    """Exercise 1.5: ``relative_errors(points, centres, dtype)``, the (P, C) relative errors."""
    gen = torch.Generator().manual_seed(105)
    points, centres = torch.randn(30, 2, generator=gen), torch.randn(8, 2, generator=gen)
    reference = _squared_distances(points.double(), centres.double())
    medians = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        low = _squared_distances(points.to(dtype), centres.to(dtype)).double()
        rounded = _squared_distances(points.to(dtype).double(), centres.to(dtype).double())
        want = (low - reference).abs() / reference
        mistakes = {
            _ROUNDED_INPUTS: (low - rounded).abs() / rounded,
            _NO_ABS: (low - reference) / reference,
            _BY_RESULT: (low - reference).abs() / low,
            # (result - reference.to(dtype)).double(): float32 asks first, and a division
            # in float32 or float64 rounds within the tolerance
            _SUBTRACTED_LOW: (low.to(dtype) - reference.to(dtype)).double().abs() / reference,
        }
        got, _ = _run(relative_errors, (points, centres, dtype), "relative_errors")
        what = f"relative_errors(points, centres, {dtype})"
        all_zero = isinstance(got, torch.Tensor) and got.numel() > 0 and bool((got == 0).all())
        expect(not all_zero, f"{what} is zero everywhere", _SAME_DTYPE)
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            expect(
                got.dtype == torch.float64,
                f"{what} has dtype {got.dtype}, expected torch.float64",
                _NOT_FLOAT64,
            )
        _compare(got, want, what, mistakes, atol=1e-12, rtol=1e-6)
        medians.append(f"{want.median().item() / torch.finfo(dtype).eps:.2f}")
    return (
        f"matches the float64 reference on {len(points)} x {len(centres)} fresh pairs; median "
        f"error {medians[0]}, {medians[1]} and {medians[2]} eps in float32, float16, bfloat16"
    )

"""Checkers for chapter 1's exercises (tensors); the mechanism is :mod:`helpers.exercises`.

Each checker runs the reader's function on fresh inputs from its own seeded generator, on
the CPU, and compares the result with a reference computed here by other means (class
sums with ``index_add_``, ``torch.logsumexp``, ``torch.cdist``, an explicit gather of
rows). Known mistakes are recognised by the result they produce or by the error they
raise; exercises that ask for a matrix product are watched with a ``TorchFunctionMode``
that records which torch functions the reader's code calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from helpers.exercises import Mismatch, checker, expect, expect_tensor

__all__ = [
    "check_class_means",
    "check_distances_matmul",
    "check_logsumexp_rows",
    "check_relative_errors",
    "check_rows_by_last_index",
]

# Torch functions that multiply matrices (`a @ b` arrives as "matmul").
_MATRIX_PRODUCTS = frozenset(
    {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "einsum", "addmm", "linear", "tensordot"}
)


class _CallRecorder(TorchFunctionMode):
    """Record the name and result shape of every torch function called inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else ()
        self.calls.append((getattr(func, "__name__", ""), shape))
        return result

    def made_matrix_product(self) -> bool:
        """Whether any recorded call multiplied matrices."""
        return any(name in _MATRIX_PRODUCTS for name, _ in self.calls)

    def largest_result(self) -> tuple[int, ...]:
        """The shape of the largest tensor (by its number of elements) any call returned."""
        return max((shape for _, shape in self.calls), key=lambda s: torch.Size(s).numel(), default=())


def _run(
    function: Any, args: tuple, name: str, error_hints: dict[str, str] | None = None
) -> tuple[Any, _CallRecorder]:
    """Call the reader's ``function(*args)``, recording the torch calls it makes.

    An error whose text contains a key of ``error_hints`` becomes a :class:`Mismatch` with
    that hint; other errors (and ``NotImplementedError``, "not attempted") propagate.
    """
    expect(callable(function), f"`{name}` should be a function, got {type(function).__name__}")
    recorder = _CallRecorder()
    try:
        with recorder:
            result = function(*args)
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


# ---------------------------------------------------------------- exercise 1.1
_BOOL_MATMUL = (
    "a comparison gives a bool tensor, and @ does not promote: both operands must have the "
    "same dtype. Cast the one-hot matrix with .float() before the product."
)
_SUMS = "these are the class sums: divide each row by the number of examples in its class."
_COUNTS_AXIS = (
    "you divided column j by the count of class j: the (C,) counts broadcast along the last "
    "dimension. Divide row k by its count with counts[:, None], shape (C, 1)."
)
_THREE_CLASSES = "the function ignores num_classes: use torch.arange(num_classes), not arange(3)."


@checker("1.1", "class_means")
def check_class_means(class_means: Callable[..., torch.Tensor]) -> str:
    """Exercise 1.1: ``class_means(features, labels, num_classes)`` from a one-hot ``@``."""
    gen = torch.Generator().manual_seed(101)
    worst = 0.0
    # 4 classes of 4 features first, so that dividing along the wrong axis runs silently
    for classes, dim in ((4, 4), (5, 3)):
        # class k has k + 1 examples, shuffled: every class present, all counts different
        labels = torch.arange(classes).repeat_interleave(torch.arange(1, classes + 1))
        labels = labels[torch.randperm(len(labels), generator=gen)]
        features = torch.randn(len(labels), dim, generator=gen)
        sums = torch.zeros(classes, dim).index_add_(0, labels, features)
        counts = torch.bincount(labels, minlength=classes).float()
        want = sums / counts[:, None]
        mistakes = {_SUMS: sums, _THREE_CLASSES: want[:3]}
        if classes == dim:
            mistakes[_COUNTS_AXIS] = sums / counts
        errors = {"same dtype": _BOOL_MATMUL}
        got, recorder = _run(class_means, (features, labels, classes), "class_means", errors)
        what = f"class_means(features, labels, {classes}) for {len(labels)} examples"
        worst = max(worst, _compare(got, want, what, mistakes))
        expect(
            recorder.made_matrix_product(),
            "class_means gives the right means but makes no matrix product",
            "the exercise asks for one product, one_hot.T @ features: (C, N) @ (N, D) adds up "
            "the rows of each class at once, with no loop over the classes.",
        )
    return f"matches per-class means from index_add_ to {worst:.1e} on 2 fresh sets (4 and 5 classes)"


# ---------------------------------------------------------------- exercise 1.2
_NO_PERMUTE = (
    "reshape or view alone regroups the elements in memory order, so row 0 holds the first "
    "A·B elements. Move the last dimension to the front with permute first."
)
_REVERSED = (
    "permute(2, 1, 0) also swaps the first two dimensions, so each row is in transposed "
    "order; permute(2, 0, 1) keeps them in their original order."
)
_COPY = (
    "the entries are right but the result is a copy: .contiguous(), .clone() or stacking "
    "copies. After permute(2, 0, 1) the merged strides line up, so view works directly."
)
_HARD_CODED = "the shape is hard-coded: take K, A and B from x.shape (or use -1 in view)."
_NO_VIEW = (
    "view cannot merge dimensions whose strides do not line up, as after permute(2, 1, 0); "
    "permute(2, 0, 1) keeps the first two dimensions in order, and those merge."
)


@checker("1.2", "rows_by_last_index")
def check_rows_by_last_index(rows_by_last_index: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Exercise 1.2: ``rows_by_last_index(x)``, the ``(K, A·B)`` view of an ``(A, B, K)`` tensor."""
    gen = torch.Generator().manual_seed(102)
    shapes = ((3, 5, 2), (2, 4, 3))
    for shape in shapes:
        x = torch.randperm(torch.Size(shape).numel(), generator=gen).reshape(shape)
        last = shape[-1]
        want = torch.stack([x[..., k].flatten() for k in range(last)])
        mistakes = {
            _NO_PERMUTE: x.reshape(last, -1),
            _REVERSED: x.permute(2, 1, 0).reshape(last, -1),
        }
        errors = {"is invalid for input of size": _HARD_CODED, "not compatible with": _NO_VIEW}
        got, _ = _run(rows_by_last_index, (x,), "rows_by_last_index", errors)
        what = f"rows_by_last_index(x) for x of shape {shape}"
        _compare(got, want, what, mistakes)
        shares = got.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        expect(shares, f"{what} does not share x's memory", _COPY)
    return f"gives the right rows, as views of x, for x of shapes {shapes[0]} and {shapes[1]}"


# ---------------------------------------------------------------- exercise 1.3
_LITERAL = (
    "exp overflows to inf for entries near 1000 and underflows to 0 (log 0 = -inf) near -1000: "
    "subtract each row's maximum before exp."
)
_NOT_ADDED_BACK = "log Σ exp(z - m) is the answer minus m: add the row maximum back at the end."
_GLOBAL_MAX = (
    "you subtracted the maximum of the whole tensor, so rows far below it still underflow to "
    "-inf: take each row's maximum, z.max(dim=1, keepdim=True).values."
)
_KEEPDIM = (
    "the result is (N, N): the (N, 1) maximum was added to the (N,) sums and broadcast. Add "
    "m.squeeze(1), or sum with keepdim=True and squeeze at the end."
)
_MAX_TUPLE = "z.max(dim=1) returns (values, indices): use its .values."


@checker("1.3", "logsumexp_rows")
def check_logsumexp_rows(logsumexp_rows: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Exercise 1.3: ``logsumexp_rows(z)``, a stable log-sum-exp of each row of a 2-D tensor."""
    gen = torch.Generator().manual_seed(103)
    worst = 0.0
    for offsets, width in (([0.0, 1000.0, -1000.0, 80.0, -300.0], 6), ([-500.0, 3.0, 700.0], 4)):
        shift = torch.tensor(offsets)[:, None]  # (N, 1): rows of very different sizes
        z = 3 * torch.randn(len(offsets), width, generator=gen) + shift
        row_max = z.amax(dim=1, keepdim=True)
        shifted_log = (z - row_max).exp().sum(dim=1).log()  # (N,)
        total_max = z.max()
        mistakes = {
            _LITERAL: z.exp().sum(dim=1).log(),
            _NOT_ADDED_BACK: shifted_log,
            _GLOBAL_MAX: (z - total_max).exp().sum(dim=1).log() + total_max,
            _KEEPDIM: shifted_log + row_max,
        }
        got, _ = _run(logsumexp_rows, (z,), "logsumexp_rows", {"return_types.max": _MAX_TUPLE})
        what = f"logsumexp_rows(z) for z of shape {tuple(z.shape)}"
        want = torch.logsumexp(z, dim=1)
        worst = max(worst, _compare(got, want, what, mistakes, atol=1e-4, rtol=1e-6))
    return f"matches torch.logsumexp to {worst:.1e} on rows around ±1000, where exp overflows"


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


@checker("1.4", "distances_matmul")
def check_distances_matmul(distances_matmul: Callable[..., torch.Tensor]) -> str:
    """Exercise 1.4: ``distances_matmul(points, centres)`` by expanding the square."""
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
        errors = {"cannot be multiplied": _NOT_TRANSPOSED}
        got, recorder = _run(distances_matmul, (points, centres), "distances_matmul", errors)
        what = f"distances_matmul(points, centres) for {count} points and {dim} centres"
        worst = max(worst, _compare(got, want, what, mistakes, atol=1e-4, rtol=1e-4))
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
    shifted, _ = _run(distances_matmul, (points + 1000, centres + 1000), "distances_matmul")
    reference = _squared_distances(points.double() + 1000, centres.double() + 1000)
    error = ((shifted.double() - reference) / reference).abs().max().item()
    return (
        f"matches float64 torch.cdist to {worst:.1e} on 2 fresh sets, with one matrix product; "
        f"with both sets shifted by 1,000 its largest relative error is {error:.2g}"
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
        }
        got, _ = _run(relative_errors, (points, centres, dtype), "relative_errors")
        what = f"relative_errors(points, centres, {dtype})"
        all_zero = isinstance(got, torch.Tensor) and got.numel() > 0 and bool((got == 0).all())
        expect(not all_zero, f"{what} is zero everywhere", _SAME_DTYPE)
        _compare(got, want, what, mistakes, atol=1e-12, rtol=1e-6)
        medians.append(f"{want.median().item() / torch.finfo(dtype).eps:.2f}")
    return (
        f"matches the float64 reference on {len(points)} x {len(centres)} fresh pairs; median "
        f"error {medians[0]}, {medians[1]} and {medians[2]} eps in float32, float16, bfloat16"
    )

"""Checkers for chapter 1's exercises (tensors); the mechanism is :mod:`helpers.exercises`.

Each checker runs the reader's function on fresh inputs from its own seeded generator, on
the CPU, and compares the result with a reference computed here by other means (class
sums with ``index_add_``, ``torch.logsumexp``, ``torch.cdist``, an explicit gather of
rows). Known mistakes are recognised by the result they produce or by the error they
raise; exercises that ask for a matrix product, or forbid a function, are watched with
a ``TorchFunctionMode`` that records which torch functions the reader's code calls. The
distance checkers (1.4 and 1.5) and that recorder live in
:mod:`helpers.exercises.ch01_distances` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from helpers.exercises import checker, expect
from helpers.exercises.ch01_distances import _CallRecorder as _CallRecorder
from helpers.exercises.ch01_distances import _compare, _run, check_distances_matmul, check_relative_errors

__all__ = [
    "check_class_means",
    "check_distances_matmul",
    "check_logsumexp_rows",
    "check_relative_errors",
    "check_rows_by_last_index",
]

# ---------------------------------------------------------------- exercise 1.1
_BOOL_MATMUL = (
    "the one-hot matrix is bool (from a comparison) or int64 (from F.one_hot), and @ does "
    "not promote: both operands must have the same dtype. Cast the one-hot matrix with "
    ".float() (or .to(features.dtype)) before the product."
)
_SUMS = "these are the class sums: divide each row by the number of examples in its class."
_COUNTS_AXIS = (
    "you divided column j by the count of class j: the (C,) counts broadcast along the last "
    "dimension. Divide row k by its count with counts[:, None], shape (C, 1)."
)
_THREE_CLASSES = (
    "the function ignores num_classes: use torch.arange(num_classes, device=labels.device), not arange(3)."
)
_EMPTY_NAN = (
    "an empty class has count 0, and 0 / 0 is nan, which spreads into every later sum or "
    "distance that touches it. Its feature sum is 0 anyway: divide by counts.clamp(min=1), "
    "so that its mean is a row of zeros."
)
_NO_PRODUCT = (
    "the exercise asks for a matrix product: one_hot.T @ features, (C, N) @ (N, D), adds up "
    "the rows of each class at once. (index_add_, scatter_add_ and scatter_reduce reach the "
    "same means without a loop too; they are the checker's reference, not the exercise.)"
)
_MINLENGTH = (
    "a class with no examples at the end of the range gets no count from torch.bincount(labels): "
    "pass minlength=num_classes so that every class has a row."
)
_LOOP = (
    "build the whole (N, C) one-hot matrix at once, labels[:, None] == classes or "
    "F.one_hot(labels, num_classes), and let one product, one_hot.T @ features, add up "
    "every class: the same calls for any number of classes."
)


@checker("1.1", "class_means")
def check_class_means(class_means: Callable[..., torch.Tensor]) -> str:
    """Exercise 1.1: ``class_means(features, labels, num_classes)`` from a one-hot ``@``.

    The attempt must make a matrix product (the scatter functions of the reference are
    not the exercise) and as many torch calls for 5 classes as for 4 (no loop over the
    classes). A class with no examples must get a row of zeros (not nan).
    """
    gen = torch.Generator().manual_seed(101)
    worst = 0.0
    calls = {}  # number of classes -> torch calls made, for the sets with no empty class
    # 4 classes of 4 features first, so that dividing along the wrong axis runs silently;
    # last, 5 classes of which class 2, then class 4 (the last) has no examples
    for classes, dim, empty in ((4, 4, None), (5, 3, None), (5, 3, 2), (5, 3, 4)):
        # class k has k + 1 examples, shuffled: all counts different
        labels = torch.arange(classes).repeat_interleave(torch.arange(1, classes + 1))
        if empty is not None:
            labels = labels[labels != empty]
        labels = labels[torch.randperm(len(labels), generator=gen)]
        features = torch.randn(len(labels), dim, generator=gen)
        sums = torch.zeros(classes, dim).index_add_(0, labels, features)
        counts = torch.bincount(labels, minlength=classes).float()
        want = sums / counts.clamp(min=1)[:, None]
        mistakes = {_SUMS: sums, _THREE_CLASSES: want[:3]}
        if classes == dim:
            mistakes[_COUNTS_AXIS] = sums / counts
        errors = {"same dtype": _BOOL_MATMUL}
        if empty == classes - 1:
            errors["must match the size"] = _MINLENGTH
        got, recorder = _run(class_means, (features, labels, classes), "class_means", errors)
        what = f"class_means(features, labels, {classes}) for {len(labels)} examples"
        if empty is not None:
            what += f", none of class {empty}"
            nan_row = isinstance(got, torch.Tensor) and got.shape == want.shape and got[empty].isnan().any()
            expect(not nan_row, f"{what}: the mean of the empty class {empty} is nan", _EMPTY_NAN)
        worst = max(worst, _compare(got, want, what, mistakes))
        expect(
            recorder.made_matrix_product(),
            "class_means gives the right means but makes no matrix product",
            _NO_PRODUCT,
        )
        if empty is None:
            calls[classes] = len(recorder.calls)
    expect(
        calls[5] <= calls[4],
        f"class_means gives the right means, but it makes {calls[4]} torch calls for 4 "
        f"classes and {calls[5]} for 5: work that grows with the classes is a loop over them",
        _LOOP,
    )
    return (
        f"matches per-class means from index_add_ to {worst:.1e} on 4 fresh sets (4 and 5 "
        "classes), with no more torch calls for 5 classes than for 4 (no loop over them), "
        "and gives an empty class a mean of zeros"
    )


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
_SMALL_SHIFT = (
    "exp still overflows: you shifted by something smaller than the row maximum (the row "
    "minimum or mean?). Shift by the row maximum: the largest exponent must be 0."
)
_MASKED_ROW = (
    "a row of only -inf (every entry masked) has maximum -inf, and z - m is then "
    "-inf - (-inf) = nan. Shift such a row by 0 instead of its maximum: torch.where on "
    "m.isinf() does it, and log 0 = -inf comes out."
)
_CALLS_LOGSUMEXP = (
    "write it from exp, sum and log, with the shift of section 1.9; torch.logsumexp is the "
    "reference the checker compares with."
)


def _masked_rows(gen: torch.Generator) -> torch.Tensor:
    """(3, 4) rows around ±1000: row 1 has two -inf entries, row 2 is all -inf (masked)."""
    z = 3 * torch.randn(3, 4, generator=gen) + torch.tensor([[1000.0], [-1000.0], [0.0]])
    z[1, :2] = float("-inf")
    z[2] = float("-inf")
    return z


def _wide_rows(gen: torch.Generator) -> torch.Tensor:
    """(3, 3) rows whose own entries span 1,000 to 2,000, shuffled within each row."""
    base = torch.tensor([[-1000.0, 0.0, 1000.0], [-1000.0, -500.0, 0.0], [-2000.0, -1500.0, -1000.0]])
    z = base + 3 * torch.randn(base.shape, generator=gen)
    return z.gather(1, torch.rand(base.shape, generator=gen).argsort(dim=1))


@checker("1.3", "logsumexp_rows")
def check_logsumexp_rows(logsumexp_rows: Callable[[torch.Tensor], torch.Tensor]) -> str:
    """Exercise 1.3: ``logsumexp_rows(z)``, a stable log-sum-exp of each row of a 2-D tensor."""
    gen = torch.Generator().manual_seed(103)
    worst = 0.0
    narrow = [([0.0, 1000.0, -1000.0, 80.0, -300.0], 6), ([-500.0, 3.0, 700.0], 4)]
    inputs = [
        # (N, M): rows of very different sizes, each spread over only about ±9
        3 * torch.randn(len(offsets), width, generator=gen) + torch.tensor(offsets)[:, None]
        for offsets, width in narrow
    ]
    # then rows whose own entries are 1,000 apart: a shift by the row minimum or mean overflows;
    # last, rows with masked (-inf) entries, the last row all -inf
    inputs += [_wide_rows(gen), _masked_rows(gen)]
    for z in inputs:
        row_max = z.amax(dim=1, keepdim=True)
        shifted_log = (z - row_max).exp().sum(dim=1).log()  # (N,)
        total_max = z.max()
        row_min = z.amin(dim=1, keepdim=True)
        mistakes = {
            _LITERAL: z.exp().sum(dim=1).log(),
            _NOT_ADDED_BACK: shifted_log,
            _GLOBAL_MAX: (z - total_max).exp().sum(dim=1).log() + total_max,
            _KEEPDIM: shifted_log + row_max,
            _SMALL_SHIFT: (z - row_min).exp().sum(dim=1).log() + row_min[:, 0],
        }
        got, recorder = _run(logsumexp_rows, (z,), "logsumexp_rows", {"return_types.max": _MAX_TUPLE})
        what = f"logsumexp_rows(z) for z of shape {tuple(z.shape)}"
        expect(
            not recorder.called("logsumexp", "special_logsumexp"),
            f"{what} calls torch.logsumexp, which the exercise asks you to write by hand",
            _CALLS_LOGSUMEXP,
        )
        want = torch.logsumexp(z, dim=1)
        masked = want.isneginf()  # rows of only -inf
        if masked.any() and isinstance(got, torch.Tensor) and got.shape == want.shape:
            row = int(masked.nonzero()[0])
            expect(
                not got[masked].isnan().any(),
                f"{what}: row {row} is all -inf, and your function gives nan for it; "
                "torch.logsumexp gives -inf, the log of a sum of zeros",
                _MASKED_ROW,
            )
        _compare(got, want, what, mistakes, atol=1e-4, rtol=1e-6)
        finite = want.isfinite()  # -inf - (-inf) would make the gap nan
        worst = max(worst, (got[finite] - want[finite]).abs().max().item())
    return (
        f"matches torch.logsumexp to {worst:.1e} on rows around ±1000, on rows whose own "
        "entries span up to 2,000, where exp overflows, and gives -inf for a row of only -inf"
    )

"""Chapter 1's exercise checkers (helpers.exercises.ch01): right answers pass, the chapter's
untouched starters say "not attempted", and each common mistake fails with its own hint."""

from __future__ import annotations

import re
import time

import pytest
import torch
from exercise_cells import ROOT, run_starter, starter_cells

from helpers.exercises import ch01, ch01_distances
from helpers.exercises.ch01 import (
    check_class_means,
    check_distances_matmul,
    check_logsumexp_rows,
    check_relative_errors,
    check_rows_by_last_index,
)


# ------------------------------------------------------------------ right answers
def class_means(features, labels, num_classes):
    one_hot = (labels[:, None] == torch.arange(num_classes)).float()  # (N, C)
    return one_hot.T @ features / one_hot.sum(dim=0).clamp(min=1)[:, None]


def rows_by_last_index(x):
    return x.permute(2, 0, 1).view(x.shape[2], -1)


def logsumexp_unguarded(z):
    m = z.amax(dim=1)
    return (z - m[:, None]).exp().sum(dim=1).log() + m


def logsumexp_rows(z):
    m = z.amax(dim=1)
    m = torch.where(m.isinf(), 0.0, m)  # a row of only -inf: shift by 0, not by -inf
    return (z - m[:, None]).exp().sum(dim=1).log() + m


def expanded(points, centres):
    return points.square().sum(1, keepdim=True) - 2 * points @ centres.T + centres.square().sum(1)


def distances_matmul(points, centres, stable=False):
    shift = points.mean(0) if stable else 0
    return expanded(points - shift, centres - shift)


def difference_distances(points, centres):
    diff = points[:, None, :] - centres[None, :, :]
    return (diff * diff).sum(dim=-1)


def relative_errors(points, centres, dtype):
    reference = difference_distances(points.double(), centres.double())
    return (difference_distances(points.to(dtype), centres.to(dtype)).double() - reference).abs() / reference


RIGHT = [
    (
        check_class_means,
        class_means,
        "index_add_ to 0.0e+00 on 4 fresh sets (4 and 5 classes), with no more torch calls",
    ),
    (check_rows_by_last_index, rows_by_last_index, "as views of x, for x of shapes (3, 5, 2)"),
    (check_logsumexp_rows, logsumexp_rows, "span up to 2,000, where exp overflows, and gives -inf for a row"),
    # the errors themselves depend on the processor's float32 matrix product: tested below
    (check_distances_matmul, distances_matmul, "with one matrix product; with both sets shifted by 1,000"),
    (check_relative_errors, relative_errors, "median error 0.35, 0.42 and 0.43 eps"),
]


@pytest.mark.parametrize(("check", "answer", "fact"), RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_a_right_answer_passes_with_the_measured_fact(check, answer, fact, capsys):
    verdict = check(answer)
    assert verdict.passed, verdict
    assert fact in verdict.message
    assert capsys.readouterr().out.startswith("✓ Exercise 1.")


def test_counts_without_minlength_fail_on_an_empty_last_class_with_a_hint():
    def no_minlength(f, y, n):
        one_hot = (y[:, None] == torch.arange(n)).float()  # (N, C)
        return one_hot.T @ f / torch.bincount(y).clamp(min=1)[:, None]

    verdict = check_class_means(no_minlength)
    assert not verdict.passed and "minlength=num_classes" in verdict.hint


def test_the_other_spellings_of_a_right_answer_pass():
    # a matrix product written as torch.mm, a view written as flatten
    assert check_class_means(
        lambda f, y, n: (
            torch.mm((y[:, None] == torch.arange(n)).T.float(), f)
            / torch.bincount(y, minlength=n).clamp(min=1)[:, None]
        )
    )

    # F.one_hot cast to float, and the counts from a second product
    def by_one_hot(f, y, n):
        one_hot = torch.nn.functional.one_hot(y, n).float()  # (N, C)
        return one_hot.T @ f / (one_hot.T @ torch.ones(len(y))).clamp(min=1)[:, None]

    assert check_class_means(by_one_hot)
    assert check_rows_by_last_index(lambda x: x.movedim(2, 0).flatten(1))
    # merging A and B before the transpose: a view too
    assert check_rows_by_last_index(lambda x: x.reshape(-1, x.shape[-1]).T)
    # the guard of exercise 3 spelled with nan_to_num
    assert check_logsumexp_rows(
        lambda z: (
            (z - z.amax(1, keepdim=True).nan_to_num(neginf=0.0)).exp().sum(1).log()
            + z.amax(1).nan_to_num(neginf=0.0)
        )
    )


NAMES = ["class_means", "rows_by_last_index", "logsumexp_rows", "distances_matmul", "relative_errors"]


def test_the_chapters_untouched_starters_report_not_attempted_quickly():
    sources = starter_cells("01")
    assert len(sources) == len(NAMES)
    for k, (source, name) in enumerate(zip(sources, NAMES, strict=True), start=1):
        start = time.perf_counter()
        out = run_starter(source, torch=torch)
        assert time.perf_counter() - start < 1.0
        assert out == f"… Exercise 1.{k}: not attempted yet: fill in `{name}` above\n"


def test_the_solution_cells_call_the_same_checkers():
    text = (ROOT / "chapters" / "01_tensors.py").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"assert check_{name}({name})" in text


def failed(verdict):
    assert verdict.status == "failed", verdict
    return verdict


# ------------------------------------------------------------------ exercise 1.1
def _one_hot(labels, n):
    return (labels[:, None] == torch.arange(n)).float()


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda f, y, n: (y[:, None] == torch.arange(n)).T @ f, ch01._BOOL_MATMUL),
        (lambda f, y, n: torch.nn.functional.one_hot(y, n).T @ f, ch01._BOOL_MATMUL),
        (lambda f, y, n: _one_hot(y, n).T @ f, ch01._SUMS),
        (lambda f, y, n: _one_hot(y, n).T @ f / _one_hot(y, n).sum(0), ch01._COUNTS_AXIS),
        (lambda f, y, n: class_means(f, y, 3), ch01._THREE_CLASSES),
    ],
    ids=["bool one-hot", "int64 one_hot", "sums", "counts axis", "three classes"],
)
def test_class_means_mistakes_get_their_hint(attempt, hint):
    assert failed(check_class_means(attempt)).hint == hint


def test_class_means_that_divides_an_empty_class_by_zero_gets_the_nan_hint():
    def unguarded(f, y, n):
        one_hot = _one_hot(y, n)
        return one_hot.T @ f / one_hot.sum(dim=0)[:, None]

    verdict = failed(check_class_means(unguarded))
    assert verdict.hint == ch01._EMPTY_NAN
    assert "none of class 2: the mean of the empty class 2 is nan" in verdict.message


def test_class_means_that_fills_an_empty_class_with_other_values_fails():
    def ones_for_empty(f, y, n):
        means = class_means(f, y, n)
        return torch.where(torch.bincount(y, minlength=n)[:, None] == 0, 1.0, means)

    verdict = failed(check_class_means(ones_for_empty))
    assert verdict.hint is None and "3 of 15 entries differ" in verdict.message


def test_class_means_by_a_loop_without_a_product_is_not_the_exercise():
    verdict = failed(check_class_means(lambda f, y, n: torch.stack([f[y == k].mean(0) for k in range(n)])))
    assert "makes no matrix product" in verdict.message and verdict.hint == ch01._NO_PRODUCT


def test_class_means_by_a_loop_with_one_product_per_class_fails():
    def product_per_class(f, y, n):
        rows = []
        for k in range(n):
            in_class = (y == k).float()  # (N,)
            rows.append(in_class @ f / in_class.sum().clamp(min=1))
        return torch.stack(rows)

    verdict = failed(check_class_means(product_per_class))
    assert verdict.hint == ch01._LOOP
    assert "makes 25 torch calls for 4 classes and 31 for 5" in verdict.message


def test_class_means_that_builds_the_one_hot_matrix_by_a_loop_fails():
    def columns_by_loop(f, y, n):
        one_hot = torch.stack([(y == k).float() for k in range(n)], dim=1)  # (N, C)
        return one_hot.T @ f / one_hot.sum(dim=0).clamp(min=1)[:, None]

    assert failed(check_class_means(columns_by_loop)).hint == ch01._LOOP


def _mean_by_scatter(f, y, n):
    index = y[:, None].expand(-1, f.shape[1])
    return torch.zeros(n, f.shape[1]).scatter_reduce(0, index, f, "mean", include_self=False)


def _sums_by_index(f, y, n, scatter):
    zeros = torch.zeros(n, f.shape[1])
    sums = (
        zeros.scatter_add_(0, y[:, None].expand(-1, f.shape[1]), f) if scatter else zeros.index_add_(0, y, f)
    )
    return sums / torch.bincount(y, minlength=n).clamp(min=1)[:, None]


@pytest.mark.parametrize(
    "attempt",
    [
        lambda f, y, n: _sums_by_index(f, y, n, scatter=False),
        lambda f, y, n: _sums_by_index(f, y, n, scatter=True),
        _mean_by_scatter,
    ],
    ids=["index_add_", "scatter_add_", "scatter_reduce"],
)
def test_class_means_by_the_references_scatter_functions_is_not_the_exercise(attempt):
    verdict = failed(check_class_means(attempt))
    assert verdict.message == "class_means gives the right means but makes no matrix product"
    assert verdict.hint == ch01._NO_PRODUCT


def test_class_means_other_wrong_answers_fail_without_a_hint():
    verdict = failed(check_class_means(lambda f, y, n: class_means(f, y, n) + 0.1))
    assert verdict.hint is None and "16 of 16 entries differ" in verdict.message
    verdict = failed(check_class_means(torch.zeros(3, 4)))
    assert verdict.message == "`class_means` should be a function, got Tensor"


def test_an_unrelated_error_is_reported_without_a_hint():
    def broken(f, y, n):
        raise RuntimeError("something else")

    verdict = failed(check_class_means(broken))
    assert verdict.message == "your code raised RuntimeError: something else" and verdict.hint is None


# ------------------------------------------------------------------ exercise 1.2
@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda x: x.reshape(x.shape[2], -1), ch01._NO_PERMUTE),
        (lambda x: x.view(x.shape[2], -1), ch01._NO_PERMUTE),
        (lambda x: x.permute(2, 1, 0).reshape(x.shape[2], -1), ch01._REVERSED),
        (lambda x: x.transpose(0, 2).reshape(x.shape[2], -1), ch01._REVERSED),
        (lambda x: x.permute(2, 1, 0).view(x.shape[2], -1), ch01._NO_VIEW),
        (lambda x: x.permute(2, 0, 1).view(4, 6), ch01._HARD_CODED),
        (lambda x: x.permute(2, 0, 1).contiguous().view(x.shape[2], -1), ch01._COPY),
        (lambda x: torch.stack([x[..., k].flatten() for k in range(x.shape[2])]), ch01._COPY),
    ],
    ids=[
        "reshape only",
        "view only",
        "reversed",
        "transpose",
        "view fails",
        "hard-coded",
        "contiguous",
        "stack",
    ],
)
def test_rows_by_last_index_mistakes_get_their_hint(attempt, hint):
    assert failed(check_rows_by_last_index(attempt)).hint == hint


def test_rows_by_last_index_other_wrong_answers_fail_without_a_hint():
    verdict = failed(check_rows_by_last_index(lambda x: x.permute(2, 0, 1)))
    assert verdict.hint is None and "has shape (2, 3, 5), expected (2, 15)" in verdict.message
    verdict = failed(check_rows_by_last_index(lambda x: rows_by_last_index(x).flip(1)))
    assert verdict.hint is None and "entries differ" in verdict.message


# ------------------------------------------------------------------ exercise 1.3
def _shifted(z):
    return z - z.amax(dim=1, keepdim=True)


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda z: z.exp().sum(dim=1).log(), ch01._LITERAL),
        (lambda z: _shifted(z).exp().sum(dim=1).log(), ch01._NOT_ADDED_BACK),
        (lambda z: (z - z.max()).exp().sum(dim=1).log() + z.max(), ch01._GLOBAL_MAX),
        (
            lambda z: _shifted(z).exp().sum(dim=1).log() + z.max(dim=1, keepdim=True).values,
            ch01._KEEPDIM,
        ),
        (lambda z: (z - z.max(dim=1)).exp().sum(dim=1).log(), ch01._MAX_TUPLE),
    ],
    ids=["literal", "not added back", "global max", "keepdim", "max tuple"],
)
def test_logsumexp_rows_mistakes_get_their_hint(attempt, hint):
    assert failed(check_logsumexp_rows(attempt)).hint == hint


@pytest.mark.parametrize(
    "shift",
    [lambda z: z.amin(dim=1, keepdim=True), lambda z: z.mean(dim=1, keepdim=True)],
    ids=["row minimum", "row mean"],
)
def test_logsumexp_rows_shifted_by_less_than_the_maximum_fails_on_wide_rows(shift):
    verdict = failed(check_logsumexp_rows(lambda z: (z - shift(z)).exp().sum(dim=1).log() + shift(z)[:, 0]))
    assert verdict.hint == ch01._SMALL_SHIFT and "the largest exponent must be 0" in verdict.hint
    assert "z of shape (3, 3)" in verdict.message  # passes the narrow rows, fails the wide ones


@pytest.mark.parametrize(
    "attempt",
    [lambda z: torch.logsumexp(z, 1), lambda z: z.logsumexp(dim=1), lambda z: torch.special.logsumexp(z, 1)],
    ids=["torch.logsumexp", "method", "torch.special"],
)
def test_logsumexp_rows_that_calls_torch_logsumexp_fails(attempt):
    verdict = failed(check_logsumexp_rows(attempt))
    assert "calls torch.logsumexp, which the exercise asks you to write by hand" in verdict.message
    assert verdict.hint == ch01._CALLS_LOGSUMEXP


def test_logsumexp_rows_other_wrong_answers_fail_without_a_hint():
    verdict = failed(check_logsumexp_rows(lambda z: logsumexp_rows(z) + 1e-2))
    assert verdict.hint is None and "5 of 5 entries differ" in verdict.message
    verdict = failed(check_logsumexp_rows(lambda z: logsumexp_rows(z.double())))
    assert verdict.hint is None and "dtype torch.float64" in verdict.message
    # a fully masked row turned into 0 rather than -inf
    verdict = failed(check_logsumexp_rows(lambda z: logsumexp_unguarded(z).nan_to_num(nan=0.0)))
    assert verdict.hint is None and "1 of 3 entries differ" in verdict.message


def test_logsumexp_rows_without_the_masked_row_guard_gets_its_hint():
    verdict = failed(check_logsumexp_rows(logsumexp_unguarded))
    assert verdict.hint == ch01._MASKED_ROW
    assert "z of shape (3, 4): row 2 is all -inf, and your function gives nan" in verdict.message


# ------------------------------------------------------------------ exercise 1.4
def _norms(t):
    return t.square().sum(dim=1)


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (lambda p, c: _norms(p)[:, None] + 2 * p @ c.T + _norms(c), ch01_distances._PLUS),
        (lambda p, c: _norms(p)[:, None] - p @ c.T + _norms(c), ch01_distances._NO_TWO),
        (lambda p, c: distances_matmul(p, c).clamp(min=0).sqrt(), ch01_distances._SQRT),
        (lambda p, c: _norms(p) - 2 * p @ c.T + _norms(c), ch01_distances._NORM_AXIS),
        (lambda p, c: _norms(p)[:, None] - 2 * p @ c + _norms(c), ch01_distances._NOT_TRANSPOSED),
        (difference_distances, ch01_distances._DIFFERENCE_FORM),
        (
            lambda p, c: (_norms(p)[:, None] - 2 * (p[:, None] * c[None]).sum(-1)) + _norms(c),
            ch01_distances._DIFFERENCE_FORM,
        ),
    ],
    ids=["plus", "no two", "sqrt", "norm axis", "not transposed", "difference form", "broadcast product"],
)
def test_distances_matmul_mistakes_get_their_hint(attempt, hint):
    assert failed(check_distances_matmul(attempt)).hint == hint


def test_distances_matmul_without_a_matrix_product_fails():
    def by_rows(p, c):
        return torch.stack([_norms(p) - 2 * (p * c[j]).sum(1) + _norms(c)[j] for j in range(len(c))], dim=1)

    verdict = failed(check_distances_matmul(by_rows))
    assert "makes no matrix product" in verdict.message and "points @ centres.T" in verdict.hint


def test_distances_matmul_other_wrong_answers_fail_without_a_hint():
    verdict = failed(check_distances_matmul(lambda p, c: distances_matmul(p, c).double()))
    assert verdict.hint is None and "dtype torch.float64, expected torch.float32" in verdict.message
    verdict = failed(check_distances_matmul(lambda p, c: distances_matmul(p, c).T))
    assert verdict.hint is None and "entries differ" in verdict.message


def test_distances_matmul_reports_the_cancellation_and_the_repair():
    message = check_distances_matmul(distances_matmul).message
    words = message.split()
    unrepaired, repaired = float(words[-5].rstrip(",")), float(words[-3])
    # the expanded square loses every digit (an error of exactly 1 where a distance rounds to 0)
    assert unrepaired >= 0.5 and repaired < 1e-2
    # measured against the float32 shifted sets the function receives, the repair adds
    # 4.4e-6 here (2.3e-6 to 1e-5 for other common shifts); a reference built from the
    # exactly shifted sets would report the shift's own rounding, 2.4e-4, for every repair
    assert repaired < 5e-5, repaired
    # both in scientific notation with two digits: an uncentred error of exactly 1 must
    # read "1.0e+00", not a bare "1" that a reader cannot place beside the repaired one
    assert re.search(r"sets is \d\.\de[+-]\d\d, and \d\.\de[+-]\d\d with stable=True$", message), message


def test_distances_matmul_that_is_not_repaired_fails():
    verdict = failed(check_distances_matmul(lambda p, c, stable=False: expanded(p, c)))
    assert verdict.message.startswith("distances_matmul is right, but not yet repaired: with both")
    assert verdict.hint == ch01_distances._NOT_REPAIRED
    assert float(verdict.message.split()[-3]) >= 0.5  # the error with stable=True


def test_distances_matmul_with_the_repair_not_written_fails():
    def first_part(p, c, stable=False):
        if stable:
            raise NotImplementedError
        return expanded(p, c)

    verdict = failed(check_distances_matmul(first_part))
    assert verdict.message.endswith("with stable=True it raises NotImplementedError")
    assert verdict.hint == ch01_distances._NOT_REPAIRED


def test_distances_matmul_without_the_centred_argument_fails():
    verdict = failed(check_distances_matmul(expanded))
    assert "unexpected keyword argument 'stable'" in verdict.message
    assert verdict.hint == ch01_distances._NO_STABLE


def test_distances_matmul_repaired_without_the_product_fails():
    def difference_repair(p, c, stable=False):
        return difference_distances(p, c) if stable else expanded(p, c)

    verdict = failed(check_distances_matmul(difference_repair))
    assert verdict.message.startswith("distances_matmul(points, centres, stable=True) for 6 points")
    assert verdict.hint == ch01_distances._DIFFERENCE_FORM


def test_distances_matmul_repaired_by_computing_in_float64_fails():
    def in_float64(p, c, stable=False):
        return expanded(p.double(), c.double()).float() if stable else expanded(p, c)

    verdict = failed(check_distances_matmul(in_float64))
    assert verdict.message.endswith("computes in float64 on float32 sets")
    assert verdict.hint == ch01_distances._IN_FLOAT64


def test_distances_matmul_repaired_with_a_float64_result_gets_the_float64_hint():
    def float64_result(p, c, stable=False):
        return distances_matmul(p.double(), c.double(), stable) if stable else expanded(p, c)

    verdict = failed(check_distances_matmul(float64_result))
    assert verdict.message.endswith("for 6 points and 6 centres computes in float64 on float32 sets")
    assert verdict.hint == ch01_distances._IN_FLOAT64


def test_distances_matmul_centring_each_set_on_its_own_mean_gets_its_hint():
    def own_means(p, c, stable=False):
        return expanded(p - p.mean(0), c - c.mean(0)) if stable else expanded(p, c)

    verdict = failed(check_distances_matmul(own_means))
    assert verdict.message.startswith("distances_matmul(points, centres, stable=True) for 6 points")
    assert verdict.hint == ch01_distances._OWN_MEANS


def test_distances_matmul_repair_must_still_be_right():
    verdict = failed(check_distances_matmul(lambda p, c, stable=False: expanded(p, c) + stable))
    assert verdict.message.startswith("distances_matmul(points, centres, stable=True) for 6 points and")
    assert "entries differ" in verdict.message


# ------------------------------------------------------------------ exercise 1.5
def _low(p, c, dtype):
    return difference_distances(p.to(dtype), c.to(dtype)).double()


@pytest.mark.parametrize(
    ("attempt", "hint"),
    [
        (
            lambda p, c, t: (_low(p, c, t) - difference_distances(p, c).double()).abs(),
            ch01_distances._SAME_DTYPE,
        ),
        (
            lambda p, c, t: relative_errors(p.to(t).float(), c.to(t).float(), t),
            ch01_distances._ROUNDED_INPUTS,
        ),
        (
            lambda p, c, t: (
                (_low(p, c, t) - difference_distances(p.double(), c.double()))
                / difference_distances(p.double(), c.double())
            ),
            ch01_distances._NO_ABS,
        ),
        (
            lambda p, c, t: (
                (_low(p, c, t) - difference_distances(p.double(), c.double())).abs() / _low(p, c, t)
            ),
            ch01_distances._BY_RESULT,
        ),
    ],
    ids=["same dtype", "rounded inputs", "no abs", "by result"],
)
def test_relative_errors_mistakes_get_their_hint(attempt, hint):
    assert failed(check_relative_errors(attempt)).hint == hint


def _subtracted_low(p, c, t, divide_in_float64):
    reference = difference_distances(p.double(), c.double())
    low = difference_distances(p.to(t), c.to(t))
    gap = (low - reference.to(t)).abs()  # the subtraction in t
    if divide_in_float64:
        return gap.double() / reference
    return (gap / reference.to(t)).double()


@pytest.mark.parametrize("divide_in_float64", [False, True])
def test_relative_errors_subtracted_in_low_precision_gets_its_hint(divide_in_float64):
    verdict = failed(check_relative_errors(lambda p, c, t: _subtracted_low(p, c, t, divide_in_float64)))
    assert verdict.hint == ch01_distances._SUBTRACTED_LOW
    # it fails on float32, the first dtype tried, on its values (its dtype is right)
    assert verdict.message.startswith("relative_errors(points, centres, torch.float32): ")
    assert "entries differ" in verdict.message


def test_relative_errors_subtracted_in_float32_for_every_dtype_gets_its_hint():
    def in_float32(p, c, t):
        reference = difference_distances(p.double(), c.double())
        low = difference_distances(p.to(t), c.to(t)).float()
        return ((low - reference.float()).abs() / reference.float()).double()

    assert failed(check_relative_errors(in_float32)).hint == ch01_distances._SUBTRACTED_LOW


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_relative_errors_not_in_float64_gets_the_float64_hint(dtype):
    verdict = failed(check_relative_errors(lambda p, c, t: relative_errors(p, c, t).to(dtype)))
    assert verdict.hint == ch01_distances._NOT_FLOAT64
    assert f"has dtype {dtype}, expected torch.float64" in verdict.message


def test_relative_errors_other_wrong_answers_fail_without_a_hint():
    verdict = failed(check_relative_errors(lambda p, c, t: 2 * relative_errors(p, c, t)))
    assert verdict.hint is None and "240 of 240 entries differ" in verdict.message
    verdict = failed(check_relative_errors(lambda p, c, t: relative_errors(p, c, t).median()))
    assert verdict.hint is None and "has shape (), expected (30, 8)" in verdict.message
    verdict = failed(check_relative_errors(lambda p, c, t: torch.empty(0)))
    assert verdict.hint is None and "has shape (0,)" in verdict.message


def test_the_call_recorder_sees_matrix_products_and_the_largest_result():
    recorder = ch01._CallRecorder()
    with recorder:
        a = torch.ones(2, 3)
        torch.einsum("ij,kj->ik", a, a)
    assert recorder.made_matrix_product() and recorder.largest_result() == (2, 3)
    assert ch01._CallRecorder().largest_result() == ()
    assert recorder.called("einsum", "mm") and not recorder.called("logsumexp")

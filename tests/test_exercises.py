"""The exercise-checking mechanism (helpers.exercises): verdicts, messages, hints."""

from __future__ import annotations

import pytest
import torch

from helpers.exercises import (
    Mismatch,
    Verdict,
    checker,
    expect,
    expect_close,
    expect_tensor,
    require_attempt,
)


@checker("9.9", "double")
def check_double(double) -> str:
    x = torch.arange(4.0)
    expect_tensor(double(x), 2 * x, "double(x)", mistakes={"you squared instead of doubling": x**2})
    return "doubles 4 numbers exactly"


def test_a_right_attempt_passes_and_prints_the_measured_fact(capsys):
    verdict = check_double(lambda x: x + x)
    assert verdict and verdict.passed
    assert capsys.readouterr().out == "✓ Exercise 9.9: doubles 4 numbers exactly\n"


def test_the_untouched_skeleton_is_not_attempted_and_raises_nothing(capsys):
    def double(x):
        raise NotImplementedError

    verdict = check_double(double)
    assert not verdict and verdict.status == "not attempted"
    assert capsys.readouterr().out == "… Exercise 9.9: not attempted yet: fill in `double` above\n"
    assert not check_double(...)  # a value left as the starter's ...
    assert "not attempted yet" in capsys.readouterr().out


def test_a_known_mistake_fails_with_its_hint(capsys):
    verdict = check_double(lambda x: x * x)
    assert not verdict and verdict.status == "failed"
    out = capsys.readouterr().out
    assert out.startswith("✗ Exercise 9.9: double(x): 2 of 4 entries differ from the reference")
    assert out.endswith("  Hint: you squared instead of doubling\n")


def test_an_unknown_mistake_fails_without_a_hint(capsys):
    verdict = check_double(lambda x: x + 1)
    assert not verdict and verdict.hint is None
    assert (
        "3 of 4 entries differ from the reference, the largest by 2 at index [3]" in capsys.readouterr().out
    )


def test_an_exception_in_the_readers_code_is_reported_not_raised(capsys):
    verdict = check_double(lambda x: x.no_such_method())
    assert verdict.status == "failed"
    assert "your code raised AttributeError" in capsys.readouterr().out


def test_a_check_must_return_its_sentence():
    @checker("9.8", "f")
    def check_nothing(f) -> str:
        f()

    with pytest.raises(TypeError, match=r"exercise 9\.8 must return the sentence to print, got None"):
        check_nothing(lambda: None)


@pytest.mark.parametrize(
    ("exercise", "attempt", "message"), [("", "f", "exercise must"), ("1.1", "", "attempt must")]
)
def test_checker_rejects_empty_names(exercise, attempt, message):
    with pytest.raises(ValueError, match=message):
        checker(exercise, attempt)


def test_verdict_shows_nothing_more_when_a_cell_ends_with_it():
    verdict = Verdict("1.1", "passed", "fine")
    assert verdict._ipython_display_() is None and str(verdict) == "✓ Exercise 1.1: fine"


def test_require_attempt_flags_only_the_ellipsis():
    require_attempt(0, "x")
    require_attempt(None, "x")

    @checker("9.7", "answer")
    def check_answer(answer) -> str:
        require_attempt(answer["value"], "answer")
        return "ok"

    assert check_answer({"value": ...}).status == "not attempted"
    assert check_answer({"value": 1}).passed


@pytest.mark.parametrize(
    ("got", "message"),
    [
        ([1.0, 2.0], "x should be a tensor, got list"),
        (torch.zeros(3), "x has shape (3,), expected (2, 2)"),
        (torch.zeros(2, 2, dtype=torch.float64), "x has dtype torch.float64, expected torch.float32"),
        (torch.full((2, 2), float("nan")), "x contains NaN"),
    ],
)
def test_expect_tensor_names_the_first_difference(got, message):
    with pytest.raises(Mismatch, match=message.replace("(", r"\(").replace(")", r"\)")):
        expect_tensor(got, torch.zeros(2, 2), "x")


def test_expect_tensor_returns_the_largest_gap_and_honours_tolerances():
    want = torch.tensor([1.0, 2.0])
    assert expect_tensor(want + torch.tensor([0.0, 1e-6]), want, "x") == pytest.approx(1e-6, rel=0.1)
    with pytest.raises(Mismatch, match=r"1 of 2 entries differ .* by 0.01 at index \[1\]"):
        expect_tensor(want + torch.tensor([0.0, 0.01]), want, "x")
    assert expect_tensor(want.double(), want, "x", check_dtype=False) == 0.0
    with pytest.raises(Mismatch) as wrong:
        expect_tensor(torch.zeros(3), want, "x", mistakes={"sliced one too many": torch.zeros(3)})
    assert wrong.value.hint == "sliced one too many"


def test_expect_close_accepts_numbers_and_one_element_tensors():
    assert expect_close(torch.tensor(0.5), 0.5, "p", tol=0.0) == 0.5
    assert expect_close(3, 3.05, "n", tol=0.1) == 3.0
    for got, message in [
        ("0.5", "p should be a number, got str"),
        (True, "p should be a number, got bool"),
        (torch.zeros(2), r"p should be one number, got a tensor of shape \(2,\)"),
        (float("inf"), "p is inf, not a finite number"),
        (0.7, r"p is 0.7, expected 0.5 \(± 0.1\)"),
    ]:
        with pytest.raises(Mismatch, match=message):
            expect_close(got, 0.5, "p", tol=0.1)


def test_expect_carries_the_hint():
    expect(True, "never")
    with pytest.raises(Mismatch) as wrong:
        expect(False, "the loss went up", hint="zero the gradients")
    assert (wrong.value.message, wrong.value.hint) == ("the loss went up", "zero the gradients")

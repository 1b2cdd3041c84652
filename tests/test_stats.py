"""helpers.stats: the paired gap against hand and NumPy computations, and its words."""

import numpy as np
import pytest
import torch

from helpers.stats import gap_table, gap_text, noise_level, paired_gap, verdict


def test_paired_gap_matches_a_hand_computed_paired_standard_error():
    # two draws, four images; a right in 3/4 and 4/4, b right in 1/4 and 2/4
    a = [torch.tensor([1.0, 1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0, 1.0])]
    b = [torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0, 1.0])]
    gap, se_draws, se_images = paired_gap(a, b)
    # per draw: 50 and 50 points -> mean 50, no spread between the draws
    assert gap == pytest.approx(50.0)
    assert se_draws == pytest.approx(0.0)
    # per image, averaged over the draws: 50, 50, 100, 0 points
    per_image = np.array([50.0, 50.0, 100.0, 0.0])
    assert se_images == pytest.approx(per_image.std(ddof=1) / 2)


def test_paired_gap_against_numpy_on_random_scores_and_its_sign():
    generator = torch.Generator().manual_seed(7)
    a = [(torch.rand(50, generator=generator) < p).float() for p in (0.8, 0.6, 0.7)]
    b = [(torch.rand(50, generator=generator) < 0.5).float() for _ in range(3)]
    gap, se_draws, se_images = paired_gap(a, b)
    diffs = 100 * (np.stack([t.numpy() for t in a]) - np.stack([t.numpy() for t in b]))
    assert gap == pytest.approx(diffs.mean())
    assert se_draws == pytest.approx(diffs.mean(axis=1).std(ddof=1) / np.sqrt(3))
    assert se_images == pytest.approx(diffs.mean(axis=0).std(ddof=1) / np.sqrt(50))
    back, *ses = paired_gap(b, a)
    assert back == pytest.approx(-gap) and ses == pytest.approx([se_draws, se_images])


ONE = torch.ones(4)


@pytest.mark.parametrize(
    ("right_a", "right_b", "error", "message"),
    [
        (torch.ones(2, 4), [ONE, ONE], TypeError, "right_a must be a list of .* got Tensor$"),
        ("ab", [ONE, ONE], TypeError, "right_a must be a list of .* got str$"),
        (3, [ONE, ONE], TypeError, "right_a must be a list of .* got int$"),
        ([ONE, ONE], [[1.0] * 4, [1.0] * 4], TypeError, "right_b must hold torch"),
        ([ONE], [ONE], ValueError, "at least 2 draws"),
        ([ONE, torch.ones(5)], [ONE, ONE], ValueError, "one length"),
        ([torch.ones(2, 3), torch.ones(2, 3)], [ONE, ONE], ValueError, "one length"),
        ([torch.ones(1), torch.ones(1)], [ONE, ONE], ValueError, "one length N >= 2"),
        ([ONE, ONE], [torch.ones(3), torch.ones(3)], ValueError, "same draws and images"),
    ],
)
def test_paired_gap_rejects_bad_input(right_a, right_b, error, message):
    with pytest.raises(error, match=message):
        paired_gap(right_a, right_b)


def test_paired_gap_takes_the_smallest_sample_two_draws_of_two_images():
    a = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])]
    b = [torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.0])]
    gap, se_draws, se_images = paired_gap(a, b)
    # per draw 50 and 50 points; per image 100 and 0 points
    assert (gap, se_draws) == pytest.approx((50.0, 0.0))
    assert se_images == pytest.approx(np.std([100.0, 0.0], ddof=1) / np.sqrt(2))


@pytest.mark.parametrize(
    ("gap", "se", "level"),
    [(2.0, 1.0, "noise"), (-2.0, 1.0, "noise"), (2.5, 1.0, "borderline"), (-3.0, 1.0, "borderline"),
     (3.01, 1.0, "clear"), (-4.0, 1.0, "clear"), (0.0, 0.0, "noise"), (0.1, 0.0, "clear")],
)  # fmt: skip
def test_noise_level_bands_at_two_and_three_standard_errors(gap, se, level):
    assert noise_level(gap, se) == level


def test_gap_text_and_verdict_words():
    assert gap_text(4.2, 0.8) == "+4.2 ± 0.8 points"
    assert gap_text(-3.5, 1.8) == "-3.5 ± 1.8 points (within noise)"
    assert gap_text(2.5, 1.0) == "+2.5 ± 1.0 points (borderline)"
    assert gap_text(3.01, 1.0) == "+3.0 ± 1.0 points"  # clear: no mark
    assert verdict(4.2, 0.8) == "beat"
    assert verdict(-4.2, 0.8) == "did worse than"
    assert verdict(2.5, 1.0) == "probably beat"
    assert verdict(-2.5, 1.0) == "probably did worse than"
    assert verdict(2.0, 1.0) == "could not be told apart from"  # within noise, either sign
    assert verdict(-2.0, 1.0) == "could not be told apart from"
    assert verdict(0.0, 1.0) == "could not be told apart from"
    assert verdict(3.01, 1.0) == "beat"
    assert verdict(-3.01, 1.0) == "did worse than"
    assert verdict(0.5, 0.1) == "beat"  # a small gap, clear of a smaller error


def test_gap_helpers_reject_bad_numbers():
    with pytest.raises(TypeError, match=r"gap must be a number, got str$"):
        noise_level("1", 1.0)
    with pytest.raises(TypeError, match=r"gap must be a number, got bool$"):
        noise_level(True, 1.0)
    with pytest.raises(TypeError, match="se must be a number"):
        gap_text(1.0, torch.tensor(1.0))
    with pytest.raises(ValueError, match="se must be >= 0"):
        verdict(1.0, -0.5)
    with pytest.raises(ValueError, match="gap must be finite"):
        noise_level(float("nan"), 1.0)


def test_gap_table_rows_in_order_with_signed_gaps_and_readings():
    rows = [("a minus b", 10, (4.24, 0.8)), ("b minus c", 1, (-2.5, 1.0)), ("c minus a", 3, (0.04, 1.3))]
    lines = gap_table(rows).splitlines()
    assert lines[:2] == [
        "| comparison | labels per class | gap (points) | std. error | reading |",
        "|---|--:|--:|--:|---|",
    ]
    # one row per comparison, in the order given: clear, borderline, noise
    assert lines[2:] == [
        "| a minus b | 10 | +4.2 | 0.8 | clear |",
        "| b minus c | 1 | -2.5 | 1.0 | borderline |",
        "| c minus a | 3 | +0.0 | 1.3 | noise |",
    ]
    assert gap_table([]).count("\n") == 1  # the header alone


def test_gap_table_rejects_bad_rows():
    with pytest.raises(TypeError, match=r"rows must be a list.*got str"):
        gap_table("a minus b")
    with pytest.raises(ValueError, match=r"each row must be \(comparison"):
        gap_table([("a minus b", 10, 4.2)])
    with pytest.raises(ValueError, match="se must be >= 0"):
        gap_table([("a minus b", 10, (4.2, -1.0))])

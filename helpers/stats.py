"""Paired comparisons of two training recipes, and how to put their gap in words.

Two arms (say fine-tuning and feature extraction) are trained on the same draws (labels,
random start) and scored on the same images, so their difference is taken draw by draw
and image by image: the gap's standard error then has two parts, one from the draws and
one from which images happened to be scored. Introduced in chapter 05 (transfer learning).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["gap_table", "gap_text", "noise_level", "paired_gap", "verdict"]


def _scores(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, Sequence) or isinstance(value, (str, torch.Tensor)):
        raise TypeError(f"{name} must be a list of (N,) tensors, one per draw, got {type(value).__name__}")
    if not all(isinstance(t, torch.Tensor) for t in value):
        raise TypeError(f"{name} must hold torch.Tensor objects")
    if len(value) < 2:
        raise ValueError(f"{name} needs at least 2 draws for a spread, got {len(value)}")
    if any(t.dim() != 1 or len(t) < 2 or t.shape != value[0].shape for t in value):
        raise ValueError(f"{name} must hold (N,) tensors of one length N >= 2")
    return torch.stack([t.double() for t in value])  # (draws, N)


def paired_gap(
    right_a: Sequence[torch.Tensor], right_b: Sequence[torch.Tensor]
) -> tuple[float, float, float]:
    """Arm a's accuracy minus arm b's, in points, paired draw by draw and image by image.

    ``right_a[i]`` and ``right_b[i]``: (N,) tensors, 1.0 where draw i's model got an image
    right, over the same images in the same order. Returns the mean gap over the draws, its
    standard error over the draws (which labels, which random start) and over the images
    (which images the score happened to use); chapter 05 adds the two in quadrature.
    """
    a, b = _scores("right_a", right_a), _scores("right_b", right_b)
    if a.shape != b.shape:
        raise ValueError(
            f"right_a and right_b must have the same draws and images, got {tuple(a.shape)} "
            f"and {tuple(b.shape)}"
        )
    diffs = a - b  # (draws, N): -1, 0 or 1 per image
    per_draw = 100 * diffs.mean(dim=1)  # (draws,)
    per_image = 100 * diffs.mean(dim=0)  # (N,): each image's gap, averaged over the draws
    se_draws = per_draw.std().item() / len(per_draw) ** 0.5
    se_images = per_image.std().item() / len(per_image) ** 0.5
    return per_draw.mean().item(), se_draws, se_images


def _gap_and_se(gap: object, se: object) -> tuple[float, float]:
    for name, value in (("gap", gap), ("se", se)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if se < 0:
        raise ValueError(f"se must be >= 0, got {se}")
    return float(gap), float(se)


def noise_level(gap: float, se: float) -> str:
    """A rule of thumb, not a test: |gap| up to 2 se is "noise", up to 3 "borderline",
    beyond that "clear" (chapter 05)."""
    gap, se = _gap_and_se(gap, se)
    if abs(gap) <= 2 * se:
        return "noise"
    return "borderline" if abs(gap) <= 3 * se else "clear"


def gap_text(gap: float, se: float) -> str:
    """A gap in points and its standard error in words, marked when noise or borderline:
    ``'+4.2 ± 0.8 points'``, ``'-3.5 ± 1.8 points (within noise)'``."""
    level = noise_level(gap, se)
    text = f"{gap:+.1f} ± {se:.1f} points"
    if level == "noise":
        return f"{text} (within noise)"
    return f"{text} (borderline)" if level == "borderline" else text


def verdict(gap: float, se: float) -> str:
    """How arm a compared with arm b, in words: "beat", "probably beat", "could not be
    told apart from" (within noise, either sign), "probably did worse than", "did worse than"."""
    level = noise_level(gap, se)
    if level == "noise":
        return "could not be told apart from"
    outcome = "beat" if gap > 0 else "did worse than"
    return outcome if level == "clear" else f"probably {outcome}"


def gap_table(rows: Sequence[tuple[str, int, tuple[float, float]]]) -> str:
    """A Markdown table of ``(comparison, labels per class, (gap, se))`` rows, each gap and
    standard error in points with one decimal and read by :func:`noise_level` (chapter 05)."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise TypeError(
            f"rows must be a list of (comparison, labels per class, (gap, se)), got {type(rows).__name__}"
        )
    table = [
        "| comparison | labels per class | gap (points) | std. error | reading |",
        "|---|--:|--:|--:|---|",
    ]
    for row in rows:
        if not (
            isinstance(row, Sequence) and len(row) == 3 and isinstance(row[2], Sequence) and len(row[2]) == 2
        ):
            raise ValueError(f"each row must be (comparison, labels per class, (gap, se)), got {row!r}")
        name, per_class, (gap, se) = row
        level = noise_level(gap, se)
        table.append(f"| {name} | {per_class} | {gap:+.1f} | {se:.1f} | {level} |")
    return "\n".join(table)

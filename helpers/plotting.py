"""Figures the chapters share: loss curves, image grids and a picture of broadcasting.

``plot_broadcast`` is introduced in chapter 01, ``plot_losses`` in chapter 02 and
``plot_image_grid`` in chapter 03.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = ["plot_broadcast", "plot_image_grid", "plot_losses"]


def plot_losses(
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str = "epoch",
    ylabel: str = "loss",
    log_y: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Plot one line per named curve against epochs 1, 2, ...; returns the figure.

    ``curves`` maps a legend label to its per-epoch values, e.g.
    ``{"train": history.train_loss, "test": history.test_loss}``. Introduced in chapter 02.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty mapping of label -> values")
    for label, values in curves.items():
        if len(values) == 0:
            raise ValueError(f"curve {label!r} has no values")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5))
    else:
        fig = ax.figure
    for label, values in curves.items():
        epochs = range(1, len(values) + 1)
        ax.plot(epochs, list(values), marker="o" if len(values) <= 30 else None, ms=3, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def _as_grid(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim > 2:
        raise ValueError(f"{name} must have at most 2 dimensions to be drawn, got {t.ndim}")
    return t.reshape((1,) * (2 - t.ndim) + tuple(t.shape))


def _draw_grid(ax: Axes, values: torch.Tensor, copied: torch.Tensor, title: str) -> None:
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            face = "#dddddd" if copied[i, j] else "#8fbcd4"
            ax.add_patch(plt.Rectangle((j, rows - 1 - i), 1, 1, facecolor=face, edgecolor="black"))
            ax.text(j + 0.5, rows - 0.5 - i, f"{values[i, j].item():g}", ha="center", va="center")
    ax.set_xlim(-0.1, cols + 0.1)
    ax.set_ylim(-0.1, rows + 0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=10)


def plot_broadcast(a: torch.Tensor, b: torch.Tensor) -> Figure:
    """Draw ``a + b`` for two tensors of at most 2 dimensions, showing how each is stretched.

    Blue cells hold the tensor's own values; grey cells are the virtual copies that
    broadcasting makes along a size-1 (or missing) dimension. Introduced in chapter 01.
    """
    a2, b2 = _as_grid(a, "a"), _as_grid(b, "b")
    try:
        out_shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as err:
        raise ValueError(f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not broadcast: {err}") from None
    rows, cols = (1,) * (2 - len(out_shape)) + tuple(out_shape)
    fig, axes = plt.subplots(1, 3, figsize=(2.2 * 3 + 0.4 * cols, 1.0 + 0.6 * rows))
    for ax, t, orig, name in ((axes[0], a2, a, "a"), (axes[1], b2, b, "b")):
        copied = torch.ones(rows, cols, dtype=torch.bool)
        copied[: t.shape[0], : t.shape[1]] = False
        # the shape, padded with leading 1s if it has fewer dimensions, then stretched
        steps = [tuple(orig.shape)]
        if orig.ndim < 2:  # missing leading dimensions count as size 1
            steps.append(tuple(t.shape))
        if tuple(t.shape) != (rows, cols):
            steps.append((rows, cols))
        _draw_grid(ax, t.expand(rows, cols), copied, f"{name}: " + " → ".join(map(str, steps)))
    result = (a2 + b2).reshape(rows, cols)
    _draw_grid(
        axes[2], result, torch.zeros(rows, cols, dtype=torch.bool), f"a + b: {tuple(out_shape)}, a new tensor"
    )
    fig.suptitle("Broadcasting: size-1 dimensions are stretched (grey = virtual copy)")
    fig.tight_layout()
    return fig


def plot_image_grid(
    images: torch.Tensor | Sequence[torch.Tensor],
    *,
    titles: Sequence[str] | None = None,
    suptitle: str,
    ncols: int = 8,
    cmap: str = "gray",
    size: float = 1.4,
    value_range: tuple[float, float] | None = None,
    row_labels: Sequence[str] | None = None,
) -> Figure:
    """Show 2-D images (or ``(1, H, W)`` single-channel ones) in a grid; returns the figure.

    By default each image gets its own colour scale, so feature maps with different
    ranges stay visible. ``value_range=(low, high)`` draws every image on that one scale
    instead (``(0, 1)`` for pixel intensities: a faint image then looks faint).
    ``row_labels`` puts one label, turned upright, left of each row. Each grid cell is
    ``size`` inches wide; an image smaller than the largest is enlarged (nearest pixel)
    to fill its cell, as it would fill an axes of its own.

    The grid is drawn as one picture, the images tiled into a single array with the
    titles as text: a 100-image grid then draws several times faster than with one
    axes per image. Introduced in chapter 03.
    """
    if value_range is not None:
        if (
            not isinstance(value_range, tuple)
            or len(value_range) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
        ):
            raise TypeError(f"value_range must be a (low, high) tuple of numbers, got {value_range!r}")
        if not value_range[0] < value_range[1]:
            raise ValueError(f"value_range must have low < high, got {value_range}")
    items = list(images)
    if not items:
        raise ValueError("images must hold at least one image")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"got {len(titles)} titles for {len(items)} images")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not size > 0:
        raise ValueError(f"size must be a positive number of inches, got {size!r}")
    pictures = []
    for i, image in enumerate(items):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image {i} must be a torch.Tensor, got {type(image).__name__}")
        picture = image.detach().cpu()
        if picture.ndim == 3 and picture.shape[0] == 1:
            picture = picture[0]
        if picture.ndim != 2:
            raise ValueError(f"image {i} must be (H, W) or (1, H, W), got {tuple(image.shape)}")
        pictures.append(picture.double())
    ncols = min(ncols, len(pictures))
    nrows = -(-len(pictures) // ncols)
    if row_labels is not None and len(row_labels) != nrows:
        raise ValueError(f"got {len(row_labels)} row labels for {nrows} rows")

    height = max(p.shape[0] for p in pictures)
    width = max(p.shape[1] for p in pictures)
    gap = max(1, round(0.15 * width))  # pixels between neighbouring cells
    pixels_per_inch = (width + gap) / size
    # room above each image for its title: lines of 8-point text, in pixels
    lines = max(title.count("\n") + 1 for title in titles) if titles is not None else 0
    band = math.ceil(lines * 0.17 * pixels_per_inch)
    cell = band + height + gap  # one row of the grid, in pixels
    colormap = matplotlib.colormaps[cmap]
    canvas = np.zeros((nrows * cell, ncols * (width + gap), 4))  # transparent
    for i, picture in enumerate(pictures):
        low, high = value_range if value_range is not None else (picture.min(), picture.max())
        # as imshow's default normalisation: one value throughout maps to the bottom
        scaled = (picture - low) / (high - low) if high > low else torch.zeros_like(picture)
        scaled = _fill_cell(scaled.clamp(0, 1), height, width)
        row, col = divmod(i, ncols)
        top, left = row * cell + band, col * (width + gap)
        canvas[top : top + height, left : left + width] = colormap(scaled.numpy())
    label_inches = 0.25 if row_labels is not None else 0.0
    top_inches = 0.25 + 0.25 * (suptitle.count("\n") + 1)
    grid_inches = (ncols * (width + gap) / pixels_per_inch, nrows * cell / pixels_per_inch)
    fig_width, fig_height = grid_inches[0] + label_inches, grid_inches[1] + top_inches
    fig = plt.figure(figsize=(fig_width, fig_height))
    ax = fig.add_axes((label_inches / fig_width, 0, grid_inches[0] / fig_width, grid_inches[1] / fig_height))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for i, title in enumerate(titles or []):
        row, col = divmod(i, ncols)
        ax.text(
            col * (width + gap) + width / 2,
            row * cell + band - 0.5,
            title,
            ha="center",
            va="bottom",
            fontsize=8,
        )
    for row, label in enumerate(row_labels or []):
        middle = row * cell + band + height / 2
        ax.text(-gap, middle, label, rotation=90, ha="right", va="center", fontsize=8)
    fig.suptitle(suptitle)
    return fig


def _fill_cell(picture: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``picture`` enlarged (nearest pixel, aspect kept) and centred in a
    ``(height, width)`` cell; the margin is NaN, which the colour map leaves clear."""
    h, w = picture.shape
    if (h, w) == (height, width):
        return picture
    scale = min(height / h, width / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    enlarged = torch.nn.functional.interpolate(picture[None, None], size=(new_h, new_w), mode="nearest")
    cell = torch.full((height, width), float("nan"), dtype=picture.dtype)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    cell[top : top + new_h, left : left + new_w] = enlarged[0, 0]
    return cell

"""Figures the chapters share: loss curves, image grids and a picture of broadcasting.

``plot_broadcast`` is introduced in chapter 01, ``plot_losses`` in chapter 02 and
``plot_image_grid`` in chapter 03.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
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
        title = f"{name}: shape {tuple(orig.shape)}"
        if orig.ndim < 2:  # missing leading dimensions count as size 1
            title += f" → {tuple(t.shape)}"
        _draw_grid(ax, t.expand(rows, cols), copied, title)
    result = (a2 + b2).reshape(rows, cols)
    _draw_grid(axes[2], result, torch.zeros(rows, cols, dtype=torch.bool), f"a + b: shape {tuple(out_shape)}")
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
) -> Figure:
    """Show 2-D images (or ``(1, H, W)`` single-channel ones) in a grid; returns the figure.

    By default each image gets its own colour scale, so feature maps with different
    ranges stay visible. ``value_range=(low, high)`` draws every image on that one scale
    instead (``(0, 1)`` for pixel intensities: a faint image then looks faint).
    Introduced in chapter 03.
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
    low, high = value_range if value_range is not None else (None, None)
    items = list(images)
    if not items:
        raise ValueError("images must hold at least one image")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"got {len(titles)} titles for {len(items)} images")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    pictures = []
    for i, image in enumerate(items):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image {i} must be a torch.Tensor, got {type(image).__name__}")
        picture = image.detach().cpu()
        if picture.ndim == 3 and picture.shape[0] == 1:
            picture = picture[0]
        if picture.ndim != 2:
            raise ValueError(f"image {i} must be (H, W) or (1, H, W), got {tuple(image.shape)}")
        pictures.append(picture.float())
    ncols = min(ncols, len(pictures))
    nrows = -(-len(pictures) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, picture) in enumerate(zip(axes.flat, pictures, strict=False)):
        ax.imshow(picture.numpy(), cmap=cmap, vmin=low, vmax=high)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig

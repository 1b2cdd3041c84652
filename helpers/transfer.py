"""Transfer learning without a download: a source task rendered from the fonts that
matplotlib ships, few-label subsets of a target set, and the train/val phase loop.

Introduced in chapter 05 (transfer learning), which writes the phase loop out first.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.progress import tqdm
from helpers.training import as_device

__all__ = [
    "FONT_FILES",
    "GLYPH_CLASSES",
    "PhaseHistory",
    "labelled_subset",
    "matplotlib_fonts",
    "random_affine",
    "render_glyphs",
    "sample_glyphs",
    "thicken",
    "train_phases",
]

#: 26 capitals and the 11 lower-case letters whose shape differs from their capital
#: (the letters of EMNIST's "balanced" split). No digits: the target task's classes.
GLYPH_CLASSES = "ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"

#: 21 font faces that every matplotlib since 3.8 ships in ``mpl-data/fonts/ttf``.
FONT_FILES = (
    *(f"DejaVuSans{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    *(f"DejaVuSansMono{s}.ttf" for s in ("", "-Bold", "-Oblique", "-BoldOblique")),
    *(f"DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")),
    *(f"STIXGeneral{s}.ttf" for s in ("", "Bol", "Italic", "BolIta")),
    *(f"{name}.ttf" for name in ("cmr10", "cmb10", "cmss10", "cmtt10", "cmmi10")),
)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _range(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be a (low, high) tuple, got {value!r}")
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    return low, high


def matplotlib_fonts() -> list[Path]:
    """Paths of the ``FONT_FILES`` inside the installed matplotlib. Introduced in chapter 05."""
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in FONT_FILES]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"matplotlib in {folder} lacks the fonts {missing}")
    return paths


def render_glyphs(chars: str, fonts: Sequence[str | Path], size: int = 28, box: int = 20) -> torch.Tensor:
    """Draw every character in every font as a white-on-black ``size`` x ``size`` image.

    Each glyph is scaled so that the longer side of its outline spans ``box`` pixels and
    its bounding box is centred, as MNIST fits digits into a 20 x 20 box of a 28 x 28
    image. Anti-aliased by matplotlib's Agg renderer; returns ``(len(chars),
    len(fonts), size, size)`` floats in [0, 1]. Introduced in chapter 05.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    if not isinstance(chars, str) or not chars or any(c.isspace() for c in chars):
        raise ValueError(f"chars must be a non-empty str without spaces, got {chars!r}")
    if isinstance(fonts, (str, Path)) or not fonts:
        raise TypeError("fonts must be a non-empty sequence of font file paths")
    _positive_int("size", size)
    _positive_int("box", box)
    if box > size:
        raise ValueError(f"box must be <= size ({size}), got {box}")
    rows, cols = len(chars), len(fonts)
    # One canvas holds every glyph in its own cell: a single draw call renders them all.
    fig = Figure(figsize=(cols * size / 100, rows * size / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    height = rows * size
    for i, char in enumerate(chars):
        for j, font in enumerate(fonts):
            path = TextPath((0, 0), char, size=100, prop=FontProperties(fname=str(font)))
            extents = path.get_extents()  # the outline's true box (curves, no control points)
            scale = box / max(extents.width, extents.height)
            centre = (extents.x0 + extents.width / 2, extents.y0 + extents.height / 2)
            cell = (j * size + size / 2, height - (i * size + size / 2))  # y grows upwards
            to_cell = Affine2D().translate(-centre[0], -centre[1]).scale(scale).translate(*cell)
            fig.add_artist(PathPatch(path, transform=to_cell, facecolor="white", edgecolor="none"))
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., 0].astype(np.float32) / 255.0
    if pixels.shape != (height, cols * size):
        raise RuntimeError(f"rendered {pixels.shape}, expected {(height, cols * size)}")
    grid = torch.from_numpy(pixels).reshape(rows, size, cols, size)
    return grid.permute(0, 2, 1, 3).contiguous()


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    rotation: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
    shear: tuple[float, float] = (0.0, 0.0),
    shift: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Move the content of each ``(B, C, H, W)`` image by its own random affine map.

    Per image, uniformly from the given ``(low, high)`` ranges: a rotation in degrees
    (positive turns the content clockwise on screen, since rows grow downwards), scale
    factors for width and height drawn independently, a horizontal shear factor, and
    shifts right and down in pixels drawn independently. Pixels are interpolated
    bilinearly and the area moved in from outside is 0. Batched with
    ``F.affine_grid``/``F.grid_sample``. Introduced in chapter 05.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square, got {tuple(images.shape[-2:])}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    ranges = [_range(n, v) for n, v in (("rotation", rotation), ("scale", scale))]
    ranges += [_range(n, v) for n, v in (("shear", shear), ("shift", shift))]
    if ranges[1][0] <= 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    n, size = images.shape[0], images.shape[-1]

    def draw(low_high: tuple[float, float]) -> torch.Tensor:
        low, high = low_high
        return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)

    angle = draw(ranges[0]) * math.pi / 180
    sx, sy, sh = draw(ranges[1]), draw(ranges[1]), draw(ranges[2])
    tx, ty = draw(ranges[3]) * 2 / size, draw(ranges[3]) * 2 / size  # pixels -> [-1, 1] units
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones_like(sx), torch.zeros_like(sx)
    rotate = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    shear_m = torch.stack([torch.stack([one, sh], 1), torch.stack([zero, one], 1)], 1)
    stretch = torch.diag_embed(torch.stack([sx, sy], 1))
    forward = rotate @ shear_m @ stretch  # (n, 2, 2): where content moves
    inverse = torch.linalg.inv(forward)  # affine_grid wants output -> input coordinates
    offset = -(inverse @ torch.stack([tx, ty], 1).unsqueeze(2))  # (n, 2, 1)
    theta = torch.cat([inverse, offset], dim=2).to(images.device, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def thicken(images: torch.Tensor) -> torch.Tensor:
    """Grow bright strokes by one pixel to the right and down (a 2 x 2 maximum filter)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (B, C, H, W) tensor")
    return F.max_pool2d(F.pad(images, (1, 0, 1, 0)), kernel_size=2, stride=1)


def sample_glyphs(
    glyphs: torch.Tensor, n: int, generator: torch.Generator, *, thicken_share: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh source examples: a random class and font, distorted, and labels.

    ``glyphs`` is ``render_glyphs``' ``(classes, fonts, H, W)`` output. Each example is
    rotated by up to 15 degrees, scaled by 0.75-1.1 per axis, sheared by up to 0.3, shifted
    by up to 2 pixels, and a share ``thicken_share`` of them gets strokes one pixel
    thicker. Returns ``(n, 1, H, W)`` images in [0, 1] and ``(n,)`` class indices.
    Introduced in chapter 05.
    """
    if not isinstance(glyphs, torch.Tensor) or glyphs.ndim != 4:
        raise ValueError("glyphs must be a (classes, fonts, H, W) tensor")
    _positive_int("n", n)
    if not 0.0 <= thicken_share <= 1.0:
        raise ValueError(f"thicken_share must be in [0, 1], got {thicken_share}")
    classes, fonts = glyphs.shape[:2]
    labels = torch.randint(0, classes, (n,), generator=generator)
    font = torch.randint(0, fonts, (n,), generator=generator)
    images = glyphs[labels, font].unsqueeze(1)  # (n, 1, H, W)
    images = random_affine(
        images, generator, rotation=(-15, 15), scale=(0.75, 1.1), shear=(-0.3, 0.3), shift=(-2, 2)
    )
    bold = torch.rand(n, generator=generator) < thicken_share
    images[bold] = thicken(images[bold])
    return images, labels


def labelled_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` examples of every class, drawn at random with ``seed``.

    The same seed gives nested subsets: the examples chosen for 3 per class include those
    for 1 per class. Indices are grouped by class. Introduced in chapter 05.
    """
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError("labels must be a 1-D tensor of class indices")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    _positive_int("per_class", per_class)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    chosen = []
    for c in labels.unique().tolist():
        of_class = order[labels[order] == c]
        if len(of_class) < per_class:
            raise ValueError(f"class {c} has {len(of_class)} examples, fewer than per_class={per_class}")
        chosen.append(of_class[:per_class])
    return torch.cat(chosen)


@dataclass
class PhaseHistory:
    """Per-epoch numbers of ``train_phases``; ``lr`` holds every parameter group's rate."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[list[float]] = field(default_factory=list)
    best_epoch: int = 0


def train_phases(
    model: nn.Module,
    loaders: Mapping[str, Iterable[tuple[torch.Tensor, torch.Tensor]]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: str | torch.device,
    *,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    frozen: Sequence[nn.Module] = (),
    progress: bool = False,
) -> PhaseHistory:
    """Each epoch a ``"train"`` phase then a ``"val"`` phase; the best val epoch is kept.

    The loop chapter 05 writes out: ``model.train()`` and then ``eval()`` on each module
    in ``frozen`` (so frozen batch-norm layers keep their running statistics), gradients
    only in the train phase, ``scheduler.step()`` once per epoch after the optimizer
    steps. Losses and counts are summed on the device and read once per phase. The
    weights of the epoch with the highest validation accuracy (the first, on ties) are
    loaded back into ``model`` at the end.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(loaders, Mapping) or not {"train", "val"} <= set(loaders):
        raise ValueError("loaders must be a mapping with 'train' and 'val' loaders")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not callable(criterion):
        raise TypeError(
            f"criterion must be a loss such as nn.CrossEntropyLoss(), got {type(criterion).__name__}"
        )
    _positive_int("epochs", epochs)
    device = as_device(device)
    lr_scheduler = torch.optim.lr_scheduler
    if scheduler is not None and (
        not isinstance(scheduler, lr_scheduler.LRScheduler)
        or isinstance(scheduler, lr_scheduler.ReduceLROnPlateau)
    ):
        raise TypeError(
            "scheduler must be a torch.optim.lr_scheduler scheduler stepped once per epoch "
            f"(not ReduceLROnPlateau) or None, got {type(scheduler).__name__}"
        )
    if isinstance(frozen, nn.Module) or not isinstance(frozen, Sequence):
        raise TypeError(f"frozen must be a sequence of torch.nn.Module objects, got {type(frozen).__name__}")
    if not all(isinstance(m, nn.Module) for m in frozen):
        raise TypeError("frozen must hold torch.nn.Module objects")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    history = PhaseHistory()
    best_acc, best_state = -1.0, None
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        history.lr.append([group["lr"] for group in optimizer.param_groups])
        for phase in ("train", "val"):
            training = phase == "train"
            model.train(training)
            for module in frozen if training else ():
                module.eval()
            # sums stay on the device and are read once per phase: no per-step sync
            total_loss = torch.zeros((), device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            count = 0
            for inputs, targets in loaders[phase]:
                inputs, targets = inputs.to(device), targets.to(device)
                with torch.set_grad_enabled(training):
                    outputs = model(inputs)
                    loss = criterion(outputs, targets)
                if training:
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                total_loss += loss.detach() * len(targets)
                correct += (outputs.argmax(dim=1) == targets).sum()
                count += len(targets)
            if count == 0:
                raise ValueError(f"the {phase!r} loader yielded no batches")
            getattr(history, f"{phase}_loss").append(total_loss.item() / count)
            getattr(history, f"{phase}_acc").append(correct.item() / count)
        if scheduler is not None:
            scheduler.step()
        if history.val_acc[-1] > best_acc:
            best_acc, history.best_epoch = history.val_acc[-1], epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return history

"""Tests of helpers.transfer, and of chapter 05's ImageNet cell run offline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

from helpers.transfer import (
    FONT_FILES,
    GLYPH_CLASSES,
    PhaseHistory,
    labelled_subset,
    matplotlib_fonts,
    random_affine,
    render_glyphs,
    sample_glyphs,
    thicken,
    train_phases,
)

ROOT = Path(__file__).resolve().parent.parent


CPU = torch.device("cpu")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _raises(error, message):
    """``pytest.raises`` that matches the whole message, not a part of it."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


# --- fonts and glyphs ---------------------------------------------------------------


def test_glyph_classes_are_distinct_letters_without_digits():
    assert len(GLYPH_CLASSES) == len(set(GLYPH_CLASSES)) == 37
    assert GLYPH_CLASSES.isalpha() and not any(c.isdigit() for c in GLYPH_CLASSES)


def test_matplotlib_fonts_exist():
    paths = matplotlib_fonts()
    assert [p.name for p in paths] == list(FONT_FILES) and len(paths) == 21
    assert all(p.is_file() for p in paths)


def test_matplotlib_fonts_reports_a_missing_font(monkeypatch, tmp_path):
    monkeypatch.setattr("matplotlib.get_data_path", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"DejaVuSans\.ttf"):
        matplotlib_fonts()


def test_render_glyphs_fits_each_glyph_in_its_box_centred():
    fonts = matplotlib_fonts()[:2]
    glyphs = render_glyphs("HIo", fonts, size=28, box=20)
    assert glyphs.shape == (3, 2, 28, 28) and glyphs.dtype == torch.float32
    assert glyphs.min() >= 0 and glyphs.max() <= 1
    for image in glyphs.flatten(0, 1):
        rows = (image > 0.5).any(dim=1).nonzero().squeeze(1)
        cols = (image > 0.5).any(dim=0).nonzero().squeeze(1)
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert 18 <= max(height, width) <= 21  # the longer side spans the 20-pixel box
        centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
        assert all(abs(c - 13.5) <= 1.0 for c in centre)
    # the ring of "o" is hollow: its centre is background, its left edge is ink
    o = glyphs[2, 0]
    assert o[12:16, 12:16].max() < 0.1 and o[14, 4:10].max() > 0.9
    # an "I" is a vertical bar: much taller than wide
    i_ink = glyphs[1, 0] > 0.5
    assert i_ink.any(dim=1).sum() >= 3 * i_ink.any(dim=0).sum()


def test_render_glyphs_defaults_fit_a_20_pixel_box_in_a_28_pixel_image():
    fonts = matplotlib_fonts()[:1]
    bar = render_glyphs("I", fonts)[0, 0]  # size=28, box=20
    assert bar.shape == (28, 28)
    assert bar.max() == 1.0  # the inside of a stroke is fully white
    # an "I" is taller than wide: its rows of ink add up to the box's 20 pixels
    assert bar.amax(dim=1).sum().item() == pytest.approx(20, abs=0.1)
    # box may equal size: the glyph then spans the whole image
    full = render_glyphs("I", fonts, size=12, box=12)[0, 0]
    assert full.amax(dim=1).sum().item() == pytest.approx(12, abs=0.1)


def test_render_glyphs_draws_each_font_in_its_own_cell():
    sans, serif = matplotlib_fonts()[0], matplotlib_fonts()[8]
    glyphs = render_glyphs("Ag", [sans, serif])
    assert not torch.allclose(glyphs[0, 0], glyphs[0, 1], atol=0.1)  # the fonts differ
    assert torch.equal(glyphs[:, 1], render_glyphs("Ag", [serif])[:, 0])
    assert torch.equal(glyphs[1, 0], render_glyphs("g", [sans])[0, 0])


def test_render_glyphs_does_not_depend_on_the_figure_dpi_setting():
    import matplotlib

    fonts = matplotlib_fonts()[:4]
    with matplotlib.rc_context({"figure.dpi": 72}):  # as a notebook may set for its plots
        glyphs = render_glyphs("AB", fonts)
    assert glyphs.shape == (2, 4, 28, 28)
    assert torch.equal(glyphs, render_glyphs("AB", fonts))


def test_render_glyphs_reports_a_canvas_of_the_wrong_size(monkeypatch):
    from matplotlib.figure import Figure

    class HalfResolution(Figure):  # a canvas that renders at half the pixels asked for
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "dpi": 50})

    monkeypatch.setattr("matplotlib.figure.Figure", HalfResolution)
    with _raises(RuntimeError, "rendered (14, 14), expected (28, 28)"):
        render_glyphs("A", matplotlib_fonts()[:1])


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("",), {}, ValueError, "chars must be a non-empty str without spaces, got ''"),
        (("A B",), {}, ValueError, "chars must be a non-empty str without spaces, got 'A B'"),
        ((5,), {}, ValueError, "chars must be a non-empty str without spaces, got 5"),
        (("A", "DejaVuSans.ttf"), {}, TypeError, "fonts must be a non-empty sequence of font file paths"),
        (("A", []), {}, TypeError, "fonts must be a non-empty sequence of font file paths"),
        (("A",), {"size": 10, "box": 12}, ValueError, "box must be <= size (10), got 12"),
        (("A",), {"size": 2.5}, TypeError, "size must be an int, got float"),
        (("A",), {"box": 0}, ValueError, "box must be >= 1, got 0"),
    ],
)
def test_render_glyphs_checks_arguments(args, kwargs, error, message):
    if len(args) == 1:
        args = (*args, matplotlib_fonts()[:1])
    with _raises(error, message):
        render_glyphs(*args, **kwargs)


# --- random_affine and thicken ------------------------------------------------------


def test_random_affine_identity_returns_the_input():
    x = torch.rand(3, 2, 8, 8, generator=_gen())
    assert torch.allclose(random_affine(x, _gen()), x, atol=1e-6)


def test_random_affine_quarter_turn_is_clockwise_rot90():
    x = torch.rand(2, 1, 6, 6, generator=_gen())
    turned = random_affine(x, _gen(), rotation=(90, 90))
    # rot90 with k=-1 turns (rows, cols) clockwise as displayed
    assert torch.allclose(turned, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-5)


def test_random_affine_shift_moves_content_right_and_down():
    x = torch.rand(2, 1, 7, 7, generator=_gen())
    shifted = random_affine(x, _gen(), shift=(2, 2))
    expected = torch.zeros_like(x)
    expected[..., 2:, 2:] = x[..., :-2, :-2]
    assert torch.allclose(shifted, expected, atol=1e-5)


def test_random_affine_scale_matches_grid_sample_reference():
    x = torch.rand(1, 1, 8, 8, generator=_gen())
    out = random_affine(x, _gen(), scale=(2, 2))
    theta = torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]])  # output -> input
    grid = F.affine_grid(theta, [1, 1, 8, 8], align_corners=False)
    assert torch.allclose(out, F.grid_sample(x, grid, align_corners=False), atol=1e-6)


def test_random_affine_shear_is_horizontal():
    x = torch.rand(1, 1, 8, 8, generator=_gen())
    out = random_affine(x, _gen(), shear=(0.5, 0.5))
    # content moves right in proportion to its height: x' = x + 0.5 y, so output -> input is x - 0.5 y
    theta = torch.tensor([[[1.0, -0.5, 0.0], [0.0, 1.0, 0.0]]])
    grid = F.affine_grid(theta, [1, 1, 8, 8], align_corners=False)
    assert torch.allclose(out, F.grid_sample(x, grid, align_corners=False), atol=1e-6)


def test_random_affine_draws_differ_per_image_and_repeat_with_the_seed():
    x = torch.rand(1, 1, 10, 10, generator=_gen()).expand(4, 1, 10, 10)
    a = random_affine(x, _gen(3), rotation=(-20, 20), shear=(-0.3, 0.3))
    b = random_affine(x, _gen(3), rotation=(-20, 20), shear=(-0.3, 0.3))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])


def test_random_affine_draws_each_shift_uniformly_from_its_range():
    # one bright pixel per image: bilinear sampling keeps its centre of mass, which moves by the shift
    x = torch.zeros(64, 1, 16, 16)
    x[..., 8, 8] = 1.0
    moved = random_affine(x, _gen(), shift=(1.0, 3.0))[:, 0]
    assert torch.allclose(moved.sum(dim=(1, 2)), torch.ones(64))
    coords = torch.arange(16.0)
    down = (moved.sum(2) * coords).sum(1) - 8
    right = (moved.sum(1) * coords).sum(1) - 8
    for shift in (down, right):
        assert shift.min() >= 1 - 1e-4 and shift.max() <= 3 + 1e-4
        assert shift.min() < 1.3 and shift.max() > 2.7  # spread over the range
    assert not torch.allclose(down, right)  # drawn independently


def test_random_affine_keeps_the_images_dtype():
    x = torch.rand(2, 1, 6, 6, generator=_gen(), dtype=torch.float64)
    out = random_affine(x, _gen(), rotation=(90, 90))
    assert out.dtype == torch.float64
    assert torch.allclose(out, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-6)


@pytest.mark.parametrize(
    ("images", "generator", "kwargs", "error", "message"),
    [
        (torch.zeros(4, 4), _gen(), {}, ValueError, "images must be a (B, C, H, W) tensor"),
        (torch.zeros(1, 1, 4, 5), _gen(), {}, ValueError, "images must be square, got (4, 5)"),
        (torch.zeros(1, 1, 4, 4), 0, {}, TypeError, "generator must be a torch.Generator, got int"),
        (
            torch.zeros(1, 1, 4, 4),
            _gen(),
            {"rotation": 10},
            TypeError,
            "rotation must be a (low, high) tuple, got 10",
        ),
        (
            torch.zeros(1, 1, 4, 4),
            _gen(),
            {"rotation": (1, 2, 3)},
            TypeError,
            "rotation must be a (low, high) tuple, got (1, 2, 3)",
        ),
        (
            torch.zeros(1, 1, 4, 4),
            _gen(),
            {"shift": (2, -2)},
            ValueError,
            "shift must have low <= high, got (2, -2)",
        ),
        (
            torch.zeros(1, 1, 4, 4),
            _gen(),
            {"shear": (0.3, -0.3)},
            ValueError,
            "shear must have low <= high, got (0.3, -0.3)",
        ),
        (
            torch.zeros(1, 1, 4, 4),
            _gen(),
            {"scale": (2, 1)},
            ValueError,
            "scale must have low <= high, got (2, 1)",
        ),
        (
            torch.zeros(1, 1, 4, 4),
            _gen(),
            {"scale": (0, 1)},
            ValueError,
            "scale must be positive, got (0, 1)",
        ),
    ],
)
def test_random_affine_checks_arguments(images, generator, kwargs, error, message):
    with _raises(error, message):
        random_affine(images, generator, **kwargs)


def test_thicken_is_a_two_by_two_maximum_filter():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 1, 1] = 1.0
    grown = thicken(x)
    expected = torch.zeros_like(x)
    expected[0, 0, 1:3, 1:3] = 1.0
    assert torch.equal(grown, expected)
    y = torch.rand(2, 3, 6, 6, generator=_gen())
    padded = np.pad(y.numpy(), ((0, 0), (0, 0), (1, 0), (1, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2, 2), axis=(2, 3))
    assert np.allclose(thicken(y).numpy(), windows.max(axis=(-2, -1)))
    with _raises(ValueError, "images must be a (B, C, H, W) tensor"):
        thicken(torch.zeros(5, 5))


def test_sample_glyphs_labels_match_the_classes_drawn():
    glyphs = torch.zeros(3, 2, 12, 12)
    for c in range(3):  # class c: a bright square whose size grows with c
        glyphs[c, :, 6 - c - 1 : 6 + c + 1, 6 - c - 1 : 6 + c + 1] = 1.0
    images, labels = sample_glyphs(glyphs, 64, _gen(), thicken_share=0.0)
    assert images.shape == (64, 1, 12, 12) and labels.shape == (64,)
    assert set(labels.tolist()) == {0, 1, 2}
    ink = images.sum(dim=(1, 2, 3))
    means = [ink[labels == c].mean() for c in range(3)]
    assert means[0] < means[1] < means[2]  # distortion keeps the class's amount of ink
    thick, _ = sample_glyphs(glyphs, 64, _gen(), thicken_share=1.0)
    assert thick.sum() > images.sum()  # same draws, every image thickened


def _flat_glyphs(classes: int, fonts: int) -> torch.Tensor:
    """Glyphs of one grey level each, distinct per (class, font): a sample's centre tells its source."""
    levels = torch.arange(1, classes * fonts + 1, dtype=torch.float32) / (classes * fonts + 1)
    return levels.view(classes, fonts, 1, 1).expand(classes, fonts, 12, 12).clone()


def test_sample_glyphs_draws_every_class_and_font_and_repeats_with_the_seed():
    glyphs = _flat_glyphs(3, 4)
    images, labels = sample_glyphs(glyphs, 200, _gen(), thicken_share=0.0)
    # distortions move the flat glyph by at most a few pixels: its centre keeps its grey level
    source = (images[:, 0, 6, 6] * 13).round().long() - 1  # = class * 4 + font
    assert torch.equal(source // 4, labels)
    assert set((source % 4).tolist()) == {0, 1, 2, 3} and set(labels.tolist()) == {0, 1, 2}
    again, again_labels = sample_glyphs(glyphs, 200, _gen(), thicken_share=0.0)
    assert torch.equal(again, images) and torch.equal(again_labels, labels)
    other, _ = sample_glyphs(glyphs, 200, _gen(1), thicken_share=0.0)
    assert not torch.equal(other, images)


def test_sample_glyphs_thickens_half_the_images_by_default():
    glyphs = torch.zeros(2, 1, 12, 12)
    glyphs[:, :, 4:8, 4:8] = 1.0
    thin, _ = sample_glyphs(glyphs, 200, _gen(), thicken_share=0.0)
    thick, _ = sample_glyphs(glyphs, 200, _gen(), thicken_share=1.0)
    default, _ = sample_glyphs(glyphs, 200, _gen())  # the same draws; thicken_share=0.5
    is_thin = (default == thin).flatten(1).all(1)
    is_thick = (default == thick).flatten(1).all(1)
    assert (is_thin ^ is_thick).all()  # each image is one or the other
    assert 70 <= is_thick.sum() <= 130
    again, _ = sample_glyphs(glyphs, 200, _gen())
    assert torch.equal(again, default)  # which images are thickened also comes from the generator


def test_sample_glyphs_uses_the_documented_distortions(monkeypatch):
    import helpers.transfer

    seen = []

    def spy(images, generator, **ranges):
        seen.append(ranges)
        return random_affine(images, generator, **ranges)

    monkeypatch.setattr(helpers.transfer, "random_affine", spy)
    sample_glyphs(torch.zeros(2, 2, 8, 8), 4, _gen())
    assert seen == [{"rotation": (-15, 15), "scale": (0.75, 1.1), "shear": (-0.3, 0.3), "shift": (-2, 2)}]


def test_sample_glyphs_checks_arguments():
    glyphs = torch.zeros(2, 2, 8, 8)
    with _raises(ValueError, "glyphs must be a (classes, fonts, H, W) tensor"):
        sample_glyphs(torch.zeros(2, 8, 8), 4, _gen())
    with _raises(ValueError, "n must be >= 1, got 0"):
        sample_glyphs(glyphs, 0, _gen())
    with _raises(ValueError, "thicken_share must be in [0, 1], got 1.5"):
        sample_glyphs(glyphs, 4, _gen(), thicken_share=1.5)


# --- labelled_subset ----------------------------------------------------------------


def test_labelled_subset_counts_nesting_and_seed():
    labels = torch.arange(4).repeat_interleave(10)[torch.randperm(40, generator=_gen())]
    one = labelled_subset(labels, 1, seed=5)
    three = labelled_subset(labels, 3, seed=5)
    assert torch.bincount(labels[three]).tolist() == [3, 3, 3, 3]
    assert torch.bincount(labels[one]).tolist() == [1, 1, 1, 1]
    assert set(one.tolist()) <= set(three.tolist())
    assert len(set(three.tolist())) == 12
    assert torch.equal(three, labelled_subset(labels, 3, seed=5))
    assert not torch.equal(three, labelled_subset(labels, 3, seed=6))


def test_labelled_subset_takes_a_class_with_exactly_per_class_examples():
    labels = torch.tensor([0, 1, 0, 1, 1])
    chosen = labelled_subset(labels, 2, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [2, 2]
    assert set(chosen[:2].tolist()) == {0, 2}  # grouped by class: class 0's two examples first


def test_labelled_subset_checks_arguments():
    labels = torch.tensor([0, 0, 1])
    with _raises(ValueError, "class 1 has 1 examples, fewer than per_class=2"):
        labelled_subset(labels, 2, seed=0)
    with _raises(ValueError, "labels must be a 1-D tensor of class indices"):
        labelled_subset(labels[None], 1, seed=0)
    with _raises(TypeError, "per_class must be an int, got bool"):
        labelled_subset(labels, True, seed=0)
    for seed in (1.5, "0", True):
        with _raises(TypeError, f"seed must be an int, got {type(seed).__name__}"):
            labelled_subset(labels, 1, seed=seed)
    for bad in (labels.float() / 2, labels > 0):
        with _raises(ValueError, f"labels must hold integer class indices, got dtype {bad.dtype}"):
            labelled_subset(bad, 1, seed=0)


# --- train_phases -------------------------------------------------------------------


def _toy_problem() -> tuple[dict[str, DataLoader], nn.Module]:
    g = _gen()
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    train = DataLoader(TensorDataset(x[:48], y[:48]), batch_size=16)
    val = DataLoader(TensorDataset(x[48:], y[48:]), batch_size=8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    return {"train": train, "val": val}, model


def _accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = [(model(x).argmax(1) == y).float() for x, y in loader]
    return torch.cat(hits).mean().item()


def test_train_phases_keeps_the_best_epoch_and_steps_the_scheduler():
    loaders, model = _toy_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.1)
    history = train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 5, "cpu", scheduler=scheduler)
    assert isinstance(history, PhaseHistory)
    assert all(len(v) == 5 for v in (history.train_loss, history.train_acc, history.val_acc))
    assert [round(lr[0], 6) for lr in history.lr] == [0.5, 0.5, 0.05, 0.05, 0.005]
    best = max(history.val_acc)
    assert history.best_epoch == history.val_acc.index(best) + 1
    assert _accuracy(model, loaders["val"]) == pytest.approx(best)  # best weights loaded
    assert history.train_loss[-1] < history.train_loss[0]


def test_train_phases_matches_a_hand_written_epoch():
    loaders, model = _toy_problem()
    reference = _toy_problem()[1]
    criterion = nn.CrossEntropyLoss()
    history = train_phases(model, loaders, criterion, torch.optim.SGD(model.parameters(), lr=0.1), 1, "cpu")
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    reference.train()
    losses = []
    for x, y in loaders["train"]:
        loss = criterion(reference(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item() * len(y))
    assert history.train_loss[0] == pytest.approx(sum(losses) / 48)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert history.val_acc[0] == pytest.approx(_accuracy(reference, loaders["val"]))


def test_train_phases_reads_the_device_once_per_phase(monkeypatch):
    # .item() makes the CPU wait for a GPU: a per-batch read would be 2 calls per batch
    loaders, model = _toy_problem()
    # lists of batches: a DataLoader draws its own seed with .item() (on the CPU)
    loaders = {phase: list(loader) for phase, loader in loaders.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reads = []
    item = torch.Tensor.item

    def counted_item(self):
        reads.append(self.shape)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted_item)
    train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 2, "cpu")
    assert len(reads) == 2 * 2 * 2  # (loss, correct) x (train, val) x 2 epochs


def test_train_phases_keeps_frozen_batch_norm_statistics():
    loaders, model = _toy_problem()
    frozen = model[:2]  # Linear + BatchNorm1d
    frozen.requires_grad_(False)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 2, "cpu", frozen=[frozen])
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    # without frozen=..., model.train() lets batch norm update its running statistics
    train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 1, "cpu")
    assert not torch.equal(before["1.running_mean"], model[1].running_mean)


class _Recorder(nn.Module):
    """Wraps a model and records, for every forward call, the mode and whether autograd records."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x):
        self.seen.append((self.training, torch.is_grad_enabled()))
        return self.inner(x)


def test_train_phases_trains_with_a_graph_and_validates_without_one():
    loaders, model = _toy_problem()
    model = _Recorder(model)
    model.eval()
    train_phases(model, loaders, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), 1, "cpu")
    # 48 training examples in batches of 16, then 16 validation examples in batches of 8
    assert model.seen == [(True, True)] * 3 + [(False, False)] * 2


def test_train_phases_restores_the_weights_of_the_best_epoch_not_the_last():
    def run(epochs: int) -> tuple[nn.Module, PhaseHistory]:
        loaders, model = _toy_problem()
        # train on flipped labels: validation accuracy falls after the first epochs
        flipped = [(x, 1 - y) for x, y in loaders["train"]]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        history = train_phases(
            model, {"train": flipped, "val": loaders["val"]}, nn.CrossEntropyLoss(), optimizer, epochs, "cpu"
        )
        return model, history

    model, history = run(5)
    best = history.best_epoch
    assert best < 5 and history.val_acc[-1] < history.val_acc[best - 1]
    # the same run stopped after the best epoch ends on exactly those weights
    reference, _ = run(best)
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert _accuracy(model, _toy_problem()[0]["val"]) == pytest.approx(history.val_acc[best - 1])


def test_train_phases_keeps_the_first_of_equally_good_epochs():
    loaders, _ = _toy_problem()
    model = nn.Linear(4, 2)
    # lr=0 and no batch norm: the weights never change, so every epoch ties
    history = train_phases(
        model, loaders, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0), 3, "cpu"
    )
    assert history.val_acc[0] == history.val_acc[1] == history.val_acc[2]
    assert history.best_epoch == 1


_PLATEAU = "plateau"  # stands for a ReduceLROnPlateau on the test's optimizer


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"model": "model"}, TypeError, "^model must be a torch.nn.Module, got str$"),
        ({"loaders": "train"}, ValueError, "^loaders must be a mapping with 'train' and 'val' loaders$"),
        (
            {"loaders": {"train": []}},
            ValueError,
            "^loaders must be a mapping with 'train' and 'val' loaders$",
        ),
        (
            {"criterion": "cross-entropy"},
            TypeError,
            r"^criterion must be a loss such as nn\.CrossEntropyLoss\(\), got str$",
        ),
        ({"optimizer": "sgd"}, TypeError, r"^optimizer must be a torch\.optim\.Optimizer, got str$"),
        ({"epochs": 0}, ValueError, "^epochs must be >= 1, got 0$"),
        ({"epochs": 2.0}, TypeError, "^epochs must be an int, got float$"),
        ({"device": "gpu9"}, ValueError, "device must name a torch device"),
        ({"device": 0}, TypeError, "device must be a str or torch.device"),
        (
            {"scheduler": "x"},
            TypeError,
            r"^scheduler must be a torch\.optim\.lr_scheduler scheduler stepped once per epoch "
            r"\(not ReduceLROnPlateau\) or None, got str$",
        ),
        ({"scheduler": _PLATEAU}, TypeError, "not ReduceLROnPlateau.*got ReduceLROnPlateau$"),
        ({"frozen": ["layer1"]}, TypeError, r"^frozen must hold torch\.nn\.Module objects$"),
        (
            {"frozen": nn.Linear(1, 1)},
            TypeError,
            r"^frozen must be a sequence of torch\.nn\.Module objects, got Linear$",
        ),
        ({"frozen": 5}, TypeError, r"^frozen must be a sequence of torch\.nn\.Module objects, got int$"),
        ({"progress": "yes"}, TypeError, "^progress must be a bool, got str$"),
    ],
)
def test_train_phases_rejects_bad_arguments_before_training(change, error, message):
    loaders, inner = _toy_problem()
    model = _Recorder(inner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {
        "model": model,
        "loaders": loaders,
        "criterion": nn.CrossEntropyLoss(),
        "optimizer": optimizer,
        "epochs": 1,
        "device": "cpu",
        **change,
    }
    if kwargs.get("scheduler") == _PLATEAU:
        kwargs["scheduler"] = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    with pytest.raises(error, match=message):
        train_phases(**kwargs)
    assert model.seen == []  # no forward pass ran before the error


def test_train_phases_shows_an_epochs_bar_only_when_asked(monkeypatch, capsys):
    monkeypatch.setenv("BOOK_PLAIN_PROGRESS", "1")  # the text bar, written to stdout
    loaders, model = _toy_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 2, "cpu")
    assert capsys.readouterr().out == ""
    train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 2, "cpu", progress=True)
    assert re.search(r"^\s*epochs: 100%.* 2/2 ", capsys.readouterr().out.split("\r")[-1])


def test_train_phases_names_an_empty_loader():
    loaders, model = _toy_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="the 'val' loader yielded no batches"):
        train_phases(
            model, {"train": loaders["train"], "val": []}, nn.CrossEntropyLoss(), optimizer, 1, "cpu"
        )


# --- chapter 05's ImageNet cell, offline ----------------------------------------------


def _chapter_cell(tag: str) -> str:
    """The source of the chapter's code cell tagged ``tag`` (Jupytext percent format)."""
    text = (ROOT / "chapters" / "05_transfer.py").read_text()
    cells = re.split(r"^# %%", text, flags=re.MULTILINE)
    found = [c for c in cells if re.match(rf'[^\n]*tags=\[[^\]]*"{tag}"', c)]
    assert len(found) == 1, f"expected one cell tagged {tag!r}, found {len(found)}"
    return found[0].split("\n", 1)[1]


@pytest.mark.integration
def test_imagenet_cell_fine_tunes_resnet18_offline_from_the_torch_home_cache(tmp_path, monkeypatch):
    from PIL import Image
    from torchvision.models import ResNet18_Weights, resnet18

    # A state dict where torchvision's cache expects ResNet-18's ImageNet weights.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = ResNet18_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    fake = resnet18(weights=None).state_dict()
    torch.save(fake, cache / Path(weights.url).name)  # resnet18-f37072fd.pth

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)

    # A tiny image folder: two classes, six small RGB images each.
    rng = np.random.default_rng(0)
    for name in ("circle", "square"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")

    namespace: dict = {}
    exec(compile(_chapter_cell("imagenet"), "05_transfer imagenet cell", "exec"), namespace)
    model, history, classes = namespace["finetune_imagenet_resnet18"](
        tmp_path / "images", "cpu", epochs=1, batch_size=4
    )
    assert classes == ["circle", "square"]
    assert model.fc.out_features == 2 and len(history.val_acc) == 1
    # the real weights= code path read our file, and the frozen blocks kept it
    assert torch.equal(model.conv1.weight, fake["conv1.weight"])
    assert torch.equal(model.layer3[0].bn1.running_mean, fake["layer3.0.bn1.running_mean"])
    assert not torch.equal(model.layer4[0].conv1.weight, fake["layer4.0.conv1.weight"])
    assert [p.requires_grad for p in (model.conv1.weight, model.layer4[0].conv1.weight)] == [
        False,
        True,
    ]


# --- device placement, watched on a CPU-only machine ---------------------------------


class _DeviceWatch(TorchFunctionMode):
    """Records the device each factory call and each ``.to(...)`` names (None when unnamed)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, object]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.zeros, torch.rand):
            self.calls.append((func.__name__, kwargs.get("device")))
        elif func is torch.Tensor.to:
            named = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
            self.calls.append(("to", named[0] if named else None))
        return func(*args, **kwargs)


def test_random_affine_draws_on_the_generators_device_and_moves_theta_to_the_images():
    # A CPU tensor works anywhere on a CPU-only machine; on a GPU a draw made on the
    # CPU, or a matrix left there, fails. So the devices named are checked instead.
    images = torch.rand(2, 1, 8, 8)
    with _DeviceWatch() as watch:
        random_affine(images, _gen(), rotation=(-10, 10))
    assert watch.calls and all(device == CPU for _, device in watch.calls), watch.calls
    assert {name for name, _ in watch.calls} == {"rand", "to"}


def test_train_phases_keeps_its_sums_and_batches_on_the_device():
    loaders, model = _toy_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with _DeviceWatch() as watch:
        train_phases(model, loaders, nn.CrossEntropyLoss(), optimizer, 1, CPU)
    assert watch.calls and all(device == CPU for _, device in watch.calls), watch.calls
    assert {name for name, _ in watch.calls} == {"zeros", "to"}

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from helpers.plotting import plot_broadcast, plot_image_grid, plot_losses


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_losses_draws_one_line_per_curve_with_epoch_x_values():
    fig = plot_losses({"train": [3.0, 2.0, 1.0], "test": [3.5, 2.5, 2.0]}, title="run")
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["train", "test"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3])
    np.testing.assert_array_equal(lines[1].get_ydata(), [3.5, 2.5, 2.0])
    assert ax.get_title() == "run" and ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss"


def test_plot_losses_uses_given_axes_and_log_scale():
    fig, ax = plt.subplots()
    assert plot_losses({"a": [1.0, 0.1]}, title="t", xlabel="step", log_y=True, ax=ax) is fig
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step"


@pytest.mark.parametrize("curves", [{}, {"empty": []}, [1.0, 2.0]])
def test_plot_losses_rejects_empty_or_unnamed_curves(curves):
    with pytest.raises(ValueError, match="curve"):
        plot_losses(curves, title="t")


def _cell_texts(ax):
    return [t.get_text() for t in ax.texts]


def test_plot_broadcast_shows_the_stretched_operands_and_the_true_sum():
    col = torch.arange(3.0).reshape(3, 1)
    row = torch.tensor([10.0, 20.0, 30.0, 40.0])
    fig = plot_broadcast(col, row)
    a_ax, b_ax, out_ax = fig.axes
    assert "(3, 1)" in a_ax.get_title()
    assert "(4,)" in b_ax.get_title() and "(1, 4)" in b_ax.get_title()
    assert "(3, 4)" in out_ax.get_title()
    expected = (col + row).flatten().tolist()
    assert [float(t) for t in _cell_texts(out_ax)] == expected
    # 12 cells each; a has 3 real cells and 9 copies, b has 4 real and 8 copies
    real_colour = a_ax.patches[0].get_facecolor()
    assert sum(p.get_facecolor() == real_colour for p in a_ax.patches) == 3
    assert sum(p.get_facecolor() == real_colour for p in b_ax.patches) == 4
    assert len(out_ax.patches) == 12


def test_plot_broadcast_rejects_incompatible_or_unsupported_tensors():
    with pytest.raises(ValueError, match="do not broadcast"):
        plot_broadcast(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at most 2 dimensions"):
        plot_broadcast(torch.zeros(2, 2, 2), torch.zeros(2))
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        plot_broadcast([1, 2], torch.zeros(2))


def test_plot_image_grid_lays_out_images_with_titles():
    images = [torch.full((1, 4, 4), float(i)) for i in range(5)]
    fig = plot_image_grid(images, titles=[f"#{i}" for i in range(5)], suptitle="grid", ncols=3)
    assert len(fig.axes) == 6  # 2 rows of 3, the last one left empty
    shown = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in shown] == ["#0", "#1", "#2", "#3", "#4"]
    np.testing.assert_array_equal(shown[4].images[0].get_array(), np.full((4, 4), 4.0))
    assert fig._suptitle.get_text() == "grid"


def test_plot_image_grid_scales_each_image_unless_given_one_range():
    faint, bright = torch.full((3, 3), 0.25), torch.linspace(0, 1, 9).reshape(3, 3)
    faint[0, 0] = 0.0
    own = plot_image_grid([faint, bright], suptitle="own")
    assert [ax.images[0].get_clim() for ax in own.axes] == [(0.0, 0.25), (0.0, 1.0)]
    shared = plot_image_grid([faint, bright], suptitle="shared", value_range=(0, 1))
    assert [ax.images[0].get_clim() for ax in shared.axes] == [(0.0, 1.0), (0.0, 1.0)]


def test_plot_image_grid_accepts_a_batch_tensor():
    fig = plot_image_grid(torch.rand(2, 5, 5), suptitle="batch")
    assert sum(bool(ax.images) for ax in fig.axes) == 2


@pytest.mark.parametrize(
    ("images", "kwargs", "error", "message"),
    [
        ([], {}, ValueError, "at least one"),
        ([torch.zeros(3, 3)], {"titles": ["a", "b"]}, ValueError, "titles"),
        ([torch.zeros(3, 3)], {"ncols": 0}, ValueError, "ncols"),
        ([torch.zeros(3, 3, 3)], {}, ValueError, r"\(H, W\)"),
        ([[0.0, 1.0]], {}, TypeError, "torch.Tensor"),
        ([torch.zeros(3, 3)], {"value_range": [0, 1]}, TypeError, "value_range"),
        ([torch.zeros(3, 3)], {"value_range": (0, "1")}, TypeError, "value_range"),
        ([torch.zeros(3, 3)], {"value_range": (1, 1)}, ValueError, "low < high"),
    ],
)
def test_plot_image_grid_rejects_bad_input(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        plot_image_grid(images, suptitle="x", **kwargs)

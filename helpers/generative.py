"""Generative models: the VAE's closed-form KL term and honest scores for generated digits.

``gaussian_kl`` is the KL term of the variational autoencoder's loss; ``classify_images``,
``confidence_summary`` and ``frechet_distance`` score samples from any generator with a
digit classifier trained on real images. Introduced in chapter 06 (generative models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ConfidenceSummary",
    "classify_images",
    "confidence_summary",
    "frechet_distance",
    "gaussian_kl",
]


def _check_tensor(name: str, value: object, ndim: int) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must hold floating-point values, got {value.dtype}")
    return value


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` for every row, in nats; shape ``(B,)``.

    The closed form ``0.5 * sum(mu**2 + exp(logvar) - 1 - logvar)`` over the last
    dimension, derived in chapter 06. ``mu`` and ``logvar`` are ``(B, latent_dim)``.
    """
    _check_tensor("mu", mu, 2)
    _check_tensor("logvar", logvar, 2)
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} differ in shape")
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


@torch.no_grad()
def classify_images(
    features: nn.Module,
    head: nn.Module,
    images: torch.Tensor,
    device: str | torch.device,
    batch_size: int = 250,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(N, C)`` and feature vectors ``(N, F)`` of ``images``, on the CPU.

    The classifier is split in two: ``features`` maps images to feature vectors and
    ``head`` maps those to class logits. Both run in ``eval()`` mode without a graph,
    ``batch_size`` images at a time. Introduced in chapter 06.
    """
    for name, module in (("features", features), ("head", head)):
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got {tuple(images.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    features.eval()
    head.eval()
    probs, feats = [], []
    for start in range(0, len(images), batch_size):
        feature = features(images[start : start + batch_size].to(device))
        probs.append(torch.softmax(head(feature), dim=1).cpu())
        feats.append(feature.flatten(1).cpu())
    return torch.cat(probs), torch.cat(feats)


@dataclass(frozen=True)
class ConfidenceSummary:
    """How a classifier sees a set of images.

    ``confident_fraction``: share of images whose top class has probability >=
    ``threshold``. ``counts[c]``: number of images confidently put in class ``c``.
    ``covered``: classes with at least ``min_count`` confident images.
    ``effective_classes``: ``exp(entropy)`` of the distribution of predicted classes over
    all images, from 1 (all one class) to C (perfectly even).
    """

    confident_fraction: float
    counts: torch.Tensor
    covered: int
    effective_classes: float


def confidence_summary(probs: torch.Tensor, threshold: float = 0.9, min_count: int = 10) -> ConfidenceSummary:
    """Summarise class probabilities ``(N, C)`` from ``classify_images``; see the fields.

    Introduced in chapter 06 to score generated digits.
    """
    _check_tensor("probs", probs, 2)
    if len(probs) == 0:
        raise ValueError("probs must hold at least one row")
    if not torch.allclose(probs.sum(dim=1), torch.ones(len(probs), dtype=probs.dtype), atol=1e-4):
        raise ValueError("probs must be probabilities: every row must sum to 1")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive int, got {min_count!r}")
    n_classes = probs.shape[1]
    confidence, predicted = probs.max(dim=1)
    confident = confidence >= threshold
    counts = torch.bincount(predicted[confident], minlength=n_classes)
    share = torch.bincount(predicted, minlength=n_classes).double() / len(predicted)
    nonzero = share[share > 0]
    entropy = -(nonzero * nonzero.log()).sum()
    return ConfidenceSummary(
        confident_fraction=confident.double().mean().item(),
        counts=counts,
        covered=int((counts >= min_count).sum()),
        effective_classes=entropy.exp().item(),
    )


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors ``(N, F)``.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``, computed in float64
    with symmetric eigendecompositions. With Inception features this is the FID; chapter
    06 uses a small digit classifier's features, so values are not comparable with
    published FIDs. It is biased upwards for small sets: compare sets of equal size.
    """
    _check_tensor("a", a, 2)
    _check_tensor("b", b, 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a has {a.shape[1]} features but b has {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a and b need at least 2 rows each to estimate a covariance")
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2  # symmetric up to rounding; eigvalsh needs exactly
    cross = torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum()
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(distance.item(), 0.0)

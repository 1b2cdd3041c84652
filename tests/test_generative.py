import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from helpers.generative import (
    classify_images,
    confidence_summary,
    frechet_distance,
    gaussian_kl,
)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    logvar = torch.randn(5, 3, generator=g, dtype=torch.float64)
    q = Normal(mu, (0.5 * logvar).exp())
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(q, p).sum(dim=1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_gaussian_kl_is_zero_for_the_prior_and_grows_with_the_mean():
    zeros = torch.zeros(2, 4)
    assert torch.equal(gaussian_kl(zeros, zeros), torch.zeros(2))
    # one dimension with mean 3 and unit variance: 0.5 * 3**2
    mu = torch.tensor([[3.0, 0.0]])
    torch.testing.assert_close(gaussian_kl(mu, torch.zeros(1, 2)), torch.tensor([4.5]))


def test_gaussian_kl_rejects_bad_arguments():
    with pytest.raises(TypeError, match="mu"):
        gaussian_kl(np.zeros((2, 3)), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="logvar"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="differ in shape"):
        gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="floating"):
        gaussian_kl(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))


def _reference_frechet(a: np.ndarray, b: np.ndarray) -> float:
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_frechet_distance_matches_a_scipy_reference():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g)
    b = 0.5 * torch.randn(300, 6, generator=g) + 1.0
    expected = _reference_frechet(a.double().numpy(), b.double().numpy())
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_has_a_closed_form():
    # Exact moments: the set {-1, +1} scaled per column has mean 0 and a known variance.
    signs = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    a = signs * torch.tensor([1.0, 2.0])
    b = signs * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    # sample variance of {-s, s, -s, s} is 4 s^2 / 3; mean shift contributes 1 + 4
    var_a = 4 / 3 * torch.tensor([1.0, 4.0], dtype=torch.float64)
    var_b = 4 / 3 * torch.tensor([9.0, 0.25], dtype=torch.float64)
    expected = 5.0 + ((var_a.sqrt() - var_b.sqrt()) ** 2).sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rejects_bad_arguments():
    with pytest.raises(ValueError, match="features"):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="2 rows"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="b must be"):
        frechet_distance(torch.zeros(5, 3), [[0.0] * 3] * 5)


def test_confidence_summary_counts_confident_predictions():
    probs = torch.tensor(
        [
            [0.95, 0.05, 0.0],
            [0.92, 0.08, 0.0],
            [0.10, 0.90, 0.0],  # exactly at the threshold counts as confident
            [0.40, 0.60, 0.0],  # predicted 1 but not confident
        ]
    )
    summary = confidence_summary(probs, threshold=0.9, min_count=2)
    assert summary.confident_fraction == pytest.approx(0.75)
    assert summary.counts.tolist() == [2, 1, 0]
    assert summary.covered == 1  # only class 0 reaches min_count=2
    # predicted classes 0, 0, 1, 1: two even classes, exp(entropy) = 2
    assert summary.effective_classes == pytest.approx(2.0)


def test_confidence_summary_of_one_class_has_one_effective_class():
    probs = torch.tensor([[0.0, 1.0]]).repeat(20, 1)
    summary = confidence_summary(probs)
    assert summary.effective_classes == pytest.approx(1.0)
    assert summary.covered == 1 and summary.counts.tolist() == [0, 20]


def test_confidence_summary_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sum to 1"):
        confidence_summary(torch.ones(3, 2))
    with pytest.raises(ValueError, match="threshold"):
        confidence_summary(torch.full((3, 2), 0.5), threshold=1.5)
    with pytest.raises(ValueError, match="min_count"):
        confidence_summary(torch.full((3, 2), 0.5), min_count=0)
    with pytest.raises(ValueError, match="probs"):
        confidence_summary(torch.full((2,), 0.5))


def test_classify_images_matches_the_model_in_eval_mode():
    torch.manual_seed(0)
    features = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU())
    head = nn.Sequential(nn.Dropout(0.5), nn.Linear(5, 3))
    images = torch.randn(7, 1, 4, 4)
    probs, feats = classify_images(features, head, images, "cpu", batch_size=3)
    model = nn.Sequential(features, head).eval()  # eval: dropout off
    with torch.no_grad():
        torch.testing.assert_close(probs, torch.softmax(model(images), dim=1))
        torch.testing.assert_close(feats, features(images))
    assert probs.shape == (7, 3) and feats.shape == (7, 5)
    assert not head.training and not features.training


def test_classify_images_rejects_bad_arguments():
    layer = nn.Identity()
    with pytest.raises(TypeError, match="features"):
        classify_images(lambda x: x, layer, torch.zeros(2, 1, 2, 2), "cpu")
    with pytest.raises(ValueError, match="images"):
        classify_images(layer, layer, torch.zeros(2, 4), "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        classify_images(layer, layer, torch.zeros(2, 1, 2, 2), "cpu", batch_size=0)

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from helpers.data import load_breast_cancer_split, make_linear_data, standardize


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

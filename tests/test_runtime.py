import random

import numpy as np
import pytest
import torch

from helpers import runtime
from helpers.runtime import describe_runtime, get_device, make_generator, seed_everything


def test_get_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.delenv("BOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.delenv("BOOK_DEVICE", raising=False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device() == torch.device("mps")


def test_get_device_honours_prefer_and_environment(monkeypatch):
    assert get_device("CPU") == torch.device("cpu")
    monkeypatch.setenv("BOOK_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert get_device() == torch.device("cpu")


def test_get_device_rejects_bad_or_missing_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match="prefer must be one of"):
        get_device("tpu")
    with pytest.raises(ValueError, match="cuda"):
        get_device("cuda")
    with pytest.raises(ValueError, match="mps"):
        get_device("mps")
    with pytest.raises(TypeError, match="prefer"):
        get_device(0)


@pytest.mark.parametrize("available", [True, False])
def test_mps_probe_follows_torch_backends(monkeypatch, available):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: available)
    assert runtime._mps_available() is available


def test_seed_everything_repeats_all_three_generators():
    assert seed_everything(123) == 123
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002 - the seeded global
    seed_everything(123)
    second = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    assert first == second
    torch.manual_seed(123)
    assert torch.rand(1).item() == first[2]  # the same stream torch.manual_seed gives


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "1", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        seed_everything(bad)


def test_make_generator_is_private_and_repeatable():
    a = torch.randn(4, generator=make_generator(5))
    torch.randn(100)  # draws from the global stream do not matter
    b = torch.randn(4, generator=make_generator(5))
    assert torch.equal(a, b)
    reference = torch.Generator().manual_seed(5)
    assert torch.equal(a, torch.randn(4, generator=reference))
    with pytest.raises(TypeError, match="device"):
        make_generator(5, device=3)


def test_describe_runtime_names_version_device_and_seed():
    line = describe_runtime(torch.device("cpu"), 42)
    assert line == f"torch {torch.__version__} | device: cpu | seed: 42"
    with pytest.raises(TypeError, match="device"):
        describe_runtime("cpu", 42)


def test_book_seed_replaces_the_seed_a_chapter_passes(monkeypatch):
    monkeypatch.setenv("BOOK_SEED", "7")
    assert seed_everything(0) == 7
    drawn = torch.rand(1).item()
    torch.manual_seed(7)
    assert torch.rand(1).item() == drawn  # the generators were seeded with 7, not 0
    monkeypatch.setenv("BOOK_SEED", "")
    assert seed_everything(3) == 3  # set but empty: the chapter's own seed


@pytest.mark.parametrize("bad", ["one", "1.5", "-1"])
def test_book_seed_that_is_not_a_valid_seed_is_an_error_naming_it(monkeypatch, bad):
    monkeypatch.setenv("BOOK_SEED", bad)
    with pytest.raises(ValueError, match=r"BOOK_SEED|seed must be in"):
        seed_everything(0)

"""Where code runs and how it is made repeatable: device choice and seeding.

Introduced in chapter 01 (tensors); every later chapter's setup cell uses it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["describe_runtime", "get_device", "make_generator", "seed_everything"]

_DEVICE_KINDS = ("cuda", "mps", "cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` forces one kind (``"cuda"``, ``"mps"`` or ``"cpu"``); asking for an
    accelerator this machine does not have raises instead of silently falling back.
    The environment variable ``BOOK_DEVICE`` does the same as ``prefer`` when
    ``prefer`` is not given, so a reader can pin a device without editing a chapter.

    Introduced in chapter 01.
    """
    if prefer is None:
        prefer = os.environ.get("BOOK_DEVICE") or None
    if prefer is not None:
        if not isinstance(prefer, str):
            raise TypeError(f"prefer must be a string or None, got {type(prefer).__name__}")
        kind = prefer.lower()
        if kind not in _DEVICE_KINDS:
            raise ValueError(f"prefer must be one of {_DEVICE_KINDS}, got {prefer!r}")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError("prefer='cuda' but torch.cuda.is_available() is False")
        if kind == "mps" and not _mps_available():
            raise ValueError("prefer='mps' but torch.backends.mps.is_available() is False")
        return torch.device(kind)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    return seed


def seed_everything(seed: int) -> int:
    """Seed Python's ``random``, NumPy's global generator and torch's default generators.

    ``torch.manual_seed`` seeds the CPU generator and those of every CUDA and MPS
    device. Returns the seed so a setup cell can print it. Introduced in chapter 01.

    The environment variable ``BOOK_SEED``, when set, replaces ``seed``: a chapter can
    be run with another seed without editing it (the CPU-matrix test runs every chapter
    with seeds 0, 1 and 2 that way). Chapters derive all their seeds from the value
    returned here, and print it in their setup line.

    What it gives: the same random *draws* (initial weights, dropout masks, shuffles)
    each time the process runs. Generators created elsewhere (``np.random.default_rng()``,
    a private ``torch.Generator``) are not touched; DataLoader workers derive their
    seeds from torch's, so they follow.

    What it does not give by itself, i.e. bit-for-bit equal *arithmetic*:

    - CPU: runs repeat with the same torch and NumPy versions on the same machine and
      the same number of threads (the thread count changes how a float sum is split).
      A few CPU operations (``index_put_``/``put_`` with ``accumulate=True``,
      ``index_copy_``) are ordered only under ``torch.use_deterministic_algorithms(True)``.
    - CUDA: kernels that add with atomic operations (``index_add_``, ``scatter_add_``,
      many backward passes) sum in an order that changes between runs, and cuDNN's
      benchmark mode may pick a different convolution algorithm each run. Repeatable
      runs also need ``torch.use_deterministic_algorithms(True)`` (which raises for
      operations with no deterministic version), ``torch.backends.cudnn.benchmark =
      False`` (the default) and, on PyTorch 2.9 and earlier, the
      environment variable ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) set
      before the process starts (in deterministic mode, those releases raise an error
      naming it from cuBLAS matrix products otherwise).
    - MPS: the generator is seeded, but PyTorch documents no reproducibility
      guarantee; ``use_deterministic_algorithms(True)`` makes the MPS operations it
      knows to be nondeterministic raise.
    - Across devices and releases: CPU, CUDA and MPS generators produce different
      numbers from the same seed and use different summation orders, and results may
      change between PyTorch releases.
    """
    override = os.environ.get("BOOK_SEED", "").strip()
    if override:
        try:
            seed = int(override)
        except ValueError:
            message = f"the environment variable BOOK_SEED must be an integer, got {override!r}"
            raise ValueError(message) from None
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global generator is what np.random.* calls use
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a fresh ``torch.Generator`` on ``device`` seeded with ``seed``.

    A private generator gives one piece of code its own random stream, untouched
    by anything else that draws from the global one. Introduced in chapter 01.
    """
    seed = _check_seed(seed)
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def describe_runtime(device: torch.device, seed: int) -> str:
    """One line naming the torch version, the device and the seed, for setup cells.

    Introduced in chapter 01.
    """
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return f"torch {torch.__version__} | device: {name} | seed: {seed}"

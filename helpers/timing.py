"""Wall-clock timing that is fair to both CPU and GPU code.

Introduced in chapter 01 (the loop-versus-vectorised measurement); chapter 08 reuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["best_time"]


def _synchronize(device: torch.device | None) -> None:
    # GPU kernels run asynchronously: without a sync the clock stops before the work ends.
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


def best_time(
    fn: Callable[[], object],
    *,
    repeat: int = 5,
    warmup: int = 1,
    device: torch.device | None = None,
) -> float:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; return the fastest run in seconds.

    The minimum is the least noisy estimate of what the code costs: slower runs
    measure the code plus interference from everything else on the machine.
    Pass ``device`` when ``fn`` launches GPU work so each run waits for it.
    Introduced in chapter 01.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be a positive int, got {repeat!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    for _ in range(warmup):
        fn()
    _synchronize(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best

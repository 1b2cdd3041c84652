"""Wall-clock timing that is fair to both CPU and GPU code.

Introduced in chapter 01 (the loop-versus-vectorised measurement); chapter 08 reuses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

__all__ = ["best_time", "one_thread"]


def _synchronize(device: torch.device | None) -> None:
    # GPU kernels run asynchronously: without a sync the clock stops before the work ends.
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device is not None and device.type == "mps":
        torch.mps.synchronize()


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def best_time(
    fn: Callable[[], object],
    *,
    repeat: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times; return the fastest run in seconds.

    The minimum is the least noisy estimate of what the code costs: slower runs
    measure the code plus interference from everything else on the machine.
    Pass ``device`` (``"cuda"``, ``torch.device("mps")``...) when ``fn`` launches GPU
    work so each run waits for it. ``clock`` is the timer (tests pass a fake one).
    Introduced in chapter 01.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    repeat = _count("repeat", repeat, 1)
    warmup = _count("warmup", warmup, 0)
    if device is not None and not isinstance(device, torch.device):
        if not isinstance(device, str):
            raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")
        device = torch.device(device)
    if not callable(clock):
        raise TypeError(f"clock must be callable, got {type(clock).__name__}")
    for _ in range(warmup):
        fn()
    _synchronize(device)
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        _synchronize(device)
        best = min(best, clock() - start)
    return best


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the body with torch on one CPU thread, and restore the count afterwards.

    On a busy machine an operator split over several threads waits for each core it
    needs, and that waiting lands on the parallel operators only; one thread keeps a
    profile's or a timing's shares about the work. Introduced in chapter 08.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)

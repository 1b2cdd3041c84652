"""Chapter 8's exercise 3 checker: a warm-up to a constant rate, read off an optimizer.

The reader's ``build(name, optimizer, peak_lr, total_steps)`` (the signature of section
8.3's ``make_schedule``) is stepped as ``train_with_schedule`` steps it, once after every
optimizer step, and the rate each step used is compared with section 8.3's warm-up
(``LinearLR`` from 1 % of the peak over the first 10 % of the steps) followed by the
peak held to the end. Introduced with chapter 8's exercises; re-exported by
:mod:`helpers.exercises.ch08`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from helpers.exercises import checker, expect, expect_tensor

__all__ = ["check_warmup"]

# (peak rate, optimizer steps): a run at section 8.3's high rate, and a shorter one at its low rate
RUNS = ((0.5, 184), (0.05, 60))


def _rates(build: Callable[..., Any], peak: float, total: int) -> torch.Tensor:
    """The rate of every step of an SGD optimizer that ``build``'s scheduler drives."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=peak, momentum=0.9)
    scheduler = build("warm-up only", optimizer, peak, total)
    expect(
        scheduler is not None,
        f"build returned None for peak {peak}: that is the constant rate, with no warm-up",
        "return a scheduler: LinearLR climbs from a fraction of the rate to the rate",
    )
    expect(
        not isinstance(scheduler, lr_scheduler.ReduceLROnPlateau),
        "build returned a ReduceLROnPlateau, which train_with_schedule steps once per epoch "
        "with the validation loss",
    )
    expect(
        isinstance(scheduler, lr_scheduler.LRScheduler),
        f"build should return a learning-rate scheduler, got {type(scheduler).__name__}",
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return torch.tensor(rates, dtype=torch.float64)


def _linear(peak: float, total: int, start: float, over: int) -> torch.Tensor:
    """A linear climb from ``start`` times the peak over ``over`` steps, then the peak."""
    steps = torch.arange(total, dtype=torch.float64)
    return peak * (start + (1 - start) * (steps / over).clamp(max=1))


def _warm_then_cosine(peak: float, total: int) -> torch.Tensor:
    """Section 8.3's warm-up + cosine: the same warm-up, then a decay to 0."""
    warm = total // 10
    steps = torch.arange(total, dtype=torch.float64)
    cosine = peak * (1 + torch.cos(torch.pi * (steps - warm) / (total - warm))) / 2
    return torch.where(steps < warm, _linear(peak, total, 0.01, warm), cosine)


@checker("8.3", "warmup_only")
def check_warmup(build: Callable[..., Any]) -> str:
    """Two runs, the chapter's at 0.5 and one at 0.05 with fewer steps."""
    expect(callable(build), f"warmup_only should be a function, got {type(build).__name__}")
    for peak, total in RUNS:
        warm = total // 10
        got = _rates(build, peak, total)
        mistakes = {
            "warm up over the first 10 % of the steps (total_steps // 10), not all of them": _linear(
                peak, total, 0.01, total
            ),
            "the warm-up lasts total_steps // 10 steps, rounded down as section 8.3's does, "
            "not math.ceil(total_steps / 10)": _linear(peak, total, 0.01, math.ceil(total / 10)),
            "start from 1 % of the peak (start_factor=0.01), as section 8.3's warm-up does": _linear(
                peak, total, 1 / 3, warm
            ),
            "after the warm-up, hold the peak: that rate decays again, as warm-up + cosine does": (
                _warm_then_cosine(peak, total)
            ),
        }
        expect_tensor(
            got,
            _linear(peak, total, 0.01, warm),
            f"the rate of each of {total} steps at peak {peak}",
            atol=1e-9,
            rtol=1e-6,
            mistakes=mistakes,
        )
    peak, total = RUNS[0]
    return (
        f"starts at {0.01 * peak:.3g}, reaches {peak} at step {total // 10} of {total} and holds it "
        f"to the end, and does the same at peak {RUNS[1][0]} over {RUNS[1][1]} steps"
    )

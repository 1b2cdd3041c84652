"""Chapter 8's exercise 3 checker: warm-up, hold, decay, read off an optimizer step by step.

The reader's ``build(name, optimizer, peak_lr, total_steps, steps_per_epoch)`` (section
8.3's ``make_schedule`` with the epoch length added) is stepped as ``train_with_schedule``
steps it, once after every optimizer step, and the rate each step used is compared with
the exercise's schedule: a linear warm-up from 1 % of the peak over the first epoch, the
peak held, and a linear decay towards 0 over the last two epochs. The usual mistakes
(lengths counted in epochs, a rate that changes once per epoch, a milestone one step
off, a warm-up from the full rate, a decay that reaches 0 at the last step) get hints.
Introduced with chapter 8's exercises; re-exported by :mod:`helpers.exercises.ch08`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler

from helpers.exercises import checker, expect, expect_tensor

__all__ = ["check_warmup", "warmup_hold_decay_rates"]

# (peak rate, optimizer steps, steps per epoch): 8 epochs at section 8.3's high rate, and 5
# shorter ones at its low rate; epoch lengths other than the chapter's, so that a build
# must use its arguments
RUNS = ((0.5, 184, 23), (0.05, 60, 12))
START = 0.01  # the warm-up's first rate, as a fraction of the peak


def warmup_hold_decay_rates(
    peak: float,
    total: int,
    per_epoch: int,
    *,
    start: float = START,
    warm: int | None = None,
    decay_start: int | None = None,
    decay: int | None = None,
    epoch_wise: bool = False,
) -> torch.Tensor:
    """The rate of each of ``total`` steps: the exercise's schedule, or a variant of it.

    Step ``s`` (from 0) uses ``peak * (start + (1 - start) * s / warm)`` during the warm-up
    (``warm`` steps, one epoch), ``peak`` while held, and ``peak * (1 - k / decay)`` at the
    ``k``-th step of the decay (``decay`` steps, two epochs, from ``decay_start``). With
    ``epoch_wise`` the rate changes only at epoch boundaries.
    """
    warm = per_epoch if warm is None else warm
    decay = 2 * per_epoch if decay is None else decay
    decay_start = total - decay if decay_start is None else decay_start
    steps = torch.arange(total, dtype=torch.float64)
    if epoch_wise:
        steps = torch.div(steps, per_epoch, rounding_mode="floor") * per_epoch
    rising = peak * (start + (1 - start) * (steps / warm).clamp(max=1))
    falling = peak * (1 - (steps - decay_start) / decay).clamp(min=0)
    return torch.where(steps < decay_start, rising, falling)


def _rates(build: Callable[..., Any], peak: float, total: int, per_epoch: int) -> torch.Tensor:
    """The rate of every step of an SGD optimizer that ``build``'s scheduler drives."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=peak, momentum=0.9)
    scheduler = build("warm-up, hold, decay", optimizer, peak, total, per_epoch)
    expect(
        scheduler is not None,
        f"build returned None for peak {peak}: that is the constant rate",
        "return a scheduler: SequentialLR chains one scheduler per phase",
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
        scheduler.step()  # after every optimizer step, as train_with_schedule does
    return torch.tensor(rates, dtype=torch.float64)


def _mistakes(peak: float, total: int, per_epoch: int) -> dict[str, torch.Tensor]:
    """The rates the usual mistakes produce, each with its hint."""
    epochs = total // per_epoch
    decay_start = total - 2 * per_epoch

    def variant(**changes: Any) -> torch.Tensor:
        return warmup_hold_decay_rates(peak, total, per_epoch, **changes)

    return {
        "those lengths count epochs, but train_with_schedule calls scheduler.step() after "
        "every optimizer step: count in steps (epochs × steps_per_epoch)": variant(
            warm=1, decay_start=epochs - 2, decay=2
        ),
        "the rate changed only at the start of each epoch: compute it from the step, so that it "
        "changes after every optimizer step": variant(epoch_wise=True),
        "the decay starts one step late: SequentialLR switches to the next scheduler once "
        "scheduler.step() has been called `milestone` times, so the milestone is "
        "total_steps - 2 * steps_per_epoch": variant(decay_start=decay_start + 1),
        "the decay starts one step early: step total_steps - 2 * steps_per_epoch (counted from "
        "0) is the decay's first, at the full rate": variant(decay_start=decay_start - 1),
        "the warm-up is one step too long: it reaches the peak at step steps_per_epoch "
        "(total_iters=steps_per_epoch)": variant(warm=per_epoch + 1),
        "the warm-up is one step too short: it reaches the peak at step steps_per_epoch "
        "(total_iters=steps_per_epoch)": variant(warm=per_epoch - 1),
        "the warm-up starts at the full rate: start from 1 % of the peak "
        "(LinearLR's start_factor=0.01)": variant(start=1.0),
        "the last step trained at a rate of 0: decay over 2 * steps_per_epoch steps "
        "(total_iters), so that the rate reaches 0 only after the last step": variant(
            decay_start=decay_start, decay=2 * per_epoch - 1
        ),
        "hold the peak between the warm-up and the decay: that decay starts right after the warm-up": variant(
            decay_start=per_epoch, decay=total - per_epoch
        ),
    }


@checker("8.3", "warmup_hold_decay")
def check_warmup(build: Callable[..., Any]) -> str:
    """Two runs: 8 epochs at 0.5, and 5 shorter ones at 0.05."""
    expect(callable(build), f"warmup_hold_decay should be a function, got {type(build).__name__}")
    for peak, total, per_epoch in RUNS:
        got = _rates(build, peak, total, per_epoch)
        expect_tensor(
            got,
            warmup_hold_decay_rates(peak, total, per_epoch),
            f"the rate of each of {total} steps at peak {peak}, {per_epoch} steps per epoch",
            atol=1e-9,
            rtol=1e-6,
            mistakes=_mistakes(peak, total, per_epoch),
        )
    peak, total, per_epoch = RUNS[0]
    return (
        f"over {total} steps of {per_epoch} per epoch at peak {peak}, the rate starts at "
        f"{START * peak:.3g}, reaches {peak} at step {per_epoch}, holds it to step "
        f"{total - 2 * per_epoch - 1} and falls to {peak / (2 * per_epoch):.3g} at the last "
        f"step; likewise at peak {RUNS[1][0]} over {RUNS[1][1]} steps of {RUNS[1][2]} per epoch"
    )

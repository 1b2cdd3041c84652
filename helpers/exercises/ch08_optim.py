"""Checkers for chapter 8's first exercise: timing an optimizer's step alone, and the gap
between two optimizers' updates.

The reader's ``step_seconds`` is run on a stand-in optimizer whose ``step`` sleeps a known
time (its first call longer, as a cold call can be) and records the thread count it ran
on, and whose ``zero_grad`` records that it was called, so the checker knows what a warm
one-thread step takes and whether anything else was timed.

The reader's ``update_gap`` is run on small models and gradients of the checker's own,
against the checker's reference: two independent copies of the model, one ``AdamW`` each,
the same gradients at every step. Settings that differ in the learning rate give a gap
that cannot be zero, which catches two optimizers stepping one and the same set of
tensors. Introduced with chapter 8's exercises.
"""

from __future__ import annotations

import copy
import numbers
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect

__all__ = ["check_step_seconds", "check_update_gap", "reference_update_gap"]

STEP_S = 0.002
FIRST_S = 0.1
ONE_THREAD = "time on one thread: benchmark.Timer(..., num_threads=1)"
WARM_UP = "time warm calls: the first step can be slow, so warm up first (blocked_autorange does)"
SECONDS = "return seconds, as Timer's measurement does (its .median), not milliseconds or µs"
STEP_ALONE = "time optimizer.step() alone: the gradients are already in place, so no zero_grad"
SHARED = (
    "both optimizers stepped the same tensors, so their parameters cannot differ: give each "
    "its own copy of the model (copy.deepcopy(net)) and build each optimizer on its copy"
)
LEFT_ALONE = "work on copies: the caller's net must come back as it was"
EVERY_STEP = "set every step's gradients, grads[t][i] for parameter i at step t, on both copies, then step"
LARGEST = "return the largest absolute difference over every parameter's elements, not a mean"


class _Stepped:
    """A stand-in optimizer: ``step`` sleeps a known time and records the thread count."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.threads: list[int] = []
        self.zero_grads = 0
        self.param_groups: list[dict] = [{"params": [], "lr": 1e-3}]

    def step(self, closure: Any = None) -> None:
        start = time.perf_counter()
        self.threads.append(torch.get_num_threads())
        time.sleep(STEP_S + (FIRST_S if not self.durations else 0.0))
        self.durations.append(time.perf_counter() - start)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.zero_grads += 1

    def __repr__(self) -> str:
        return "a stand-in optimizer"


@checker("8.1", "step_seconds")
def check_step_seconds(step_seconds: Callable[..., Any]) -> str:
    """The reader's step_seconds on the stand-in, against its warm one-thread step."""
    expect(callable(step_seconds), f"step_seconds should be a function, got {type(step_seconds).__name__}")
    optimizer = _Stepped()
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # so that a step on the default threads shows
    try:
        answer = step_seconds(optimizer)
    finally:
        torch.set_num_threads(threads)
    expect(
        isinstance(answer, numbers.Real) and not isinstance(answer, bool) and answer > 0,
        f"step_seconds returned {answer!r}, not a positive number of seconds",
    )
    answer = float(answer)
    expect(optimizer.durations, "step_seconds never called optimizer.step()")
    if optimizer.zero_grads:
        raise Mismatch(f"step_seconds called zero_grad {optimizer.zero_grads} time(s)", STEP_ALONE)
    many = sum(n > 1 for n in optimizer.threads)
    if many * 2 >= len(optimizer.threads):
        raise Mismatch(f"{many} of the {len(optimizer.threads)} steps ran on several threads", ONE_THREAD)
    warm = sorted(optimizer.durations[1:])  # the first call is the cold one
    if not warm:
        raise Mismatch(
            f"step_seconds called optimizer.step() once, and a first call is cold ({answer:.4g} s)", WARM_UP
        )
    warm_s = warm[len(warm) // 2]
    ratio = answer / warm_s
    if 0.8 <= ratio <= 1.3:
        return (
            f"step_seconds gave {answer * 1e3:.2f} ms for a stand-in whose warm one-thread "
            f"step took {warm_s * 1e3:.2f} ms"
        )
    message = f"step_seconds gave {answer:.4g} for a stand-in whose warm steps took {warm_s:.4g} s"
    if 500 <= ratio <= 2e6:
        raise Mismatch(message, SECONDS)
    if answer >= FIRST_S * 0.9:
        raise Mismatch(message, WARM_UP)
    raise Mismatch(message)


def reference_update_gap(
    net: nn.Module, grads: list[list[torch.Tensor]], options_a: dict, options_b: dict
) -> float:
    """The largest absolute parameter difference after ``AdamW(**options_a)`` and
    ``AdamW(**options_b)`` trained two copies of ``net`` on the same gradients."""
    copies = [copy.deepcopy(net) for _ in range(2)]
    optimizers = [
        torch.optim.AdamW(model.parameters(), **options)
        for model, options in zip(copies, (options_a, options_b), strict=True)
    ]
    for step_grads in grads:
        for model, optimizer in zip(copies, optimizers, strict=True):
            for parameter, grad in zip(model.parameters(), step_grads, strict=True):
                parameter.grad = grad.clone()
            optimizer.step()
    return max(
        (a - b).abs().max().item()
        for a, b in zip(copies[0].parameters(), copies[1].parameters(), strict=True)
    )


def _case(seed: int, steps: int) -> tuple[nn.Module, list[list[torch.Tensor]]]:
    """A small seeded model and `steps` steps of seeded gradients for it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    grads = [[torch.randn(p.shape, generator=generator) for p in net.parameters()] for _ in range(steps)]
    return net, grads


# (seed, steps, options_a, options_b): a rate twice the other (a gap that cannot be
# zero), a weight decay against none, and the two implementations the exercise compares
CASES = [
    (0, 3, {"lr": 1e-2}, {"lr": 2e-2}),
    (1, 4, {"lr": 1e-2, "weight_decay": 0.0}, {"lr": 1e-2, "weight_decay": 0.5}),
    (2, 3, {"lr": 1e-3, "foreach": False}, {"lr": 1e-3, "fused": True}),
]


@checker("8.1", "update_gap")
def check_update_gap(update_gap: Callable[..., Any]) -> str:
    """The reader's update_gap on small models, against the reference's gaps."""
    expect(callable(update_gap), f"update_gap should be a function, got {type(update_gap).__name__}")
    gaps = []
    for seed, steps, options_a, options_b in CASES:
        net, grads = _case(seed, steps)
        before = [p.detach().clone() for p in net.parameters()]
        answer = update_gap(net, grads, dict(options_a), dict(options_b))
        if isinstance(answer, torch.Tensor) and answer.numel() == 1:
            answer = answer.item()
        expect(
            isinstance(answer, numbers.Real) and not isinstance(answer, bool) and answer >= 0,
            f"update_gap returned {answer!r}, not a number at or above 0",
        )
        moved = any(not torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
        expect(not moved, "update_gap changed the parameters of the net it was given", LEFT_ALONE)
        want = reference_update_gap(net, grads, options_a, options_b)
        what = f"update_gap(net, {steps} steps of gradients, {options_a}, {options_b}) is {answer:.3g}"
        if want > 0 and answer == 0:
            raise Mismatch(f"{what}, expected {want:.3g}", SHARED)
        if abs(answer - want) > 1e-6 * want + 1e-12:
            # a mean is below the largest difference; a gap of the right size
            # but not the reference's comes from other gradients
            hint = LARGEST if 0 < answer < want else EVERY_STEP if answer < 3 * want else None
            raise Mismatch(f"{what}, expected {want:.3g}", hint)
        gaps.append(answer)
    return f"update_gap matches the reference on {len(CASES)} pairs of settings: " + ", ".join(
        f"{gap:.3g}" for gap in gaps
    )

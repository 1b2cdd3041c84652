"""Checkers for chapter 8's exercises (tips and tricks, each one measured).

Each checker runs the reader's code on inputs of its own (a seeded ``torch.Generator``,
tiny sizes, the CPU) against torch itself: ``FlopCounterMode`` counts the operations of
a forward pass (8.1), a ``DataLoader`` iterated from a restored generator state gives
the batches a resumed epoch must see (8.2), ``LinearLR`` is the warm-up (8.3), and
autograd decides which uses of an inference tensor can go backward (8.4). Introduced
with chapter 8's exercises.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from helpers.exercises import Mismatch, checker, expect, expect_tensor, require_attempt

__all__ = [
    "check_flops_per_sample",
    "check_inference_tensors",
    "check_remaining_batches",
    "check_warmup_then_constant",
]

WIDTHS = (1, 7, 300, 2048)
COMBINATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "features + w": lambda f, w, W: f + w,
    "features * w": lambda f, w, W: f * w,
    "relu(features + w)": lambda f, w, W: torch.relu(f + w),
    "features @ W": lambda f, w, W: f @ W,
}


def _number(value: Any, what: str) -> float:
    """``value`` as a float: a real number or a one-element tensor, not a bool."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    expect(
        isinstance(value, numbers.Real) and not isinstance(value, bool),
        f"{what} should be a number, got {type(value).__name__}",
    )
    return float(value)


def _expect_function(value: Any, name: str) -> None:
    expect(callable(value), f"{name} should be a function, got {type(value).__name__}")


def _counted_flops(hidden: int) -> int:
    """FlopCounterMode's count for one sample through 64 -> hidden -> hidden -> 10."""
    layers = [nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, hidden)]
    net = nn.Sequential(*layers, nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, 10)).to("meta")
    with FlopCounterMode(display=False) as counter:
        net.eval()(torch.zeros(1, 64, device="meta"))  # shapes only: nothing is computed
    return counter.get_total_flops()


@checker("8.1", "flops_per_sample")
def check_flops_per_sample(flops_per_sample: Callable[[int], Any]) -> str:
    """The count at four widths against FlopCounterMode on the same architecture."""
    _expect_function(flops_per_sample, "flops_per_sample")
    got = torch.tensor(
        [_number(flops_per_sample(h), f"flops_per_sample({h})") for h in WIDTHS], dtype=torch.float64
    )
    want = torch.tensor([float(_counted_flops(h)) for h in WIDTHS], dtype=torch.float64)
    h = torch.tensor(WIDTHS, dtype=torch.float64)
    mistakes = {
        "that is half: count a multiply-add as two operations, as FlopCounterMode does": want / 2,
        "that counts the parameters (weights and biases), not the operations of a forward pass": (
            64 * h + h + h * h + h + 10 * h + 10
        ),
        "the output layer (hidden -> 10) is missing": want - 20 * h,
        "the hidden-to-hidden layer does hidden x hidden multiply-adds per sample, not hidden": (
            2 * (64 * h + h + 10 * h)
        ),
        "that counts the bias additions too: count only the matrix products": want + 2 * h + 10,
        "that is for a batch of 512: divide by the batch size": want * 512,
    }
    expect_tensor(got, want, f"flops_per_sample at widths {WIDTHS}", atol=0.5, rtol=0, mistakes=mistakes)
    return (
        f"matches torch.utils.flop_counter.FlopCounterMode at widths {', '.join(map(str, WIDTHS))} "
        f"({int(want[-1]):,} operations per sample at {WIDTHS[-1]:,})"
    )


def _loader(kind: str, generator: torch.Generator) -> DataLoader:
    """32 numbered samples in batches of 4, shuffled by ``generator`` as chapter 8 does."""
    data = TensorDataset(torch.arange(32), 10 * torch.arange(32))
    if kind == "shuffle":
        return DataLoader(data, batch_size=4, shuffle=True, generator=generator)
    batches = BatchSampler(RandomSampler(data, generator=generator), batch_size=4, drop_last=False)
    return DataLoader(data, sampler=batches, batch_size=None, generator=generator)


def _stacked(batches: Iterable, what: str) -> torch.Tensor:
    """The sample numbers of ``batches``, one row per batch (an empty (0, 4) if none)."""
    expect(
        isinstance(batches, Iterable),
        f"{what} should be an iterable of batches, got {type(batches).__name__}",
    )
    batches = list(batches)
    expect(
        all(isinstance(batch, (list, tuple)) and len(batch) == 2 for batch in batches),
        f"{what} should yield the loader's batches, pairs (x, y), got {batches[:1]!r}",
    )
    rows = [x for x, _ in batches]
    return torch.stack(rows) if rows else torch.zeros(0, 4, dtype=torch.int64)


def _epoch(kind: str, state: torch.Tensor, skip: int, iter_from: torch.Tensor | None = None) -> torch.Tensor:
    """The batches of an epoch drawn from ``state``, after the first ``skip``.

    With ``iter_from``, ``iter(loader)`` runs from that state and ``state`` is restored
    only afterwards (the loader draws its workers' base seed when ``iter`` is called).
    """
    generator = torch.Generator()
    generator.set_state(state if iter_from is None else iter_from)
    batches = iter(_loader(kind, generator))
    if iter_from is not None:
        generator.set_state(state)
    return _stacked(list(batches)[skip:], "the reference")


@checker("8.2", "remaining_batches")
def check_remaining_batches(remaining_batches: Callable[..., Iterable]) -> str:
    """Resume the third epoch after 3 of its 8 batches, for two kinds of shuffled loader."""
    _expect_function(remaining_batches, "remaining_batches")
    steps_done = 3
    for kind in ("batch sampler", "shuffle"):
        generator = torch.Generator().manual_seed(802)
        loader = _loader(kind, generator)
        for _ in range(2):  # two epochs, so the generator is far from its seed
            list(loader)
        saved = generator.get_state()  # the state the third epoch starts from
        epoch = _stacked(list(loader), "the reference")  # the uninterrupted epoch
        after = _stacked(list(loader), "the reference")  # and the next one
        now = generator.get_state()  # where a crashed run would leave it
        want = epoch[steps_done:]
        mistakes = {
            "that is the order of the generator as it is: restore saved_state into shuffle_rng first": _epoch(
                kind, now, steps_done
            ),
            "that skips one batch too many: batches 0 to steps_done - 1 are done, and batch "
            "steps_done comes next": _epoch(kind, saved, steps_done + 1),
            "that repeats the last batch done: skip steps_done batches, not steps_done - 1": _epoch(
                kind, saved, steps_done - 1
            ),
            "those are all the epoch's batches: skip the steps_done that were trained on": epoch,
            "iter(loader) draws from the generator: restore the state before calling it": _epoch(
                kind, saved, steps_done, iter_from=now
            ),
        }
        got = _stacked(remaining_batches(loader, generator, saved.clone(), steps_done), "remaining_batches")
        expect_tensor(got, want, f"the sample numbers of the remaining batches ({kind})", mistakes=mistakes)
        expect_tensor(
            _stacked(list(loader), "the loader"),
            after,
            f"the epoch after the resumed one ({kind})",
            mistakes={
                "the next epoch does not continue: restore into shuffle_rng itself, the generator "
                "the loader draws from": _epoch(kind, now, 0)
            },
        )
    return (
        f"gives the last {len(want)} of 8 batches in the interrupted epoch's order, and the next "
        "epoch continues as without the crash, with a batch sampler and with shuffle=True"
    )


def _rates(scheduler: Any, optimizer: torch.optim.Optimizer, steps: int) -> torch.Tensor:
    """The rate each of ``steps`` SGD steps used, stepping the scheduler after each."""
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        for parameter in optimizer.param_groups[0]["params"]:
            parameter.grad = torch.ones_like(parameter)
        optimizer.step()
        scheduler.step()
    return torch.tensor(rates, dtype=torch.float64)


def _reference_rates(peak: float, steps: int, make: Callable) -> torch.Tensor:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=peak)
    return _rates(make(optimizer), optimizer, steps)


@checker("8.3", "warmup_then_constant")
def check_warmup_then_constant(warmup_then_constant: Callable[..., Any]) -> str:
    """47 steps at a peak of 0.3 against LinearLR(start_factor=0.01, total_iters=4)."""
    _expect_function(warmup_then_constant, "warmup_then_constant")
    peak, steps = 0.3, 47
    warm = steps // 10
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=peak)
    scheduler = warmup_then_constant("warm-up only", optimizer, peak, steps)
    expect(
        isinstance(scheduler, lr_scheduler.LRScheduler),
        f"warmup_then_constant should return a learning-rate scheduler, got {type(scheduler).__name__}",
    )
    expect(
        scheduler.optimizer is optimizer,
        "the scheduler drives another optimizer: build it on the `optimizer` argument",
    )
    got = _rates(scheduler, optimizer, steps)
    linear, lambda_lr = lr_scheduler.LinearLR, lr_scheduler.LambdaLR
    want = _reference_rates(peak, steps, lambda o: linear(o, start_factor=0.01, total_iters=warm))

    def factor(step: float, length: float = warm, start: float = 0.01) -> float:
        return start + (1 - start) * min(step, length) / length

    mistakes = {
        f"the warm-up lasts the whole run: it should end at total_steps // 10 = {warm}": (
            _reference_rates(peak, steps, lambda o: linear(o, 0.01, total_iters=steps))
        ),
        "one step ahead: LambdaLR calls your function with 0 for the first step": _reference_rates(
            peak, steps, lambda o: lambda_lr(o, lambda s: factor(s + 1))
        ),
        "LambdaLR multiplies the base rate by what your function returns: return a factor, not a "
        "rate": _reference_rates(peak, steps, lambda o: lambda_lr(o, lambda s: peak * factor(s))),
        "the warm-up starts from 0: section 8.3's starts from 1 % of the rate": _reference_rates(
            peak, steps, lambda o: lambda_lr(o, lambda s: factor(s, start=0.0))
        ),
        f"a warm-up of total_steps / 10 = {steps / 10} steps: use whole steps, total_steps // 10": (
            _reference_rates(peak, steps, lambda o: lambda_lr(o, lambda s: factor(s, steps / 10)))
        ),
    }
    gap = expect_tensor(got, want, f"the rates of {steps} steps", atol=1e-12, rtol=1e-9, mistakes=mistakes)
    return (
        f"sets the same rates as LinearLR(start_factor=0.01, total_iters={warm}) on all {steps} "
        f"steps at a peak of {peak} (largest gap {gap:.0e}), from {want[0]:.4g} up to {peak}"
    )


def _gradients(features: torch.Tensor, combine: Callable, generator: torch.Generator) -> list:
    """Gradients of combine(features, w, W).sum() for w (4,) and W (4, 3)."""
    w = torch.randn(4, generator=generator).requires_grad_()
    W = torch.randn(4, 3, generator=generator).requires_grad_()
    combine(features, w, W).sum().backward()
    return [torch.zeros_like(p) if p.grad is None else p.grad for p in (w, W)]


WRONG_PREDICTION = {
    "features + w": "the gradient of a sum is 1 for w's every entry: it saves nothing, so it works",
    "features * w": "the gradient of features * w for w is features itself, which autograd must "
    "save: that fails",
    "relu(features + w)": "relu saves its own output, a new and normal tensor, not features: it works",
    "features @ W": "the gradient of features @ W for W is features.T @ grad, so features is "
    "saved: that fails",
}


@checker("8.4", "fails` and `make_usable")
def check_inference_tensors(fails: dict[str, Any], make_usable: Callable[[torch.Tensor], Any]) -> str:
    """The predictions against autograd itself; then make_usable on a fresh inference tensor."""
    expect(
        isinstance(fails, dict) and set(fails) == set(COMBINATIONS),
        f"fails should be a dict with the keys {sorted(COMBINATIONS)}, got {fails!r}",
    )
    for name in COMBINATIONS:
        require_attempt(fails[name], "fails")
        expect(
            isinstance(fails[name], bool),
            f"fails[{name!r}] should be True or False, got {fails[name]!r}",
        )
    generator = torch.Generator().manual_seed(804)
    values = torch.randn(5, 4, generator=generator)
    with torch.inference_mode():
        features = values * 1  # (5, 4), an inference tensor
    truth = {}
    for name, combine in COMBINATIONS.items():
        try:
            _gradients(features, combine, generator)
            truth[name] = False
        except RuntimeError:
            truth[name] = True
    for name, failed in truth.items():
        expect(
            fails[name] is failed,
            f"fails[{name!r}] is {fails[name]!r}, but its backward() {'fails' if failed else 'works'}",
            WRONG_PREDICTION[name],
        )
    _expect_function(make_usable, "make_usable")
    try:
        usable = make_usable(features)
    except RuntimeError as error:
        if "nference tensor" not in str(error):
            raise
        raise Mismatch(
            f"make_usable raised RuntimeError: {str(error).splitlines()[0]}",
            "features needs no gradient itself: give autograd a normal copy, features.clone() "
            "outside inference_mode",
        ) from error
    expect_tensor(usable, values, "make_usable(features)", atol=0, rtol=0)
    expect(
        not usable.is_inference(),
        "make_usable(features) is still an inference tensor",
        "detach(), .data and anything computed inside inference_mode stay inference tensors: "
        "call .clone() outside inference_mode",
    )
    gap = 0.0
    for name, combine in COMBINATIONS.items():
        seed = generator.initial_seed()
        got = _gradients(usable, combine, torch.Generator().manual_seed(seed))
        want = _gradients(values, combine, torch.Generator().manual_seed(seed))
        for which, g, r in zip(("w", "W"), got, want, strict=True):
            gap = max(gap, expect_tensor(g, r, f"the gradient for {which} of {name}", atol=0, rtol=0))
    failing = [name for name, failed in truth.items() if failed]
    return (
        f"predicts that {' and '.join(failing)} fail, as autograd does; with make_usable every "
        f"combination's gradients equal those of a normal tensor exactly (gap {gap:.0e})"
    )

"""Problems and references for chapter 2's exercise checkers (``helpers.exercises.ch02``).

Small, freshly seeded CPU problems; the reference each checker compares with (torch's
own SGD, big-batch steps, a large bootstrap, a trained network and a new one to load
into, the number of batches in an epoch), and what the usual mistakes produce on
the same problems. Written independently of the chapter's
solutions. Introduced with chapter 2's exercises.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SEED = 2024


def seeded_generator(offset: int = 0) -> torch.Generator:
    """A CPU generator seeded for one problem (``offset`` tells the problems apart)."""
    return torch.Generator().manual_seed(SEED + offset)


def flat_parameters(net: nn.Module) -> torch.Tensor:
    """All of ``net``'s parameters, detached and concatenated into one vector."""
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def random_init(net: nn.Module, generator: torch.Generator) -> nn.Module:
    """Draw every parameter from N(0, 0.5²) with ``generator`` (the global RNG stays untouched)."""
    with torch.no_grad():
        for param in net.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return net


# Exercise 2.1: momentum ---------------------------------------------------------------

LR, BETA, STEPS = 0.03, 0.8, 6


def momentum_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh ``nn.Linear(4, 2)`` with 16 inputs and regression targets, the same every call."""
    gen = seeded_generator(1)
    net = random_init(nn.Linear(4, 2), gen)
    return net, torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)


def run_steps(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: Callable[[], None]) -> None:
    """``STEPS`` full-batch steps of mean squared error, gradients reset before each."""
    for _ in range(STEPS):
        for param in net.parameters():
            param.grad = None
        F.mse_loss(net(x), y).backward()
        step()


def by_rule(rule: str) -> torch.Tensor:
    """The weights after ``STEPS`` steps of a wrong momentum rule: 'dampened', 'lagging'
    or 'previous gradient' (β times the last gradient, not the last step)."""
    net, x, y = momentum_problem()
    buffers = [torch.zeros_like(p) for p in net.parameters()]

    def step() -> None:
        with torch.no_grad():
            for param, buf in zip(net.parameters(), buffers, strict=True):
                if rule == "dampened":  # an average of gradients, as Adam's m
                    buf.mul_(BETA).add_((1 - BETA) * param.grad)
                    param -= LR * buf
                elif rule == "lagging":  # the parameter moves by the buffer before it is updated
                    param -= LR * buf
                    buf.mul_(BETA).add_(param.grad)
                else:  # the buffer holds the last gradient only, so nothing builds up
                    param -= LR * (param.grad + BETA * buf)
                    buf.copy_(param.grad)

    run_steps(net, x, y, step)
    return flat_parameters(net)


def by_torch(momentum: float, *, nesterov: bool = False) -> torch.Tensor:
    """The weights after ``STEPS`` steps of ``torch.optim.SGD`` with this momentum."""
    net, x, y = momentum_problem()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=momentum, nesterov=nesterov)
    run_steps(net, x, y, optimizer.step)
    return flat_parameters(net)


# Exercise 2.2: gradient accumulation --------------------------------------------------


class CountingSGD(torch.optim.SGD):
    """Plain SGD that counts its steps."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure: Any = None) -> Any:
        self.steps += 1
        return super().step(closure)


# 8 micro-batches, 7 of 4 examples and a last of 2: groups of 3, 3 and 2 micro-batches,
# the last group holding micro-batches of unequal size (4 + 2 examples)
MICRO_BATCH, GROUP_OF, N_EXAMPLES = 4, 3, 30
N_MICRO = -(-N_EXAMPLES // MICRO_BATCH)
GROUPS = [min(GROUP_OF, N_MICRO - start) for start in range(0, N_MICRO, GROUP_OF)]
GROUP_EXAMPLES = [
    min(N_EXAMPLES, (start + n) * MICRO_BATCH) - start * MICRO_BATCH
    for start, n in zip(range(0, N_MICRO, GROUP_OF), GROUPS, strict=True)
]


def accumulation_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A fresh two-layer net with ``N_EXAMPLES`` inputs and 0/1 targets, the same every call."""
    gen = seeded_generator(2)
    net = random_init(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1)), gen)
    return (
        net,
        torch.randn(N_EXAMPLES, 5, generator=gen),
        torch.randint(0, 2, (N_EXAMPLES,), generator=gen).float(),
    )


def big_batches() -> torch.Tensor:
    """The reference: one SGD step per group, on the group's examples as one batch."""
    net, x, y = accumulation_problem()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    start = 0
    for n_examples in GROUP_EXAMPLES:
        rows = slice(start, start + n_examples)
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(net(x[rows]).squeeze(1), y[rows]).backward()
        optimizer.step()
        start = rows.stop
    return flat_parameters(net)


def accumulated_with(divisor: str = "size", *, zero: str = "step") -> torch.Tensor:
    """Accumulation with each loss times ``divisor``'s weight: 'size' (its share of the
    group's examples, right), 'group' (1 / micro-batches in the group), 'k' (1 / k),
    'full' (its size / k full micro-batches) or 'none' (1); ``zero`` 'step', 'never' or
    'each' micro-batch."""
    net, x, y = accumulation_problem()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    micro_x, micro_y = x.split(MICRO_BATCH), y.split(MICRO_BATCH)
    for i, (inputs, targets) in enumerate(zip(micro_x, micro_y, strict=True)):
        group = min(GROUP_OF, len(micro_x) - (i - i % GROUP_OF))
        n = len(targets)
        weight = {
            "size": n / GROUP_EXAMPLES[i // GROUP_OF],
            "group": 1 / group,
            "k": 1 / GROUP_OF,
            "full": n / (GROUP_OF * MICRO_BATCH),
            "none": 1.0,
        }[divisor]
        if zero == "each":
            optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(net(inputs).squeeze(1), targets)
        (loss * weight).backward()
        if (i + 1) % GROUP_OF == 0 or i == len(micro_x) - 1:  # the group's last micro-batch
            optimizer.step()
            if zero == "step":
                optimizer.zero_grad()
    return flat_parameters(net)


def summed_without_zero_grad() -> torch.Tensor:
    """The other way to accumulate (backward the summed loss, divide the gradients by the
    group's example count before the step), with zero_grad() forgotten."""
    net, x, y = accumulation_problem()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    start = 0
    for n_micro, n_examples in zip(GROUPS, GROUP_EXAMPLES, strict=True):
        for micro in range(n_micro):
            rows = slice(start + micro * MICRO_BATCH, min(start + (micro + 1) * MICRO_BATCH, N_EXAMPLES))
            F.binary_cross_entropy_with_logits(net(x[rows]).squeeze(1), y[rows], reduction="sum").backward()
        for param in net.parameters():
            param.grad /= n_examples
        optimizer.step()
        start += n_examples
    return flat_parameters(net)


# Exercise 2.3: the learning-rate search ----------------------------------------------

# Hand-made validation curves (10 epochs) for three grids. Each case: the rates, in the
# order handed to the search, the curve per rate, and the right answer (rate, best epoch
# from 1, best epoch is the last, rate at the grid's edge).
_DOWN = [0.60, 0.45, 0.35, 0.28, 0.24, 0.21, 0.19, 0.18, 0.17, 0.16]  # still falling
SEARCH_CASES: list[tuple[tuple[float, ...], dict[float, list[float]], tuple[float, int, bool, bool]]] = [
    (  # best inside the grid, before the last epoch; the lowest *last* loss is elsewhere
        (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
        {
            0.01: [v + 0.2 for v in _DOWN],
            0.03: _DOWN,
            0.1: [0.40, 0.20, 0.12, 0.09, 0.07, 0.06, 0.05, 0.055, 0.07, 0.09],
            0.3: [0.30, 0.15, 0.10, 0.08, 0.075, 0.07, 0.068, 0.066, 0.064, 0.062],
            1.0: [0.25, 0.12, 0.09, 0.08, 0.10, 0.20, 0.15, 0.11, 0.13, 0.14],
            3.0: [0.70, 0.90, 0.80, 0.75, 0.80, 0.85, 0.90, 0.80, 0.85, 0.90],
        },
        (0.1, 7, False, False),
    ),
    (  # best at the largest rate, at the last epoch; rates handed over out of order
        (0.3, 0.01, 3.0, 0.1),
        {
            0.3: [v + 0.05 for v in _DOWN],
            0.01: [v + 0.3 for v in _DOWN],
            3.0: [v - 0.1 for v in _DOWN],
            0.1: [v + 0.1 for v in _DOWN],
        },
        (3.0, 10, True, True),
    ),
    (  # best at the smallest rate, mid-run; rates handed over largest first
        (1.0, 0.1, 0.01),
        {
            1.0: [0.9] * 10,
            0.1: [0.5, 0.4, 0.35, 0.3, 0.3, 0.31, 0.32, 0.33, 0.34, 0.35],
            0.01: [0.45, 0.3, 0.2, 0.15, 0.18, 0.2, 0.22, 0.24, 0.26, 0.28],
        },
        (0.01, 4, False, True),
    ),
]


# Exercise 2.3: the bootstrap ----------------------------------------------------------


def skewed_sample() -> torch.Tensor:
    """28 small losses and 12 larger gains: a positive mean that resampling often loses."""
    gen = seeded_generator(3)
    values = torch.cat([torch.full((28,), -0.1), torch.full((12,), 0.35)])
    return values + 0.01 * torch.randn(40, generator=gen)


def reference_share(sample: torch.Tensor, n_resamples: int = 20_000) -> float:
    """The share of ``n_resamples`` bootstrap resamples of ``sample`` whose mean is above 0."""
    rows = torch.randint(len(sample), (n_resamples, len(sample)), generator=seeded_generator(4))
    return (sample[rows].mean(dim=1) > 0).double().mean().item()


# Exercise 2.4: loading the tensors whose shapes fit --------------------------------------


def seeded_mlp(sizes: tuple[int, ...], generator: torch.Generator) -> nn.Sequential:
    """Linear layers of ``sizes``, a ReLU between consecutive ones (named 0, 2, ... as
    ``nn.Sequential`` names them), with weights drawn by :func:`random_init`."""
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    net = random_init(nn.Sequential(*layers[:-1]), generator)
    assert isinstance(net, nn.Sequential)
    return net


def cloned_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``net``'s ``state_dict`` that later changes to ``net`` leave alone."""
    return {key: value.detach().clone() for key, value in net.state_dict().items()}


# Exercise 2.5: counting the updates up to the target epoch -------------------------------


def updates_to_best(best_epoch: int, n_train: int, batch_size: int) -> int:
    """Optimizer updates in epochs 1 to ``best_epoch`` (the epoch a run first reached the
    target loss): one per batch, the short last one included."""
    return best_epoch * -(-n_train // batch_size)


def update_mistakes(best_epoch: int, n_train: int, batch_size: int) -> dict[str, float]:
    """What the usual mistakes return for one case, keyed by a short name."""
    per_epoch = -(-n_train // batch_size)
    return {
        "floor": best_epoch * (n_train // batch_size),
        "before best": (best_epoch - 1) * per_epoch,
        "one epoch": per_epoch,
        "examples": best_epoch * n_train,
        "ceil total": -(-best_epoch * n_train // batch_size),
    }


# Exercise 2.5: the rule that picks a learning rate ---------------------------------------


def choose_rate(val_losses: dict[float, float]) -> float:
    """The smallest rate whose loss is within 1 % of the lowest (section 2.5's rule)."""
    best = min(val_losses.values())
    return min(rate for rate, loss in val_losses.items() if loss <= 1.01 * best)


def rate_mistakes(val_losses: dict[float, float]) -> dict[str, float]:
    """What the two usual mistakes return: the lowest loss outright, the largest rate within 1 %."""
    best = min(val_losses.values())
    return {
        "lowest": min(val_losses, key=val_losses.__getitem__),
        "largest": max(rate for rate, loss in val_losses.items() if loss <= 1.01 * best),
    }


# Exercise 2.5: the batch-size sweep (helpers.exercises.ch02_sweep) -----------------------

SWEEP_SIZES, SWEEP_N_TRAIN = (8, 32, 128), 300
# batches of 32: rate -> (best validation loss, best epoch), listed out of the rates' order;
# the rule picks 0.03, the lowest loss is at 0.1 and the largest rate within 1 % is 0.3
_RUNS_32 = {0.3: (0.0502, 3), 0.1: (0.0500, 4), 0.03: (0.0504, 9), 0.01: (0.0600, 20), 0.001: (0.1200, 60)}
# the runs of the other sizes at the rule's rate scaled by √(B/32) and by B/32: for batches
# of 8 the rule and the lowest loss disagree, for 128 they agree
_SCALED = {
    (0.015, 8): (0.0800, 5),
    (0.0075, 8): (0.0803, 7),
    (0.06, 128): (0.0700, 27),
    (0.12, 128): (0.0650, 31),
}


SWEEP_EPOCHS = 40


def _curve(best_val: float, best_epoch: int) -> list[float]:
    """A made-up validation curve: falling 10 % of the best per epoch to ``best_epoch``,
    then rising slowly."""
    return [
        best_val * (1 + 0.1 * (best_epoch - e) if e < best_epoch else 1 + 0.001 * (e - best_epoch))
        for e in range(1, SWEEP_EPOCHS + 1)
    ]


def _run(lr: float, batch_size: int, best_val: float, best_epoch: int) -> dict:
    return {
        "lr": lr,
        "batch_size": batch_size,
        "best_val": best_val,
        "best_epoch": best_epoch,
        "val": _curve(best_val, best_epoch),
    }


def sweep_run(lr: float, batch_size: int) -> dict:
    """The made-up run the checker's stand-in for ``train_and_validate`` returns."""
    best_val, best_epoch = _SCALED.get((round(lr, 12), batch_size), (0.0900, 10))
    return _run(lr, batch_size, best_val, best_epoch)


def sweep_runs_32() -> list[dict]:
    """Fresh copies of the runs with batches of 32 that the reader's sweep is given."""
    return [_run(lr, 32, v, e) for lr, (v, e) in _RUNS_32.items()]


def sweep_calls(mistake: str | None = None) -> list[tuple[float, int]]:
    """The (lr, batch size) pairs a sweep asks for, right or with a named mistake."""
    base = {"from lowest": 0.1, "from largest": 0.3}.get(mistake or "", 0.03)
    factors = [(size, ((size / 32) ** 0.5, size / 32)) for size in SWEEP_SIZES if size != 32]
    if mistake == "inverted":
        factors = [(size, (1 / a, 1 / b)) for size, (a, b) in factors]
    if mistake == "sqrt only":
        factors = [(size, (a,)) for size, (a, _) in factors]
    if mistake == "linear only":
        factors = [(size, (b,)) for size, (_, b) in factors]
    if mistake == "with 32":
        factors.append((32, (1.0, 1.0)))
    return [(base * f, size) for size, fs in factors for f in fs]


def _candidates(batch_size: int) -> list[dict]:
    if batch_size == 32:
        return sweep_runs_32()
    return [sweep_run(lr, size) for lr, size in sweep_calls() if size == batch_size]


def sweep_kept(batch_size: int) -> dict:
    """The run section 2.5's rule keeps for one batch size."""
    runs = _candidates(batch_size)
    rate = choose_rate({run["lr"]: run["best_val"] for run in runs})
    return next(run for run in runs if run["lr"] == rate)


def sweep_rate_mistakes(batch_size: int) -> dict[str, float]:
    """The rate the usual rule mistakes keep for one batch size, keyed as ``rate_mistakes``."""
    runs = _candidates(batch_size)
    return rate_mistakes({run["lr"]: run["best_val"] for run in runs})


def first_epoch_at(val: list[float], target: float) -> int:
    """The first epoch (counted from 1) whose validation loss is at most ``target``."""
    return next(epoch for epoch, loss in enumerate(val, start=1) if loss <= target)


def sweep_target() -> float:
    """The common target: the worst (highest) of the kept runs' best validation losses."""
    return max(sweep_kept(size)["best_val"] for size in SWEEP_SIZES)

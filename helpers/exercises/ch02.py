"""Checkers for chapter 2's exercises (neural-network basics).

Each checker runs the reader's code on small, freshly seeded CPU problems against a
reference that does not come from the chapter's solution: ``torch.optim.SGD`` for the
momentum optimizer, one big-batch SGD step per group for gradient accumulation, a
large reference bootstrap, ``torch.nn.functional`` for the MLP's forward pass, and
``len(DataLoader)`` for the count of updates. For the usual mistakes it computes what
the mistake would produce and names it. Introduced with chapter 2's exercises.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers.exercises import Mismatch, checker, expect, expect_close, expect_tensor
from helpers.exercises import ch02_references as ref

__all__ = [
    "check_accumulated_epoch",
    "check_bootstrap_share",
    "check_make_mlp",
    "check_momentum_sgd",
    "check_updates_to_best",
]


@checker("2.1", "MomentumSGD")
def check_momentum_sgd(optimizer_class: type) -> str:
    """``optimizer_class(params, lr=..., momentum=...)`` with ``step()`` must match torch's SGD."""
    expect(callable(optimizer_class), f"MomentumSGD should be a class, got {type(optimizer_class).__name__}")
    net, x, y = ref.momentum_problem()
    before = ref.flat_parameters(net)
    optimizer = optimizer_class(net.parameters(), lr=ref.LR, momentum=ref.BETA)
    try:
        ref.run_steps(net, x, y, optimizer.step)
    except RuntimeError as error:
        if "leaf Variable" not in str(error):
            raise
        raise Mismatch(
            f"step() raised RuntimeError: {error}",
            "update the parameters inside `with torch.no_grad():`, as section 2.3 did: "
            "autograd refuses to record an in-place change to a leaf",
        ) from None
    after = ref.flat_parameters(net)
    expect(
        not torch.equal(after, before),
        f"after {ref.STEPS} calls of step() the parameters have not changed",
        "change each parameter in place (`param -= ...` or `param.add_(...)`): "
        "`param = param - ...` only rebinds a local name",
    )
    gap = expect_tensor(
        after,
        ref.by_torch(ref.BETA),
        f"the weights after {ref.STEPS} steps (lr {ref.LR}, momentum {ref.BETA})",
        mistakes={
            "these are plain SGD's weights: the extra tensor must carry the previous step "
            "(or the gradients' sum) from one call of step() to the next": ref.by_torch(0.0),
            f"these are momentum 0.9's weights: use the `momentum` argument ({ref.BETA} here)": ref.by_torch(
                0.9
            ),
            "you averaged the gradients (β·buf + (1 - β)·grad), as Adam's first moment does: "
            "momentum adds the whole gradient, buf = β·buf + grad, so steady steps grow "
            "to 1/(1 - β) times": ref.by_rule("dampened"),
            "each parameter moved by its buffer before the buffer took in the new gradient: "
            "update the buffer first, then the parameter": ref.by_rule("lagging"),
        },
    )
    return (
        f"matches torch.optim.SGD(momentum={ref.BETA}) to {gap:.1e} after {ref.STEPS} steps "
        "on a fresh nn.Linear(4, 2)"
    )


# Exercise 2.2 ------------------------------------------------------------------------


@checker("2.2", "accumulated_epoch")
def check_accumulated_epoch(accumulated_epoch: Callable[..., Any]) -> str:
    """``accumulated_epoch(net, loader, loss_fn, optimizer, k)`` must equal big-batch steps."""
    net, x, y = ref.accumulation_problem()
    loader = DataLoader(TensorDataset(x, y), batch_size=ref.MICRO_BATCH)
    optimizer = ref.CountingSGD(net.parameters(), lr=0.5)
    accumulated_epoch(net, loader, nn.BCEWithLogitsLoss(), optimizer, ref.GROUP_OF)
    groups = ", ".join(map(str, ref.GROUPS))
    expected = len(ref.GROUPS)
    expect(
        optimizer.steps != len(loader),
        f"optimizer.step() ran {optimizer.steps} times, once per micro-batch; expected {expected}",
        f"take a step only after every k = {ref.GROUP_OF} micro-batches (and after the last, short group)",
    )
    expect(
        optimizer.steps == expected,
        f"optimizer.step() ran {optimizer.steps} times; expected {expected}, "
        f"one per group of {groups} micro-batches",
        "the last group holds fewer than k micro-batches and still needs its step"
        if optimizer.steps == expected - 1
        else None,
    )
    gap = expect_tensor(
        ref.flat_parameters(net),
        ref.big_batches(),
        f"the weights after {len(loader)} micro-batches of {ref.MICRO_BATCH} with k = {ref.GROUP_OF}",
        mistakes={
            f"you divided every loss by k = {ref.GROUP_OF}: the last group holds only {ref.GROUPS[-1]} "
            "micro-batches, so its step came out too short; divide by the number of "
            "micro-batches in the group": ref.accumulated_with("k"),
            "divide each micro-batch's loss by the number of micro-batches in its group: "
            "summed, the mean losses give that many times the batch's gradient": ref.accumulated_with("none"),
            "the gradients were not reset after a step, so each step also took in the earlier "
            "groups' gradients: call zero_grad() after optimizer.step()": ref.accumulated_with(zero="never"),
            "zero_grad() before every backward discards the earlier micro-batches of the group: "
            "reset only after a step": ref.accumulated_with(zero="each"),
        },
    )
    return (
        f"matches one SGD step per group of {groups} micro-batches taken as one batch, "
        f"to {gap:.1e}, with {expected} optimizer steps"
    )


# Exercise 2.3 ------------------------------------------------------------------------


def _share(got: Any, want: float, what: str, mistakes: dict[str, float], tol: float) -> float:
    """``got`` as a float within ``tol`` of ``want``; the hint of a mistake it matches otherwise."""
    value = expect_close(got, want, what, tol=math.inf)  # a finite number, whatever its size
    hint = next((h for h, wrong in mistakes.items() if abs(value - wrong) <= tol < abs(wrong - want)), None)
    expect(abs(value - want) <= tol, f"{what} is {value:.4g}, expected {want:.4g} (± {tol:g})", hint)
    return value


@checker("2.3", "bootstrap_share")
def check_bootstrap_share(bootstrap_share: Callable[..., Any]) -> str:
    """``bootstrap_share(difference, n_resamples, generator)``: share of resampled means above 0."""
    flipped = "count the resamples whose mean is above 0 (where the MLP's loss is lower), not below"
    percentage = "return a share between 0 and 1, not a percentage"
    positive = 0.1 + torch.rand(30, generator=ref.seeded_generator(5))
    got = bootstrap_share(positive, 500, ref.seeded_generator(6))
    on_positive = _share(
        got, 1.0, "the share for 30 positive differences", {flipped: 0.0, percentage: 100.0}, 0.0
    )
    sample, tol = ref.skewed_sample(), 0.04
    want = ref.reference_share(sample)
    mistakes = {
        "resample with replacement (torch.randint), as many values as there are: without "
        "replacement every resample is the whole sample, and its mean never changes": 1.0,
        "resample whole sets: the share of single values above 0 is not the share of "
        "resampled *means* above 0": (sample > 0).double().mean().item(),
        flipped: 1 - want,
        percentage: 100 * want,
    }
    what = "the share for a skewed sample of 40 (2,000 resamples)"
    got = _share(bootstrap_share(sample, 2000, ref.seeded_generator(7)), want, what, mistakes, tol)
    again = expect_close(bootstrap_share(sample, 2000, ref.seeded_generator(7)), want, what, tol=math.inf)
    expect(
        again == got,
        f"two calls with identically seeded generators gave {got:.4f} and {again:.4f}",
        "draw the resamples from the `generator` argument (torch.randint(..., generator=generator)), "
        "so that its seed fixes them",
    )
    return (
        f"gives {got:.3f} on a skewed sample of 40, against {want:.3f} from 20,000 reference "
        f"resamples, and {on_positive:g} on an all-positive one; a seeded generator repeats it exactly"
    )


# Exercise 2.4 ------------------------------------------------------------------------


def _check_mlp(make_mlp: Callable[[list[int]], Any], sizes: list[int]) -> float:
    net = make_mlp(list(sizes))
    expect(
        isinstance(net, nn.Sequential),
        f"make_mlp({sizes}) should return an nn.Sequential, got {type(net).__name__}",
        "wrap the list of layers: nn.Sequential(*layers)" if isinstance(net, (list, tuple)) else None,
    )
    linears = [m for m in net if isinstance(m, nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    pairs = list(itertools.pairwise(sizes))
    expect(shapes == pairs, f"make_mlp({sizes}) has Linear layers (in, out) {shapes}, expected {pairs}")
    keys, want_keys = (
        list(net.state_dict()),
        [f"{2 * i}.{p}" for i in range(len(pairs)) for p in ("weight", "bias")],
    )
    expect(
        keys == want_keys,
        f"make_mlp({sizes})'s state_dict keys are {keys}, expected {want_keys}",
        "put a ReLU between consecutive Linear layers, or they collapse into one linear map"
        if len(net) == len(pairs)
        else None,
    )
    x = torch.randn(6, sizes[0], generator=ref.seeded_generator(8))
    with torch.no_grad():
        want = ref.mlp_forward(linears, x)
        return expect_tensor(
            net(x),
            want,
            f"make_mlp({sizes})(x)",
            mistakes={
                "no ReLU after the output layer: its outputs are logits, "
                "which must be free to be negative": F.relu(want)
            },
        )


@checker("2.4", "make_mlp")
def check_make_mlp(make_mlp: Callable[[list[int]], Any]) -> str:
    """``make_mlp(sizes)``: Linear layers of those sizes, a ReLU between consecutive ones."""
    gap = max(_check_mlp(make_mlp, [5, 7, 3, 2]), _check_mlp(make_mlp, [4, 3]))
    return (
        "builds Linear 5→7→3→2 with a ReLU between consecutive layers, keys 0, 2 and 4 as "
        f"nn.Sequential names them, matching F.linear and F.relu to {gap:.1e}; [4, 3] gives one Linear"
    )


# Exercise 2.5 ------------------------------------------------------------------------

# (best epoch, examples, batch size): three with a last, smaller batch, one without
_CASES = [(7, 364, 128), (3, 364, 8), (5, 10, 32), (12, 100, 25)]


@checker("2.5", "updates_to_best")
def check_updates_to_best(updates_to_best: Callable[[int, int, int], Any]) -> str:
    """``updates_to_best(best_epoch, n_examples, batch_size)`` against ``len(DataLoader)``."""
    got = [updates_to_best(*case) for case in _CASES]
    for case, value in zip(_CASES, got, strict=True):
        expect(
            isinstance(value, numbers.Real) and not isinstance(value, bool),
            f"updates_to_best{case} should be a number, got {type(value).__name__}",
        )
    want = [e * len(DataLoader(range(n), batch_size=b)) for e, n, b in _CASES]
    mistakes = {
        "round the batches per epoch up: DataLoader keeps the last, smaller batch "
        "(unless drop_last=True), and it is an update too": [e * (n // b) for e, n, b in _CASES],
        "an update count is a whole number: the batches per epoch are n_examples / batch_size rounded up": [
            e * n / b for e, n, b in _CASES
        ],
        "round up per epoch, then multiply: every epoch ends with its own smaller batch": [
            math.ceil(e * n / b) for e, n, b in _CASES
        ],
        "best_epoch counts from 1: by the end of epoch e the loader has run e epochs": [
            (e - 1) * math.ceil(n / b) for e, n, b in _CASES
        ],
    }
    hint = next((h for h, values in mistakes.items() if values == got), None)
    wrong = [
        f"updates_to_best{case} = {value:g}, expected {expected}"
        for case, value, expected in zip(_CASES, got, want, strict=True)
        if value != expected
    ]
    expect(not wrong, "; ".join(wrong), hint)
    return (
        f"agrees with len(DataLoader) × epochs on {len(_CASES)} cases, among them 364 examples "
        f"in batches of 128 ({want[0] // _CASES[0][0]} updates an epoch, {want[0]} by epoch 7)"
    )

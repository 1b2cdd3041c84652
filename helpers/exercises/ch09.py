"""Checkers for chapter 9's exercises (distributed training); see :mod:`helpers.exercises`.

Each checker plays the ranks of a job inside one process, on inputs of its own (a seeded
``torch.Generator``, tiny sizes, the CPU): the ranks' shares of an evaluation set and of a
stream split over ranks and loader workers (9.1),
their gradients of unequal batches (9.2, the ranks exchanging numbers through a stand-in
all-reduce) and the average DDP takes (9.3) are computed here
with autograd and compared with the reader's function. Exercises 9.4 (a launched job's
reports) and 9.5 (a hand-written all-reduce, against simulated other ranks) are checked in
:mod:`helpers.exercises.ch09_collectives` and exported here too. Introduced with chapter
9's exercises.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from helpers.exercises import Mismatch, checker, expect, expect_tensor
from helpers.exercises.ch09_collectives import (
    check_average_gradients,
    check_mismatch_reports,
    first_match,
    simulate_ranks,
    within,
)

__all__ = [
    "check_average_gradients",
    "check_ddp_gradients",
    "check_mismatch_reports",
    "check_rescaled_loss",
    "check_sharded_accuracy",
    "check_stream_share",
]


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``build()``, initialised from ``seed`` without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _callable(value: Any, name: str) -> None:
    expect(callable(value), f"{name} should be a function, got {type(value).__name__}")


# ---- Exercise 9.1 -------------------------------------------------------------------------

PADDED = (
    "that counts some examples twice: DistributedSampler pads its list by repeating the first "
    "indices until it divides by the world size; deal out range(rank, n, world_size) instead"
)
DROPPED = (
    "that leaves the last examples out (drop_last=True, or equal blocks of n // world_size): "
    "deal out range(rank, n, world_size), which covers every example once"
)
MEAN_OF_RANKS = (
    "that is the mean of the ranks' own accuracies, which weights a rank with fewer examples like "
    "one with more: add up the ranks' correct answers and their examples (all_reduce with SUM), "
    "then divide"
)
TRAIN_MODE = "the model ran in training mode, with dropout on: call model.eval() before scoring"
UNSHARDED = (
    "a rank holds only its own share of the examples: score each rank's share in its own "
    "forward pass, model(x[r::world_size]), and add up the counts"
)

#: (examples, ranks, which examples the model gets right): chosen so that each mistake
#: above gives an accuracy different from the right one.
ACCURACY_CASES = (
    (10, 3, (1, 1, 0, 1, 1, 1, 1, 1, 1, 0)),
    (11, 4, (1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0)),
)


def _classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def _accuracy_of(right: torch.Tensor, shares: list[list[int]]) -> float:
    """The accuracy that adding up the ranks' counts over ``shares`` gives."""
    counted = [i for share in shares for i in share]
    return right[counted].double().mean().item()


def _sampler_shares(n: int, world_size: int, **options: Any) -> list[list[int]]:
    dataset = torch.utils.data.TensorDataset(torch.zeros(n))
    return [list(DistributedSampler(dataset, world_size, r, **options)) for r in range(world_size)]


def _accuracy_mistakes(right: torch.Tensor, world_size: int) -> list[tuple[str, float]]:
    n = len(right)
    dealt = [list(range(r, n, world_size)) for r in range(world_size)]
    blocks = n // world_size
    return [
        (PADDED, _accuracy_of(right, _sampler_shares(n, world_size, shuffle=False))),
        (PADDED, _accuracy_of(right, _sampler_shares(n, world_size))),
        (DROPPED, _accuracy_of(right, _sampler_shares(n, world_size, shuffle=False, drop_last=True))),
        (DROPPED, _accuracy_of(right, _sampler_shares(n, world_size, drop_last=True))),
        (
            DROPPED,
            _accuracy_of(right, [list(range(r * blocks, (r + 1) * blocks)) for r in range(world_size)]),
        ),
        (MEAN_OF_RANKS, sum(right[share].double().mean().item() for share in dealt) / world_size),
    ]


@checker("9.1", "sharded_accuracy")
def check_sharded_accuracy(sharded_accuracy: Callable[..., Any]) -> str:
    """Exercise 9.1: the accuracy ``world_size`` ranks find when each example counts once."""
    _callable(sharded_accuracy, "sharded_accuracy")
    generator, facts = torch.Generator().manual_seed(91), []
    for n, world_size, pattern in ACCURACY_CASES:
        model = _seeded(_classifier, 91 + n).train()  # as it is right after training
        x = torch.randn(n, 4, generator=generator)
        with torch.no_grad():
            predicted = model.eval()(x).argmax(dim=1)
        right = torch.tensor(pattern, dtype=torch.bool)
        y = torch.where(right, predicted, (predicted + 1) % 3)
        modes: list[bool] = []
        sizes: list[int] = []  # how many examples each forward pass scored

        def seen(module: nn.Module, args: tuple, modes=modes, sizes=sizes) -> None:
            modes.append(module.training)
            sizes.append(len(args[0]))

        model.train().register_forward_pre_hook(seen)
        with torch.random.fork_rng(devices=[]):  # dropout in training mode draws numbers
            got = sharded_accuracy(model, x.clone(), y.clone(), world_size)
        expect(not any(modes), f"{sum(modes)} of your forward passes ran in training mode", TRAIN_MODE)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        expect(
            isinstance(got, numbers.Real) and not isinstance(got, bool),
            f"sharded_accuracy should return the accuracy as a number, got {type(got).__name__}",
        )
        want = right.double().mean().item()
        hint = next(
            (h for h, value in _accuracy_mistakes(right, world_size) if abs(got - value) < 1e-6), None
        )
        expect(
            abs(got - want) < 1e-6,
            f"sharded_accuracy on {n} examples with {world_size} ranks is {got:.4f}; the single "
            f"process scores {int(right.sum())} of {n} right, {want:.4f}",
            hint,
        )
        share = -(-n // world_size)  # the most examples one rank holds
        expect(
            max(sizes, default=0) <= share,
            f"one of your forward passes scored {max(sizes, default=0)} examples, but with "
            f"{world_size} ranks no rank holds more than {share} of the {n}",
            UNSHARDED,
        )
        facts.append(f"{int(right.sum())} of {n} on {world_size} ranks")
    return f"reproduces the single-process accuracy exactly ({' and '.join(facts)})"


# ---- Exercise 9.1, the stream ------------------------------------------------------------

STREAM_LENGTH = (
    "a stream has no length to divide: keep every n-th example as it goes past, "
    "itertools.islice(stream, first, None, n)"
)
WORKERS_IGNORED = (
    "every DataLoader worker of a rank runs __iter__ on its own copy of the dataset: split over "
    "world_size * workers copies, this one number rank * workers + worker"
)
RANK_IGNORED = "every rank kept the same examples: the rank must decide which share a copy keeps"
WHOLE_STREAM = "every copy yielded the whole stream: keep only this copy's share"

#: (examples, ranks, workers per rank): uneven splits, and more copies than examples.
STREAM_CASES = ((10, 2, 1), (11, 2, 2), (7, 3, 2), (5, 2, 4))


def _stream_shares(stream_share: Callable[..., Any], n: int, world_size: int, workers: int) -> dict:
    """``{(rank, worker): positions of the examples it kept}``; each call gets a fresh stream."""
    shares = {}
    for rank in range(world_size):
        for worker in range(workers):
            stream = (f"example {i}" for i in range(n))  # one pass, no len(), like a file
            try:
                kept = list(stream_share(stream, rank, world_size, worker, workers))
            except TypeError as error:
                if "len()" in str(error):
                    raise Mismatch(f"your code raised TypeError: {error}", STREAM_LENGTH) from None
                raise
            expect(
                all(isinstance(x, str) and x.startswith("example ") for x in kept),
                f"stream_share should yield the stream's own examples, got {kept[:3]!r} "
                f"for rank {rank}, worker {worker}",
            )
            shares[rank, worker] = [int(x.split()[1]) for x in kept]
    return shares


@checker("9.1", "stream_share")
def check_stream_share(stream_share: Callable[..., Any]) -> str:
    """Exercise 9.1: over all ranks and workers, every example of the stream exactly once."""
    _callable(stream_share, "stream_share")
    sizes = []
    for n, world_size, workers in STREAM_CASES:
        shares = _stream_shares(stream_share, n, world_size, workers)
        counts = Counter(i for kept in shares.values() for i in kept)
        if counts == Counter(range(n)):
            sizes.append((n, world_size, workers, shares))
            continue
        everything = list(range(n))
        if all(kept == everything for kept in shares.values()):
            raise Mismatch(f"each of {len(shares)} copies kept all {n} examples", WHOLE_STREAM)
        same_for_workers = all(shares[r, w] == shares[r, 0] for r, w in shares)
        same_for_ranks = all(shares[r, w] == shares[0, w] for r, w in shares)
        hint = (
            WORKERS_IGNORED
            if workers > 1 and same_for_workers
            else RANK_IGNORED
            if world_size > 1 and same_for_ranks
            else None
        )
        twice = sorted(i for i, c in counts.items() if c > 1)
        never = sorted(set(range(n)) - set(counts))
        raise Mismatch(
            f"{n} examples over {world_size} ranks of {workers} workers: counted more than once "
            f"{twice}, never {never}",
            hint,
        )
    n, world_size, workers, shares = sizes[2]
    per_rank = [sum(len(shares[r, w]) for w in range(workers)) for r in range(world_size)]
    return (
        f"every example exactly once, in {len(STREAM_CASES)} splits up to "
        f"{max(w * k for _, w, k in STREAM_CASES)} copies; {n} examples over {world_size} ranks "
        f"of {workers} workers gave the ranks {per_rank}"
    )


# ---- Exercise 9.2 -------------------------------------------------------------------------

OWN_MEAN = (
    "each rank's own mean gives its examples the weight 1 / (its count), so a rank of 3 examples "
    "counts as much as one of 9: start from the summed loss (reduction='sum') and scale it"
)
NO_WORLD_SIZE = (
    "that is the right gradient divided by world_size: DDP divides the all-reduced sum by "
    "world_size, so multiply your loss by world_size too"
)
PLAIN_SUM = (
    "the summed loss must be scaled: by world_size / (the number of examples of all ranks "
    "together, which all_reduce of a tensor holding each rank's count gives)"
)
OWN_COUNT = (
    "that divides by the rank's own count: divide by the total count over all ranks (all_reduce "
    "a tensor holding len(targets)), times world_size"
)
DEMOTED = (
    "the loss should keep the outputs' dtype. The usual cause: a tensor of shape (1,) outranks "
    "a 0-dim one in type promotion, so a float32 count made with torch.tensor([float(n)]) "
    "turns the 0-dim float64 loss into float32; make the count 0-dim, torch.tensor(n), or give "
    "it dtype=outputs.dtype"
)
# different totals, so that no fixed number can stand in for the exchanged count
SPLITS = ((3, 9), (2, 4, 7))


def _flat_grad(loss: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


@checker("9.2", "rescaled_loss")
def check_rescaled_loss(rescaled_loss: Callable[..., Any]) -> str:
    """Exercise 9.2: with unequal ranks, DDP's average of the losses' gradients is the batch's mean."""
    _callable(rescaled_loss, "rescaled_loss")
    generator = torch.Generator().manual_seed(92)
    model = _seeded(lambda: nn.Linear(5, 4).double(), 92)
    most = max(sum(split) for split in SPLITS)
    x_all = torch.randn(most, 5, generator=generator, dtype=torch.float64)
    y_all = torch.randint(0, 4, (most,), generator=generator)
    gap = 0.0
    for split in SPLITS:
        total = sum(split)
        x, y = x_all[:total], y_all[:total]
        full = _flat_grad(F.cross_entropy(model(x), y), model)
        world_size, ends = len(split), torch.tensor(split).cumsum(0).tolist()
        parts = [(x[end - m : end], y[end - m : end]) for m, end in zip(split, ends, strict=True)]
        losses = simulate_ranks(rescaled_loss, [model(xr) for xr, _ in parts], [yr for _, yr in parts])
        grads, means = [], []
        for loss, (xr, yr) in zip(losses, parts, strict=True):
            what = f"rescaled_loss for a rank of {len(yr)} examples"
            expect(
                isinstance(loss, torch.Tensor),
                f"{what} should be a tensor to backpropagate, got {type(loss).__name__}",
                "keep the loss a tensor: .item() or float() cut it from the graph",
            )
            expect(
                loss.numel() == 1,
                f"{what} has shape {tuple(loss.shape)}, expected one number",
                "add up the examples' losses (reduction='sum'), not reduction='none'",
            )
            expect(
                loss.requires_grad,
                f"{what} has no gradient to give: it is cut off from the outputs",
                "compute the loss from `outputs` without .detach() or torch.no_grad()",
            )
            expect(
                loss.dtype == x_all.dtype,
                f"{what} has dtype {loss.dtype}, but the outputs it gets are {x_all.dtype}",
                DEMOTED,
            )
            grads.append(_flat_grad(loss.reshape(()), model))
            means.append(_flat_grad(F.cross_entropy(model(xr), yr), model))
        averaged = sum(grads) / world_size  # what DDP's all-reduce and division compute
        mistakes = {
            OWN_MEAN: sum(means) / world_size,
            NO_WORLD_SIZE: full / world_size,
            PLAIN_SUM: full * total / world_size,
            OWN_COUNT: sum(means),
        }
        gap = max(
            gap,
            expect_tensor(
                averaged,
                full,
                f"DDP's average of the gradients of ranks of {' + '.join(map(str, split))} examples",
                atol=1e-10,
                rtol=1e-8,
                check_dtype=False,
                mistakes=mistakes,
            ),
        )
    return (
        f"DDP's average of your losses' gradients equals the whole batch's mean gradient "
        f"{within(gap)} for ranks of 3 + 9 and of 2 + 4 + 7 examples"
    )


# ---- Exercise 9.3 -------------------------------------------------------------------------

WHOLE_BATCH = (
    "that is the gradient of the whole batch's loss, the one-process gradient the simulation is "
    "compared with (the check's criterion weighs the classes, so it differs from DDP's here): "
    "take each rank's loss on its own block, model(x[block]) or the block's rows of one forward "
    "pass, and average the ranks' gradients"
)
INTERLEAVED = (
    "rank r holds the r-th consecutive block of the batch (global_batches concatenates the "
    "ranks' batches in rank order), not every world_size-th example"
)
SUMMED = "that is the sum of the ranks' gradients: DDP divides it by world_size"
NOT_ZEROED = (
    "a rank's backward added to the gradient of the rank before it: call model.zero_grad() "
    "before each rank's backward"
)
STALE = (
    "the gradient that was in .grad before the call was added in: zero the gradients "
    "(model.zero_grad()) before the first backward"
)
STALE_NOT_ZEROED = (
    "nothing was zeroed: the old .grad and each earlier rank's gradient were added in; call "
    "model.zero_grad() before each rank's backward"
)
#: the check's criterion weighs the classes, so that a rank's mean is over its own block's
#: weights and the whole batch's gradient differs from DDP's average by more than rounding
CLASS_WEIGHTS = (1.0, 3.0, 0.5)


def _grads(
    model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: torch.Tensor, parts: list[slice]
) -> list[tuple[torch.Tensor, ...]]:
    """The gradient of ``criterion`` on each part of the batch."""
    return [torch.autograd.grad(criterion(model(x[s]), y[s]), list(model.parameters())) for s in parts]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


@checker("9.3", "ddp_gradients")
def check_ddp_gradients(ddp_gradients: Callable[..., Any]) -> str:
    """Exercise 9.3: ``.grad`` is the average of the ranks' gradients, each of its own block."""
    _callable(ddp_gradients, "ddp_gradients")
    generator, facts = torch.Generator().manual_seed(93), []
    for dtype, world_size, n in ((torch.float32, 2, 10), (torch.float64, 3, 12)):
        model = _seeded(lambda dtype=dtype: _mlp().to(dtype), 93 + n)
        criterion = nn.CrossEntropyLoss(weight=torch.tensor(CLASS_WEIGHTS, dtype=dtype))
        x = torch.randn(n, 6, generator=generator, dtype=dtype)
        y = torch.randint(0, 3, (n,), generator=generator)
        m, params = n // world_size, list(model.parameters())
        kind = str(dtype).removeprefix("torch.")

        per_rank = _grads(model, criterion, x, y, [slice(r * m, (r + 1) * m) for r in range(world_size)])
        interleaved = _grads(model, criterion, x, y, [slice(r, None, world_size) for r in range(world_size)])
        (whole,) = _grads(model, criterion, x, y, [slice(None)])
        stale = [torch.randn(p.shape, generator=generator, dtype=dtype) for p in params]
        before = [p.detach().clone() for p in params]
        for p, s in zip(params, stale, strict=True):
            p.grad = s.clone()  # the previous step's gradient, still there
        ddp_gradients(model, criterion, x.clone(), y.clone(), world_size)
        changed = not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
        expect(not changed, "ddp_gradients changed the parameters: it should only set their .grad")
        atol, rtol = (1e-6, 1e-5) if dtype == torch.float32 else (1e-12, 1e-10)
        gap = 0.0
        for i, (name, p) in enumerate(model.named_parameters()):
            expect(p.grad is not None, f"{name}.grad is None: set every parameter's .grad")
            grads = torch.stack([g[i] for g in per_rank])
            running = grads.cumsum(0)  # what .grad holds after each rank's backward, never zeroed
            mistakes = [
                (WHOLE_BATCH, whole[i]),
                (WHOLE_BATCH, stale[i] + whole[i]),
                (INTERLEAVED, sum(g[i] for g in interleaved) / world_size),
                (SUMMED, grads.sum(0)),
                (NOT_ZEROED, running.mean(0)),
                (STALE, (stale[i] + grads.sum(0)) / world_size),
                (STALE_NOT_ZEROED, stale[i] + running.mean(0)),
            ]
            what = f"{name}.grad ({kind}, {world_size} ranks of {m} examples)"
            mistaken = first_match(p.grad, mistakes, atol=atol)
            gap = max(
                gap, expect_tensor(p.grad, grads.mean(0), what, atol=atol, rtol=rtol, mistakes=mistaken)
            )
        facts.append(f"{within(gap)} in {kind} with {world_size} ranks")
    return f"sets every .grad to the average of the ranks' gradients ({'; '.join(facts)})"

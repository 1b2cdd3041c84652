"""Checkers for chapter 8's exercises (tips and tricks, each one measured).

Each checker runs the reader's code on inputs of its own (a seeded ``torch.Generator``,
tiny sizes, the CPU) against torch itself: ``FlopCounterMode`` counts the operations of
a forward pass (8.1), a ``DataLoader`` iterated from a restored generator state gives
the batches a resumed epoch must see (8.2), section 8.3's rule for a verdict beyond the
seeds' spread judges two schedules (8.3), and
autograd decides which uses of an inference tensor can go backward (8.4). Introduced
with chapter 8's exercises.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from helpers.exercises import Mismatch, checker, expect, expect_tensor, require_attempt

__all__ = [
    "check_compare",
    "check_flops_per_sample",
    "check_inference_tensors",
    "check_remaining_batches",
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


VERDICTS = ("better", "worse", "tie")
# pairs of arms (a, b): each arm's final losses, one per seed
CASES: tuple[tuple[tuple[float, float], tuple[float, float]], ...] = (
    ((0.30, 0.32), (0.50, 0.52)),  # a clearly lower: better
    ((0.50, 0.52), (0.30, 0.32)),  # a clearly higher: worse
    ((0.40, 0.42), (0.41, 0.43)),  # means differ by less than either spread
    ((0.20, 0.60), (0.50, 0.52)),  # within a's wide spread, beyond b's narrow one
    ((0.30, 0.90), (0.50, 0.52)),  # seed 0 alone says better, the means worse
    ((0.90, 0.80), (0.10, 0.20)),  # beyond both spreads, a higher
    ((0.30, 0.40), (0.46, 0.54)),  # beyond the larger spread, within their sum
    ((0.30, 0.50), (0.54, 0.56)),  # within the larger spread, beyond their mean
)


def reference_verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Section 8.3's rule: lower mean loss wins only beyond the larger seed spread."""
    gap = (sum(b) - sum(a)) / 2
    noise = max(abs(a[0] - a[1]), abs(b[0] - b[1]))
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


def _means_only(a: tuple[float, float], b: tuple[float, float]) -> str:
    return "better" if sum(a) < sum(b) else "worse" if sum(a) > sum(b) else "tie"


def _smaller_spread(a: tuple[float, float], b: tuple[float, float]) -> str:
    gap, noise = (sum(b) - sum(a)) / 2, min(abs(a[0] - a[1]), abs(b[0] - b[1]))
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


def _summed_spreads(a: tuple[float, float], b: tuple[float, float]) -> str:
    gap, noise = (sum(b) - sum(a)) / 2, abs(a[0] - a[1]) + abs(b[0] - b[1])
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


def _mean_spread(a: tuple[float, float], b: tuple[float, float]) -> str:
    gap, noise = (sum(b) - sum(a)) / 2, (abs(a[0] - a[1]) + abs(b[0] - b[1])) / 2
    return "better" if gap > noise else "worse" if -gap > noise else "tie"


def _seed_zero(a: tuple[float, float], b: tuple[float, float]) -> str:
    return _means_only((a[0], a[0]), (b[0], b[0]))


def _flipped(a: tuple[float, float], b: tuple[float, float]) -> str:
    return reference_verdict(b, a)


VERDICT_MISTAKES: dict[str, Callable[..., str]] = {
    "a gap between the means smaller than the seeds' spread is noise: call it a tie": _means_only,
    "compare the gap with the LARGER of the two arms' seed spreads, not the smaller": _smaller_spread,
    "compare the gap with the larger of the two spreads, not with their sum": _summed_spreads,
    "compare the gap with the larger of the two spreads, not with their mean": _mean_spread,
    "use the mean over both seeds, not seed 0 alone": _seed_zero,
    "these are losses: the arm with the LOWER loss is the better one": _flipped,
}


@checker("8.3", "compare")
def check_compare(compare: Callable[..., Any], grid: dict[Any, Any]) -> str:
    """Eight made-up pairs of arms, then every pair of combinations in ``grid``."""
    _expect_function(compare, "compare")
    expect(
        isinstance(grid, dict) and len(grid) >= 2,
        f"grid should be section 8.3's dict of final losses, got {type(grid).__name__}",
    )
    pairs = list(CASES)
    for first, second in itertools.pairwise(grid):
        pairs.append((tuple(map(float, grid[first])), tuple(map(float, grid[second]))))
    got = []
    for a, b in pairs:
        answer = compare(list(a), list(b))
        expect(
            answer in VERDICTS,
            f"compare should return one of {', '.join(map(repr, VERDICTS))}, got {answer!r}",
        )
        got.append(answer)
    want = [reference_verdict(a, b) for a, b in pairs]
    wrong = [(a, b, g, w) for (a, b), g, w in zip(pairs, got, want, strict=True) if g != w]
    if wrong:
        a, b, answer, right = wrong[0]
        message = f"compare({list(a)}, {list(b)}) is {answer!r}, expected {right!r}"
        for hint, mistake in VERDICT_MISTAKES.items():
            # each known mistake answers the made-up pairs otherwise than the rule
            if got[: len(CASES)] == [mistake(*pair) for pair in CASES]:
                raise Mismatch(message, hint)
        raise Mismatch(message)
    ties = want.count("tie")
    return (
        f"agrees with section 8.3's rule on {len(CASES)} made-up pairs and the "
        f"{len(pairs) - len(CASES)} neighbouring pairs of the grid ({ties} ties in all)"
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

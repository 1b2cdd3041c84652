"""Checker for the learning-rate sweep of chapter 3's exercise 3.3.

:func:`check_rate_sweep` hands the reader's ``rate_sweep`` a network builder, a training
function and a comparison function of its own, all three recording how they are called,
and checks that every rate trained a fresh network from the same seeded initial weights
and was compared with the baseline rate the right way round. Nothing is trained, so the
check takes milliseconds. It runs inside ``torch.random.fork_rng``, so it leaves the
chapter's global random state as it was. Re-exported by :mod:`helpers.exercises.ch03`;
introduced with chapter 3's exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect
from helpers.exercises.ch03_models import keep_random_state

__all__ = ["check_rate_sweep"]

SEED_EACH = (
    "call torch.manual_seed(seed) right before each make_net(), inside the loop: then every "
    "rate starts from the same initial weights"
)
SEED_ONCE = (
    "only the first rate started from the seeded weights: seed once per rate, right before "
    "make_net(), not once before the loop"
)
FRESH_NET = (
    "build a fresh network for every rate (make_net() inside the loop): training the same one "
    "again continues from the previous rate's weights"
)
ORDER = (
    "compare(predictions at the rate, predictions at the baseline, true): the rate under test "
    "comes first, so that a positive difference means it beats the baseline"
)


class _Comparison(NamedTuple):
    difference: float
    only_a: int
    only_b: int


def _compare(pred_a: torch.Tensor, pred_b: torch.Tensor, true: torch.Tensor) -> _Comparison:
    right_a, right_b = pred_a == true, pred_b == true
    return _Comparison(
        (right_a.double().mean() - right_b.double().mean()).item(),
        int((right_a & ~right_b).sum()),
        int((~right_a & right_b).sum()),
    )


def _weights(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@checker("3.3", "rate_sweep")
@keep_random_state
def check_rate_sweep(rate_sweep: Callable[..., Any]) -> str:
    """Exercise 3.3 (a): one fresh, identically seeded network per rate, compared with the baseline."""
    expect(callable(rate_sweep), "rate_sweep should be a function")
    rates, baseline, seed = (0.001, 0.003, 0.01), 0.003, 13
    generator = torch.Generator().manual_seed(36)
    true = torch.randint(0, 10, (60,), generator=generator)
    # each rate gets its own predictions, right on a different 60 to 85 % of the images
    outputs = {}
    for index, rate in enumerate(rates):
        right = torch.rand(60, generator=generator) < 0.6 + 0.1 * index
        predictions = torch.where(right, true, (true + 1) % 10)
        outputs[rate] = (1.0 - 0.1 * index, predictions)
    torch.manual_seed(seed)
    seeded = _weights(nn.Linear(5, 3))
    built: list[nn.Module] = []
    trained: list[tuple[float, nn.Module, torch.Tensor]] = []

    def make_net() -> nn.Module:
        built.append(nn.Linear(5, 3))
        return built[-1]

    def run(net: nn.Module, rate: float) -> tuple[float, torch.Tensor]:
        expect(rate in outputs, f"run was called with the rate {rate!r}, which is not one of {rates}")
        trained.append((rate, net, _weights(net)))
        with torch.no_grad():  # "training" moves the weights, as a real run would
            for parameter in net.parameters():
                parameter.add_(1.0)
        return outputs[rate]

    torch.manual_seed(seed + 1000)  # as the chapter's earlier cells would leave it
    got = rate_sweep(make_net, run, rates, baseline=baseline, seed=seed, true=true, compare=_compare)
    expect(
        isinstance(got, tuple) and len(got) == 2 and all(isinstance(part, dict) for part in got),
        f"rate_sweep should return two dicts (the runs and the comparisons), got {type(got).__name__}",
    )
    runs, comparisons = got
    done = [rate for rate, _, _ in trained]
    expect(
        sorted(done) == sorted(rates),
        f"run was called for the rates {done}, expected each of {list(rates)} once",
    )
    nets = [net for _, net, _ in trained]
    expect(len({id(net) for net in nets}) == len(nets), "the rates shared one network", FRESH_NET)
    seeded_starts = [torch.equal(start, seeded) for _, _, start in trained]
    if not all(seeded_starts):
        hint = SEED_ONCE if seeded_starts[0] and not any(seeded_starts[1:]) else SEED_EACH
        wrong = [rate for (rate, _, _), same in zip(trained, seeded_starts, strict=True) if not same]
        raise Mismatch(f"the networks for the rates {wrong} did not start from the seeded weights", hint)
    expect(
        set(runs) == set(rates),
        f"the runs dict has the keys {sorted(runs)}, expected the rates {list(rates)}",
    )
    for rate in rates:
        loss, predictions = outputs[rate]
        value = runs[rate]
        expect(
            isinstance(value, tuple)
            and len(value) == 2
            and value[0] == loss
            and isinstance(value[1], torch.Tensor)
            and torch.equal(value[1], predictions),
            f"runs[{rate}] is not what run(net, {rate}) returned",
        )
    others = [rate for rate in rates if rate != baseline]
    expect(
        set(comparisons) == set(others),
        f"the comparisons dict has the keys {sorted(comparisons)}, expected every rate but the "
        f"baseline: {others}",
    )
    for rate in others:
        want = _compare(outputs[rate][1], outputs[baseline][1], true)
        swapped = _compare(outputs[baseline][1], outputs[rate][1], true)
        result = comparisons[rate]
        fields = tuple(getattr(result, name, None) for name in _Comparison._fields)
        if fields != tuple(want):
            raise Mismatch(
                f"comparisons[{rate}] has (difference, only_a, only_b) = {fields}, expected {tuple(want)}",
                ORDER if fields == tuple(swapped) else None,
            )
    return (
        f"trains a fresh network per rate from the weights torch.manual_seed({seed}) gives, and "
        f"compares each of {others} with the baseline {baseline} on the same {len(true)} images"
    )

"""Exercise 5.2's checkers (layer-wise rates, gradual unfreezing); see :mod:`helpers.exercises.ch05`.

The reader's ``unfreeze_for_epoch(model, epoch, every)`` is run epoch by epoch on the
narrow test model (:class:`~helpers.exercises.ch05_models.SmallNet`, widths 4, 6, 8), and
once on a fresh model at a late epoch, and the blocks' ``requires_grad`` flags and the returned frozen
blocks are compared with ULMFiT's schedule: the head trains from epoch 1, and every
``every`` epochs one more block, from the top down, joins it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect
from helpers.exercises.ch05_models import BLOCKS, SmallNet, check_function

TOP_DOWN = ("layer3", "layer2", "layer1")  # the order in which the blocks join


def schedule(epoch: int, every: int, *, order: tuple[str, ...] = TOP_DOWN, shift: int = 1) -> set[str]:
    """The blocks trainable in ``epoch`` (1-based): the first ``(epoch - shift) // every`` of ``order``."""
    return set(order[: max(0, min(len(order), (epoch - shift) // every))])


def _trainable(model: nn.Module, name: str) -> bool:
    flags = {p.requires_grad for p in model.get_submodule(name).parameters()}
    expect(
        len(flags) == 1,
        f"{name} is half frozen: some of its parameters require grad and some do not",
        "set requires_grad on the whole block: block.requires_grad_(flag)",
    )
    return flags.pop()


_HINTS = {
    "off by one": (
        {"shift": 0},
        "count the head-only epochs: with every=2, epochs 1 and 2 train the head alone and "
        "layer3 joins in epoch 3, i.e. from epoch 1 + every",
    ),
    "bottom up": (
        {"order": BLOCKS},
        "unfreeze from the top down: layer3 (next to the head) first, layer1 (next to the input) last",
    ),
}


def _hint(got: set[str], epoch: int, every: int) -> str | None:
    return next((hint for options, hint in _HINTS.values() if got == schedule(epoch, every, **options)), None)


@checker("5.2", "unfreeze_for_epoch")
def check_unfreeze_for_epoch(unfreeze_for_epoch: Callable) -> str:
    """Exercise 5.2: ``unfreeze_for_epoch(model, epoch, every)`` against ULMFiT's schedule."""
    check_function(unfreeze_for_epoch, "unfreeze_for_epoch")
    model = SmallNet(10, torch.Generator().manual_seed(505))  # everything trainable
    runs = [(model, epoch, 2) for epoch in range(1, 10)]  # one model, epoch after epoch
    runs.append((SmallNet(10, torch.Generator().manual_seed(506)), 4, 1))  # a fresh model, late
    for net, epoch, every in runs:
        frozen = unfreeze_for_epoch(net, epoch, every)
        where = f"epoch {epoch} with every={every}"
        expect(
            _trainable(net, "fc"),
            f"in {where} the head fc is frozen",
            "the head trains from the first epoch: only layer1 to layer3 start frozen",
        )
        got = {name for name in BLOCKS if _trainable(net, name)}
        want = schedule(epoch, every)
        if got != want:
            shown = ", ".join(sorted(got)) or "none"
            expected = ", ".join(sorted(want)) or "none"
            hint = _hint(got, epoch, every)
            if hint is None and epoch == 1 and got == set(BLOCKS):
                hint = (
                    "a fresh model's parameters all require grad: freeze the blocks that have "
                    "not joined yet, not only unfreeze the ones that have"
                )
            raise Mismatch(f"in {where} the trainable blocks are {shown}, expected {expected}", hint)
        expect(
            isinstance(frozen, (list, tuple)) and all(isinstance(m, nn.Module) for m in frozen),
            f"unfreeze_for_epoch returned a {type(frozen).__name__}; expected a list of the "
            "frozen blocks (modules)",
        )
        returned = {name for name in BLOCKS if any(m is net.get_submodule(name) for m in frozen)}
        frozen_names = set(BLOCKS) - want
        if returned != frozen_names or len(frozen) != len(frozen_names):
            shown = ", ".join(sorted(returned)) or "none"
            expected = ", ".join(sorted(frozen_names)) or "none"
            raise Mismatch(
                f"in {where} it returned the blocks {shown} (and {len(frozen)} in all), "
                f"expected the frozen {expected}",
                "return the blocks that are still frozen (train_phases keeps them in eval mode), "
                "not the trainable ones"
                if returned == want
                else None,
            )
    return (
        "set the blocks of a narrow GlyphNet (widths 4, 6, 8) epoch by epoch as ULMFiT does (every=2: the "
        "head alone in epochs 1-2, layer3 from 3, layer2 from 5, layer1 from 7) and returned "
        "the frozen ones, also on a fresh model at a late epoch"
    )


# ---- Exercise 5.2, the rates ---------------------------------------------------------------

_RATE_HINTS = {
    "reversed": (
        lambda k: 4 - k if k else 0,
        "the rates shrink towards the input: layer3, next to the head, gets lr / ratio and "
        "layer1, next to the input, lr / ratio**3",
    ),
    "off by one": (
        lambda k: max(k - 1, 0),
        "the head is at lr and layer3, one block below it, already at lr / ratio",
    ),
    "multiplied": (
        lambda k: -k,
        "divide by ratio per block towards the input: the generic lower blocks learn slower",
    ),
}


def _rate_hint(got: dict[str, float], lr: float, ratio: float) -> str | None:
    for exponent, hint in _RATE_HINTS.values():
        want = {name: lr / ratio ** exponent(k) for k, name in enumerate(("fc", *TOP_DOWN))}
        if all(math.isclose(got[name], want[name]) for name in want):
            return hint
    return None


@checker("5.2", "layerwise_groups")
def check_layerwise_groups(layerwise_groups: Callable) -> str:
    """Exercise 5.2: ``layerwise_groups(model, lr, ratio)``, one AdamW group per block."""
    check_function(layerwise_groups, "layerwise_groups")
    model = SmallNet(10, torch.Generator().manual_seed(507))
    lr, ratio, default = 0.1, 3.0, 99.0  # a group without its own rate gets `default`
    groups = layerwise_groups(model, lr, ratio)
    expect(
        isinstance(groups, (list, tuple)) and all(isinstance(g, dict) and "params" in g for g in groups),
        f"layerwise_groups returned a {type(groups).__name__}; expected a list of parameter "
        "groups, dicts with 'params' and 'lr'",
    )
    try:
        optimizer = torch.optim.AdamW(groups, lr=default)
    except ValueError as error:
        raise Mismatch(
            f"AdamW refused the groups: {error}",
            "give each group one block's parameters (model.get_submodule(name).parameters()), "
            "not all of the model's"
            if "more than one" in str(error)
            else None,
        ) from None
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    missing = [names[i] for i in names if i not in rate_of]
    expect(
        not missing,
        f"{len(missing)} of the model's {len(names)} parameters are in no group, e.g. {missing[:3]}",
        "each block's batch norm has a weight and a bias too: pass the whole block's "
        "parameters, not only its convolution's"
        if all(".1." in name for name in missing)
        else None,
    )
    expect(
        len(rate_of) == len(names),
        f"the groups hold {len(rate_of) - len(names)} tensors that are not the model's parameters",
    )
    got: dict[str, float] = {}
    for name in ("fc", *TOP_DOWN):
        rates = {rate_of[id(p)] for p in model.get_submodule(name).parameters()}
        expect(len(rates) == 1, f"{name}'s parameters learn at several rates: {sorted(rates)}")
        got[name] = rates.pop()
    expect(
        default not in got.values(),
        "a group has no 'lr' of its own, so it learns at the optimizer's default",
        "give every group its own rate: {'params': ..., 'lr': lr / ratio**k}",
    )
    want = {name: lr / ratio**k for k, name in enumerate(("fc", *TOP_DOWN))}
    if not all(math.isclose(got[name], want[name]) for name in want):
        shown = ", ".join(f"{name} {got[name]:.4g}" for name in want)
        expected = ", ".join(f"{name} {want[name]:.4g}" for name in want)
        raise Mismatch(
            f"with lr={lr:g} and ratio={ratio:g} the rates are {shown}; expected {expected}",
            _rate_hint(got, lr, ratio),
        )
    return (
        f"every parameter of a narrow GlyphNet (widths 4, 6, 8) in one group, at lr={lr:g} for the head "
        f"and {lr / ratio:.4g}, {lr / ratio**2:.4g}, {lr / ratio**3:.4g} for layer3, layer2, "
        f"layer1 (ratio={ratio:g})"
    )

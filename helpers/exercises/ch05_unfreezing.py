"""Exercise 5.2's checker (gradual unfreezing); see :mod:`helpers.exercises.ch05`.

The reader's ``unfreeze_for_epoch(model, epoch, every)`` is run epoch by epoch on the
quarter-width test model (:class:`~helpers.exercises.ch05_models.SmallNet`), and once on a
fresh model at a late epoch, and the blocks' ``requires_grad`` flags and the returned frozen
blocks are compared with ULMFiT's schedule: the head trains from epoch 1, and every
``every`` epochs one more block, from the top down, joins it.
"""

from __future__ import annotations

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
        "set the blocks of a quarter-width GlyphNet epoch by epoch as ULMFiT does (every=2: the "
        "head alone in epochs 1-2, layer3 from 3, layer2 from 5, layer1 from 7) and returned "
        "the frozen ones, also on a fresh model at a late epoch"
    )

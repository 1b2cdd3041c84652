"""Checkers for chapter 8's exercises (tips and tricks, measured where they run).

Each checker runs the reader's code on inputs of its own (a seeded ``torch.Generator``,
tiny sizes, the CPU) against torch itself or against made-up data with a known answer:
a stand-in optimizer whose step takes a known time checks the step's timing, and AdamW on
two copies of a small model checks the gap between two updates (8.1, in
:mod:`helpers.exercises.ch08_optim`), a ``DataLoader`` iterated from a restored
generator state gives the batches a resumed epoch must see (8.2), an optimizer stepped by
the reader's scheduler gives the rates a warm-up must produce (8.3, in
:mod:`helpers.exercises.ch08_schedules`), and autograd itself decides which uses of an
inference tensor fail and what it saves for the backward pass (8.4, in
:mod:`helpers.exercises.ch08_autograd`); those three are re-exported here.
Introduced with chapter 8's exercises.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from helpers.exercises import Mismatch, checker, expect, expect_tensor
from helpers.exercises.ch08_autograd import check_inference_tensors
from helpers.exercises.ch08_optim import check_step_seconds, check_update_gap
from helpers.exercises.ch08_schedules import check_warmup

__all__ = [
    "check_inference_tensors",
    "check_mid_epoch_resume",
    "check_step_seconds",
    "check_update_gap",
    "check_warmup",
]


def _expect_function(value: Any, name: str) -> None:
    expect(callable(value), f"{name} should be a function, got {type(value).__name__}")


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


def _state_at_save(kind: str, start: torch.Tensor) -> torch.Tensor:
    """The generator's state after an epoch begun from ``start`` fetched its first batch."""
    generator = torch.Generator()
    generator.set_state(start)
    next(iter(_loader(kind, generator)))  # iter draws the base seed, the first batch the order
    return generator.get_state()


def _round_trip(checkpoint: Any) -> dict:
    """``checkpoint`` saved with ``torch.save`` and read back with ``weights_only=True``."""
    expect(
        isinstance(checkpoint, dict),
        f"checkpoint_mid_epoch should return the checkpoint's dict, got {type(checkpoint).__name__}",
    )
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    try:
        return torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as error:
        raise Mismatch(
            "torch.load(..., weights_only=True) cannot read the checkpoint back: keep tensors, "
            f"numbers and strings in it ({str(error).splitlines()[0]})"
        ) from None


@checker("8.2", "checkpoint_mid_epoch` and `remaining_batches")
def check_mid_epoch_resume(
    checkpoint_mid_epoch: Callable[..., Any], remaining_batches: Callable[..., Iterable]
) -> str:
    """Checkpoint the third epoch after 3 of its 8 batches, resume it from a reseeded generator."""
    _expect_function(checkpoint_mid_epoch, "checkpoint_mid_epoch")
    _expect_function(remaining_batches, "remaining_batches")
    steps_done = 3
    for kind in ("batch sampler", "shuffle"):
        generator = torch.Generator().manual_seed(802)
        loader = _loader(kind, generator)
        for _ in range(2):  # two epochs, so the generator is far from its seed
            list(loader)
        start = generator.get_state()  # the state the third epoch starts from
        epoch = _epoch(kind, start, 0)  # the uninterrupted epoch
        generator.set_state(start)
        list(loader)
        after = _stacked(list(loader), "the reference")  # and the epoch after it
        generator.set_state(start)
        checkpoint = _round_trip(checkpoint_mid_epoch(loader, generator, steps_done))
        generator.manual_seed(12345)  # a new process: the generator starts elsewhere
        fresh = generator.get_state()
        want = epoch[steps_done:]
        mistakes = {
            "the checkpoint kept the generator's state at the moment of saving, after the epoch had "
            "drawn its order: keep the state from before the epoch began (before iter(loader))": _epoch(
                kind, _state_at_save(kind, start), steps_done
            ),
            "that is the order of the generator as a new process has it: restore the checkpoint's "
            "state into shuffle_rng first": _epoch(kind, fresh, steps_done),
            "that skips one batch too many: batches 0 to steps_done - 1 are done, and batch "
            "steps_done comes next": _epoch(kind, start, steps_done + 1),
            "that repeats the last batch done: skip steps_done batches, not steps_done - 1": _epoch(
                kind, start, steps_done - 1
            ),
            "those are all the epoch's batches: skip the steps_done that were trained on": epoch,
            "iter(loader) draws from the generator: restore the state before calling it": _epoch(
                kind, start, steps_done, iter_from=fresh
            ),
        }
        got = _stacked(remaining_batches(loader, generator, checkpoint), "remaining_batches")
        expect_tensor(got, want, f"the sample numbers of the remaining batches ({kind})", mistakes=mistakes)
        expect_tensor(
            _stacked(list(loader), "the loader"),
            after,
            f"the epoch after the resumed one ({kind})",
            mistakes={
                "the next epoch does not continue: restore into shuffle_rng itself, the generator "
                "the loader draws from": _epoch(kind, fresh, 0)
            },
        )
    return (
        f"the checkpoint resumes the last {len(want)} of 8 batches in the interrupted epoch's "
        "order, from a reseeded generator, and the next epoch continues as without the crash, "
        "with a batch sampler and with shuffle=True"
    )

"""Checkers for chapter 8's exercises (tips and tricks, each one measured).

Each checker runs the reader's code on inputs of its own (a seeded ``torch.Generator``,
tiny sizes, the CPU) against torch itself: a stand-in model whose operations
(``FlopCounterMode``) and time per call are known checks a throughput measurement (8.1;
the width sweep's interleaved rounds and cache verdict are checked in
:mod:`helpers.exercises.ch08_cache`),
a ``DataLoader`` iterated from a restored generator state gives the batches a resumed
epoch must see (8.2), an optimizer stepped by the reader's scheduler gives the rates a
warm-up must produce (8.3, in :mod:`helpers.exercises.ch08_schedules`), and autograd
itself decides which uses of an inference tensor fail and what it saves for the backward
pass (8.4, in :mod:`helpers.exercises.ch08_autograd`); all three are re-exported here.
Introduced with chapter 8's exercises.
"""

from __future__ import annotations

import io
import math
import numbers
import pickle
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from helpers.exercises import Mismatch, checker, expect, expect_tensor
from helpers.exercises.ch08_autograd import check_inference_tensors
from helpers.exercises.ch08_cache import check_cache_sweep
from helpers.exercises.ch08_schedules import check_warmup

__all__ = [
    "check_cache_sweep",
    "check_gflops",
    "check_inference_tensors",
    "check_mid_epoch_resume",
    "check_warmup",
]


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


def _counted_flops(layer: nn.Module, batch: int) -> int:
    """FlopCounterMode's count for ``layer`` on a batch (on the meta device: nothing runs)."""
    with FlopCounterMode(display=False) as counter:
        layer.to("meta")(torch.zeros(batch, layer.in_features, device="meta"))
    return counter.get_total_flops()


CALL_S = 0.01  # the stand-in's time per call, a sleep: a known answer
FIRST_CALLS_S = 0.25  # its first two calls are slow, as a first call often is
COLD_CALLS = 2
# A busy machine's sleeps overshoot, so the stand-in clocks each of its calls. A right
# answer times warm calls only, so it implies no more per call than the slowest stretch of
# WINDOW consecutive warm calls took on average, give or take this share (reading the
# clock, Timer's own overhead). One slow first call among 100 timed ones adds about 24 %
# to a 10 ms call, so the share must stay well below that.
CALL_TOLERANCE = 0.1
WINDOW = 10
STANDIN_BATCH = 64


class _Standin(nn.Module):
    """A linear layer 16 -> 4 that also sleeps, so that its time per call is known.

    It records each call's thread count and duration, so the checker knows how long the
    warm calls really took on this machine, overshoot included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 4)
        self.threads: list[int] = []  # torch's thread count at each call
        self.seconds: list[float] = []  # each call's duration

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        self.threads.append(torch.get_num_threads())
        time.sleep(FIRST_CALLS_S if len(self.threads) <= COLD_CALLS else CALL_S)
        out = self.linear(x)
        self.seconds.append(time.perf_counter() - start)
        return out


# how far off the usual mistakes put the answer, as a factor of the right one
THROUGHPUT_MISTAKES = {
    "that is in FLOP/s: divide by 1e9 for GFLOP/s": 1e9,
    "that is in MFLOP/s, or the time is in milliseconds: divide operations by seconds, then by 1e9": 1e3,
    "FlopCounterMode counted the whole batch's operations: do not divide them by the batch size": (
        1 / STANDIN_BATCH
    ),
    "FlopCounterMode's count is already the whole batch's: do not multiply by the batch size": (
        STANDIN_BATCH
    ),
}


@checker("8.1", "gflops")
def check_gflops(gflops: Callable[..., Any]) -> str:
    """The answer for a stand-in model whose operations and time per call are known."""
    _expect_function(gflops, "gflops")
    net = _Standin()
    x = torch.randn(STANDIN_BATCH, 16, generator=torch.Generator().manual_seed(801))
    ops = _counted_flops(nn.Linear(16, 4), STANDIN_BATCH)  # 2 x 64 x 16 x 4
    threads = torch.get_num_threads()
    # not 1, so that a measurement on one thread is told apart from one left at the default
    torch.set_num_threads(3)
    try:
        answer = _number(gflops(net, x), "gflops(net, x)")
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    expect(answer > 0, f"gflops(net, x) is {answer:.3g}, not a positive throughput")
    warm = sorted(net.seconds[COLD_CALLS:])  # what the warm calls took, overshoot included
    typical = warm[len(warm) // 2] if warm else CALL_S
    right = ops / typical / 1e9
    per_call = ops / (answer * 1e9)  # the seconds per call the answer implies
    # no answer can beat the sleep; one that times warm calls only is at most the mean of
    # the slowest WINDOW consecutive warm calls (all of them, if fewer)
    calls = net.seconds[COLD_CALLS:]
    width = max(1, min(WINDOW, len(calls)))
    slowest = max(
        (sum(calls[i : i + width]) / width for i in range(len(calls) - width + 1)),
        default=CALL_S,  # no warm call at all
    )
    ceiling = slowest * (1 + CALL_TOLERANCE)
    if not CALL_S * 0.97 <= per_call <= ceiling:
        message = (
            f"gflops(net, x) is {answer:.3g} for a stand-in model of {ops:,} operations per call "
            f"that sleeps {CALL_S * 1e3:.0f} ms a call after its first {COLD_CALLS} "
            f"({FIRST_CALLS_S * 1e3:.0f} ms each): expected about {right:.3g}"
        )
        for hint, factor in THROUGHPUT_MISTAKES.items():
            if abs(math.log(answer / right / factor)) < math.log(2):
                raise Mismatch(message, hint)
        if per_call > ceiling:
            raise Mismatch(
                message + f"; your answer implies {per_call * 1e3:.1f} ms per call, but no "
                f"{width} consecutive calls after the first {COLD_CALLS} took more than "
                f"{slowest * 1e3:.1f} ms on average, so the timed calls included a slow first one",
                "the first calls of a model are often slow (compiling, allocating): time only "
                "after a warm-up, as Timer.blocked_autorange does",
            )
        raise Mismatch(message)
    timed_on_one = net.threads.count(1)
    expect(
        timed_on_one > len(net.threads) / 2,
        f"most calls of net ran with {max(set(net.threads), key=net.threads.count)} threads, not one",
        "time on one thread: Timer(..., num_threads=1) sets it for the measurement",
    )
    expect(
        threads_after == 3,
        f"gflops left torch with {threads_after} threads; it had 3 before",
        "the thread count is global: put it back after timing (Timer's num_threads does so itself)",
    )
    return (
        f"{answer:.3g} GFLOP/s for a stand-in of {ops:,} operations that sleeps "
        f"{CALL_S * 1e3:.0f} ms per call; your answer implies {per_call * 1e3:.2f} ms per call, "
        f"and its warm calls took {typical * 1e3:.2f} ms (median, sleep overshoot included; "
        f"the slowest {width} in a row {slowest * 1e3:.2f} ms on average): timed on one thread, "
        "and within 10 % of what warm calls alone can take"
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

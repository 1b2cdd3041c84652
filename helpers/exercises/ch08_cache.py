"""Checkers for chapter 8's first exercise: a GFLOP/s measurement, a width sweep in
interleaved rounds, and its verdict.

The reader's ``gflops`` is run on a stand-in model of one known matrix product whose calls
record their own duration and thread count (its first call is slow, like a cold one), so
the checker knows the operation count and the time a warm one-thread call takes.

The reader's ``width_rounds`` is run with a stand-in measurement that records which model
it was called on and returns readings the checker chose, so the order of the calls and the
readings kept can both be checked. The reader designs the rule of ``cache_verdict``; it is
run on made-up rounds whose verdict any sound rule agrees on (a clear fall, a steady flat
sweep, a fall one busy round explains, ...), each set built so that one plausible slip
gives another verdict. Introduced with chapter 8's exercises.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from helpers.exercises import Mismatch, checker, expect

__all__ = ["check_cache_sweep", "check_gflops"]

VERDICTS = ("fell", "no dip", "undecided")
MIB = 2**20


class _Net:
    """A stand-in model: only its width matters to the stand-in measurement."""

    def __init__(self, hidden: int) -> None:
        self.hidden = hidden

    def __repr__(self) -> str:
        return f"model(hidden={self.hidden})"


NARROWEST = "compare the widths beyond the cache with the best width inside it, not the narrowest"
EVERY_ROUND = (
    "one slow round of the best width inside (a busy spell) could explain this fall: "
    "compare every round of one width with every round of the other, not means or bests"
)
NOISY = (
    "one width's rounds disagree by far more than the fall you are looking for, so a dip "
    "could hide in them: say 'undecided'"
)
QUIET = (
    "every width's rounds agree within a few % and no width beyond the cache is clearly "
    "below the best inside (allow the noise, as the chapter's 10 % does): that is 'no dip'"
)
BOUNDARY = (
    "a float32 matrix of h × h takes 4 h² bytes, and one exactly the cache's size is not "
    "inside it: inside means 4 h² < L2, beyond means 4 h² > L2"
)
SOME = (
    "'fell' needs every width beyond the cache to fall; when only some fall, the cache "
    "does not explain it: 'undecided'"
)

# each set of rounds, the L2 size it is judged against, the verdict any sound rule gives,
# and for each wrong verdict the hint for the slip that gives it
CASES: list[tuple[dict[int, list[float]], int, str, dict[str, str]]] = [
    (  # a clear fall below the best width inside; the narrowest inside is slower still
        {
            256: [10.0, 10.5, 11.0],
            512: [20.0, 21.0, 22.0],
            1024: [12.0, 12.5, 13.0],
            2048: [11.0, 11.0, 12.0],
        },
        2 * MIB,
        "fell",
        {"no dip": NARROWEST},
    ),
    (  # the best reading inside is far above, but one of its rounds is not
        {
            256: [10.0, 10.0, 10.5],
            512: [20.0, 20.0, 12.0],
            1024: [13.0, 13.0, 13.0],
            2048: [12.5, 13.0, 13.0],
        },
        2 * MIB,
        "undecided",
        {"fell": EVERY_ROUND, "no dip": NOISY},
    ),
    (  # nothing fell, but one round of one width is half its others
        {
            256: [20.0, 20.5, 21.0],
            512: [20.0, 21.5, 20.5],
            1024: [10.0, 19.6, 19.0],
            2048: [19.0, 19.5, 20.0],
        },
        2 * MIB,
        "undecided",
        {"no dip": NOISY},
    ),
    (  # quiet rounds, no fall
        {
            256: [20.0, 20.5, 21.0],
            512: [21.0, 21.5, 22.0],
            1024: [20.0, 20.5, 21.0],
            2048: [19.5, 20.0, 20.5],
        },
        2 * MIB,
        "no dip",
        {"undecided": QUIET},
    ),
    (  # width 512's matrix is exactly the cache's 1 MiB: neither inside nor beyond
        {
            256: [10.0, 10.0, 10.5],
            512: [30.0, 30.0, 31.0],
            1024: [12.0, 12.0, 12.5],
            2048: [11.5, 12.0, 12.0],
        },
        1 * MIB,
        "no dip",
        {"fell": BOUNDARY},
    ),
    (  # one width beyond fell, the other did not
        {
            256: [20.0, 20.5, 21.0],
            512: [21.0, 21.5, 22.0],
            1024: [14.0, 14.5, 15.0],
            2048: [20.0, 20.5, 21.0],
        },
        2 * MIB,
        "undecided",
        {"fell": SOME, "no dip": SOME},
    ),
]


def _check_rounds(width_rounds: Callable[..., Any], n_rounds: int) -> None:
    widths = (256, 512, 1024, 2048)
    models = {h: _Net(h) for h in widths}
    calls: list[int] = []

    def measure(net: Any) -> float:
        expect(isinstance(net, _Net), f"measure was called with {net!r}, not one of the models")
        calls.append(net.hidden)
        return float(100 + len(calls))  # each reading tells which call it came from

    result = width_rounds(measure, models, n_rounds)
    expect(isinstance(result, dict), f"width_rounds returned a {type(result).__name__}, not a dict")
    expect(
        sorted(result) == sorted(widths),
        f"width_rounds returned keys {sorted(result)}, not the widths {list(widths)}",
    )
    for h in widths:
        readings = result[h]
        expect(
            isinstance(readings, list | tuple),
            f"width {h} maps to {readings!r}, not a list of readings",
            "keep every round's reading: the verdict needs each round, not only the best",
        )
        expect(
            len(readings) == n_rounds,
            f"width {h} has {len(readings)} readings for {n_rounds} rounds",
            "call measure once per width in each round: n_rounds readings per width",
        )
    expect(
        len(calls) == n_rounds * len(widths),
        f"measure was called {len(calls)} times for {len(widths)} widths and {n_rounds} rounds",
    )
    for start in range(0, len(calls), len(widths)):
        expect(
            sorted(calls[start : start + len(widths)]) == sorted(widths),
            f"measure was called on widths {calls} in that order, so round "
            f"{start // len(widths) + 1} did not measure each width once",
            "interleave: each round measures every width once before the next round starts, "
            "so that a busy spell slows all widths, not one",
        )
    for h in widths:
        expected = [float(101 + i) for i, width in enumerate(calls) if width == h]
        got = [float(v) if isinstance(v, numbers.Real) else v for v in result[h]]
        expect(got == expected, f"width {h}'s readings are {got}, but measure returned {expected} for it")


@checker("8.1", "width_rounds` and `cache_verdict")
def check_cache_sweep(width_rounds: Callable[..., Any], cache_verdict: Callable[..., Any]) -> str:
    """Interleaved rounds on a recording stand-in, then the verdict on made-up rounds."""
    for value, name in ((width_rounds, "width_rounds"), (cache_verdict, "cache_verdict")):
        expect(callable(value), f"{name} should be a function, got {type(value).__name__}")
    for n_rounds in (3, 2):
        _check_rounds(width_rounds, n_rounds)
    for rounds, l2_bytes, right, hints in CASES:
        answer = cache_verdict({h: list(r) for h, r in rounds.items()}, l2_bytes)
        expect(answer in VERDICTS, f"cache_verdict returned {answer!r}, not one of {VERDICTS}")
        if answer != right:
            raise Mismatch(
                f"cache_verdict({rounds}, L2 = {l2_bytes / MIB:g} MiB) is {answer!r}, expected {right!r}",
                hints.get(answer),
            )
    return (
        "width_rounds interleaves the widths round by round and keeps every reading, and "
        f"cache_verdict gives the sound verdict on {len(CASES)} sets of rounds"
    )


# the stand-in for gflops: one (64 x 256) @ (256 x 256) product, 2 * 64 * 256 * 256
# operations (a multiply-add counts as two), a 5 ms sleep per call so that the time is
# the checker's, and a 0.2 s first call, as a cold call can be
PRODUCT = (64, 256, 256)
CALL_S = 0.005
FIRST_S = 0.2
ONE_THREAD = "time on one thread: benchmark.Timer(..., num_threads=1), so one core does all the work"
COUNT_TWICE = (
    "a multiply-add counts as two operations, and FlopCounterMode already counts it so: "
    "do not halve its total"
)
WARM_UP = "time warm calls: the first call can be slow, so warm up first (blocked_autorange does)"
SECONDS = "return the rate, operations / seconds / 1e9, not the seconds a call takes"
GIGA = "return GFLOP/s: operations / seconds / 1e9"


class _Timed(nn.Module):
    """One known matrix product; each call records its duration and the thread count."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(PRODUCT[2], PRODUCT[1], generator=generator))
        self.durations: list[float] = []
        self.threads: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        self.threads.append(torch.get_num_threads())
        time.sleep(CALL_S + (FIRST_S if not self.durations else 0.0))
        out = torch.mm(x, self.weight.t())
        self.durations.append(time.perf_counter() - start)
        return out


@checker("8.1", "gflops")
def check_gflops(gflops: Callable[..., Any]) -> str:
    """The reader's gflops on the stand-in, against its known count and warm call time."""
    expect(callable(gflops), f"gflops should be a function, got {type(gflops).__name__}")
    net = _Timed()
    x = torch.randn(PRODUCT[0], PRODUCT[1], generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))  # so that a call on the default threads shows
    try:
        answer = gflops(net, x)
    finally:
        torch.set_num_threads(threads)
    expect(
        isinstance(answer, numbers.Real) and not isinstance(answer, bool) and answer > 0,
        f"gflops returned {answer!r}, not a positive number",
    )
    answer = float(answer)
    expect(len(net.durations) >= 2, f"gflops called the model {len(net.durations)} time(s)")
    many = sum(n > 1 for n in net.threads)
    if many * 2 >= len(net.threads):
        raise Mismatch(f"{many} of the model's {len(net.threads)} calls ran on several threads", ONE_THREAD)
    operations = 2 * PRODUCT[0] * PRODUCT[1] * PRODUCT[2]
    warm_s = sorted(net.durations)[len(net.durations) // 2]
    expected = operations / warm_s / 1e9
    ratio = answer / expected
    if 0.75 <= ratio <= 1.3:
        return (
            f"gflops gave {answer:.2f} GFLOP/s on a stand-in of {operations:,} operations whose "
            f"warm one-thread call took {warm_s * 1e3:.1f} ms ({expected:.2f} GFLOP/s)"
        )
    message = f"gflops gave {answer:.3g} on a stand-in whose warm calls ran at {expected:.2f} GFLOP/s"
    if abs(math.log(answer / warm_s)) < math.log(2):
        raise Mismatch(message, SECONDS)
    if ratio > 1e6:
        raise Mismatch(message, GIGA)
    if 0.35 <= ratio <= 0.65:
        raise Mismatch(message, COUNT_TWICE)
    if ratio < 0.2:
        raise Mismatch(message, WARM_UP)
    raise Mismatch(message)

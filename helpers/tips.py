"""Small tools for chapter 08 (tips and tricks, measured where they run).

``CostlyDataset`` is a dataset whose ``__getitem__`` is slow on purpose, for the
data-loading measurements; it lives in a module, not in the notebook, because
``DataLoader`` workers started with ``spawn`` or ``forkserver`` must import it.
``speed_verdict`` turns two timings into words without claiming a difference that is
within the noise; ``timed_rounds``, ``paired_rounds``, ``rounds_verdict`` and
``paired_verdict`` apply the chapter's timing rule (interleaved rounds, judged by
``separation``),
``rounds_note`` and ``paired_note`` flag the near cases the rule's verdict leaves out,
and ``rounds_range``/``rounds_list`` print the rounds. ``atomic_save`` writes a
checkpoint so that an interruption never leaves a half-written file behind.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from helpers.timing import _count, _synchronize, best_time

__all__ = [
    "CostlyDataset",
    "atomic_save",
    "busy_work",
    "one_way",
    "paired_note",
    "paired_rounds",
    "paired_verdict",
    "rounds_list",
    "rounds_note",
    "rounds_range",
    "rounds_verdict",
    "separation",
    "speed_verdict",
    "timed_rounds",
]


def busy_work(rounds: int) -> int:
    """Pure-Python arithmetic that keeps one CPU core busy for ``rounds`` iterations.

    A stand-in for CPU-heavy preprocessing such as decoding an image. Returns a checksum
    so the work cannot be skipped. Introduced in chapter 08.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise TypeError(f"rounds must be an int, got {type(rounds).__name__}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    total = 0
    for i in range(rounds):
        total = (total + i * i) % 1_000_003
    return total


def _check_nonnegative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not value >= 0.0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


class CostlyDataset(Dataset):
    """``(inputs[i], targets[i])`` pairs whose ``__getitem__`` costs time on purpose.

    - ``sleep_s``: seconds each item waits, like a read from a slow disk or network;
      the process waits but leaves the CPU free.
    - ``work``: rounds of ``busy_work`` per item, like decoding or augmenting; the CPU
      is busy.
    - ``noise_std``: standard deviation of Gaussian noise added to each input, drawn
      from torch's global generator: a random augmentation. In a ``DataLoader`` worker
      that generator is the worker's own, seeded by the loader.

    Defined in a module so that workers started with ``spawn`` (macOS, Windows) or
    ``forkserver`` can import it; a class defined in a notebook cannot be. Introduced
    in chapter 08.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        sleep_s: float = 0.0,
        work: int = 0,
        noise_std: float = 0.0,
    ) -> None:
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise TypeError(
                f"inputs and targets must be torch.Tensors, got {type(inputs).__name__} "
                f"and {type(targets).__name__}"
            )
        if inputs.ndim == 0 or targets.ndim == 0 or len(inputs) != len(targets):
            raise ValueError(
                f"inputs and targets must have the same length, got shapes {tuple(inputs.shape)} "
                f"and {tuple(targets.shape)}"
            )
        if not inputs.is_floating_point():
            raise ValueError(f"inputs must be floating point, got {inputs.dtype}")
        self.sleep_s = _check_nonnegative("sleep_s", sleep_s)
        if isinstance(work, bool) or not isinstance(work, int):
            raise TypeError(f"work must be an int, got {type(work).__name__}")
        if work < 0:
            raise ValueError(f"work must be >= 0, got {work}")
        self.work = work
        self.noise_std = _check_nonnegative("noise_std", noise_std)
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sleep_s > 0:
            time.sleep(self.sleep_s)
        if self.work > 0:
            busy_work(self.work)
        x = self.inputs[index]
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(x.shape, dtype=x.dtype)
        return x, self.targets[index]


def speed_verdict(baseline_s: float, candidate_s: float, *, tolerance: float = 0.1) -> str:
    """How the candidate's time compares with the baseline's, in words for the prose.

    Returns ``"1.8 times faster than"`` or ``"1.3 times slower than"`` when the ratio of
    the two times is beyond ``1 + tolerance``, and ``"as fast as (within 10 %)"``
    otherwise: a fixed band, not an estimate of the noise. The ratio is rounded down to
    tenths (1.89 gives "1.8"), so the words never claim more than the times show. Both
    times are in seconds and positive. Introduced in chapter 08.
    """
    for name, value in (("baseline_s", baseline_s), ("candidate_s", candidate_s), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not 0.0 < value < float("inf"):
            raise ValueError(f"{name} must be a positive finite number, got {value}")
    ratio = baseline_s / candidate_s
    if ratio >= 1.0 + tolerance:
        return f"{_tenths_down(ratio):.1f} times faster than"
    if 1.0 / ratio >= 1.0 + tolerance:
        return f"{_tenths_down(1.0 / ratio):.1f} times slower than"
    return f"as fast as (within {tolerance:.0%})"


def _tenths_down(ratio: float) -> float:
    """``ratio`` rounded down to tenths, so that "N times" never claims more than measured.

    The 1e-9 keeps a ratio that is a tenth in exact arithmetic (1.2 computed as 1.1999...)
    at that tenth.
    """
    return math.floor(ratio * 10 + 1e-9) / 10


def separation(a: Sequence[float], b: Sequence[float], *, margin: float = 0.0) -> str:
    """Whether repeated readings ``a`` lie wholly below or above readings ``b``.

    Returns ``"lower"`` when every value of ``a``, raised by the share ``margin``, is
    still below every value of ``b`` (``max(a) * (1 + margin) < min(b)``), ``"higher"``
    for the reverse, and ``"overlapping"`` otherwise. Chapter 08's one rule for "is this
    a difference" between two arms of seeds or timing rounds; one erratic reading can
    only make it more cautious. It is a weak test with few readings: for two arms that
    do not differ, with no margin, ``"lower"`` comes by chance with probability
    ``n_a! n_b! / (n_a + n_b)!`` (1/6 for two a side, 1/70 for four) when the arms
    share nothing; arms paired by seed pass only if every pair falls that way, so at
    most ``1 / 2**pairs`` when a pair's difference is as likely either way. Readings are
    positive finite numbers (losses, seconds, ratios). Introduced in chapter 08.
    """
    for name, values in (("a", a), ("b", b)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise TypeError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must hold numbers, got {type(value).__name__}")
            if not 0.0 < value < float("inf"):
                raise ValueError(f"{name} must hold positive finite numbers, got {value}")
    margin = _check_nonnegative("margin", margin)
    if max(a) * (1.0 + margin) < min(b):
        return "lower"
    if max(b) * (1.0 + margin) < min(a):
        return "higher"
    return "overlapping"


NOISE = "within the noise of"
#: The verdict where one side was faster in every reading (every round) but the nearest
#: readings lay within the 10 % band: a small, steady lead that the rule does not call.
NEAR = "close to"


def timed_rounds(
    fns: Mapping[Any, Callable[[], object]], rounds: int = 3, **options: Any
) -> dict[Any, list[float]]:
    """``best_time(fn, **options)`` of every function in ``fns``, taken ``rounds`` times.

    The functions are interleaved, so that a busy spell hits all of them, and run in
    reversed order every other round, so that going first favours none. Returns the
    readings per name, in the order the rounds ran. Introduced in chapter 08.
    """
    if not isinstance(fns, Mapping) or not fns or not all(callable(fn) for fn in fns.values()):
        raise TypeError(f"fns must be a non-empty mapping of names to callables, got {fns!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    readings: dict[Any, list[float]] = {name: [] for name in fns}
    for round_ in range(rounds):
        order = list(fns) if round_ % 2 == 0 else list(fns)[::-1]
        for name in order:
            readings[name].append(best_time(fns[name], **options))
    return readings


def paired_rounds(
    fns: Mapping[Any, Callable[[], object]],
    rounds: int = 3,
    *,
    repeat: int,
    warmup: int,
    device: str | torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Any, list[float]]:
    """Like ``timed_rounds``, but within a round the functions' calls alternate one by one.

    Each round first calls every function ``warmup`` times, then ``repeat`` times in
    turn, the order reversed every call, so that a busy spell longer than one call slows
    all of them alike; a function's fastest call in a round is its reading for that
    round, and the readings pair up round by round (for ``paired_verdict``). ``device``
    is waited for after every call, as in ``best_time``; ``clock`` is the timer (tests
    pass a fake one). Introduced in chapter 08.
    """
    if not isinstance(fns, Mapping) or not fns or not all(callable(fn) for fn in fns.values()):
        raise TypeError(f"fns must be a non-empty mapping of names to callables, got {fns!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    repeat = _count("repeat", repeat, 1)
    warmup = _count("warmup", warmup, 0)
    if isinstance(device, str):
        device = torch.device(device)
    elif device is not None and not isinstance(device, torch.device):
        raise TypeError(f"device must be a str, torch.device or None, got {type(device).__name__}")
    names = list(fns)
    readings: dict[Any, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        _synchronize(device)
        best = dict.fromkeys(names, math.inf)
        for call in range(repeat):
            for name in names if call % 2 == 0 else names[::-1]:
                start = clock()
                fns[name]()
                _synchronize(device)
                best[name] = min(best[name], clock() - start)
        for name in names:
            readings[name].append(best[name])
    return readings


def rounds_verdict(base: Sequence[float], candidate: Sequence[float]) -> str:
    """``speed_verdict``'s words for the candidate against the base, ``NEAR`` or ``NOISE``.

    A difference is called only where every reading of one side is more than 10 %
    below every reading of the other (``separation`` with ``margin=0.1``), and it is
    quoted by the worst case: the slower side's fastest reading against the faster
    side's slowest. Short of that, ``NEAR`` where every reading of one side still lies
    below every reading of the other, and ``NOISE`` where the readings overlap.
    Introduced in chapter 08.
    """
    order = separation(candidate, base, margin=0.1)
    if order == "overlapping":
        return NEAR if one_way(base, candidate) else NOISE
    if order == "lower":
        return speed_verdict(min(base), max(candidate))
    return speed_verdict(max(base), min(candidate))


def paired_verdict(base: Sequence[float], candidate: Sequence[float]) -> str:
    """The rule on paired rounds (both sides timed within the same round).

    ``speed_verdict``'s words where every round's ratio ``base / candidate`` lies
    beyond the 10 % band on the same side, quoted by the round nearest to even;
    ``NEAR`` where every round fell on the same side but not every one beyond the band;
    ``NOISE`` otherwise. Introduced in chapter 08.
    """
    if len(base) != len(candidate) or not base:
        raise ValueError(f"base and candidate must pair up, got {len(base)} and {len(candidate)} readings")
    ratios = [b / c for b, c in zip(base, candidate, strict=True)]
    if min(ratios) >= 1.1:
        return speed_verdict(min(ratios), 1.0)
    if max(ratios) <= 1 / 1.1:
        return speed_verdict(max(ratios), 1.0)
    return NEAR if min(ratios) > 1 or max(ratios) < 1 else NOISE


def one_way(base: Sequence[float], candidate: Sequence[float]) -> str:
    """``"faster"`` where every reading of ``candidate`` lies below every reading of
    ``base``, ``"slower"`` where every one lies above, ``""`` where they overlap: a lead
    that the 10 % rule may still call noise. Introduced in chapter 08.
    """
    return {"lower": "faster", "higher": "slower"}.get(separation(candidate, base), "")


def rounds_note(base: Sequence[float], candidate: Sequence[float], *, unit: str = "round") -> str:
    """What ``rounds_verdict(base, candidate)`` leaves out, as the words of a bracket.

    ``"narrowly"`` where the rule called a difference but the nearest readings, the
    slower side's fastest against the faster side's slowest, cleared its 10 % by less
    than a further 5 %; ``"though faster in every round"`` (or ``"slower"``; ``unit``
    names what one reading is) where the rule said ``NEAR``: every reading of one side
    lay beyond every reading of the other, but not by the 10 %; ``""`` otherwise.
    Introduced in chapter 08.
    """
    order = separation(candidate, base, margin=0.1)
    if order == "lower":
        return "narrowly" if max(candidate) * 1.1 * 1.05 > min(base) else ""
    if order == "higher":
        return "narrowly" if max(base) * 1.1 * 1.05 > min(candidate) else ""
    way = one_way(base, candidate)
    return f"though {way} in every {unit}" if way else ""


def paired_note(base: Sequence[float], candidate: Sequence[float]) -> str:
    """``rounds_note`` for ``paired_verdict``, which judges each round's ratio
    ``base / candidate``: ``"narrowly"`` where the round nearest to even cleared the
    10 % by less than a further 5 %, ``"though faster in every round"`` (or
    ``"slower"``) where every round fell one way but not every one beyond the 10 %,
    ``""`` otherwise. Introduced in chapter 08.
    """
    verdict = paired_verdict(base, candidate)  # checks that the rounds pair up
    ratios = [b / c for b, c in zip(base, candidate, strict=True)]
    if verdict not in (NOISE, NEAR):
        nearest = min(ratios) if min(ratios) >= 1.1 else 1 / max(ratios)
        return "narrowly" if nearest < 1.1 * 1.05 else ""
    way = "faster" if min(ratios) > 1 else "slower" if max(ratios) < 1 else ""
    return f"though {way} in every round" if way else ""


def rounds_range(readings: Sequence[float], scale: float, fmt: str) -> str:
    """The fastest and slowest reading times ``scale``: ``"a–b"``, or ``"a"`` where both
    print alike. Introduced in chapter 08."""
    low, high = (f"{r * scale:{fmt}}" for r in (min(readings), max(readings)))
    return low if low == high else f"{low}–{high}"


def rounds_list(readings: Sequence[float], scale: float, fmt: str) -> str:
    """Every reading times ``scale``, in the order the rounds ran. Introduced in chapter 08."""
    return ", ".join(f"{reading * scale:{fmt}}" for reading in readings)


def as_printed(readings: Sequence[float], scale: float, decimals: int) -> list[float]:
    """Every reading times ``scale``, rounded to ``decimals`` places as the text prints
    it, so that a ratio a reader works out from the printed numbers is the one the
    verdict used; a reading that would print as 0 stays unrounded, which keeps every
    ratio defined. Introduced in chapter 08.
    """
    if isinstance(decimals, bool) or not isinstance(decimals, int) or decimals < 0:
        raise ValueError(f"decimals must be an int >= 0, got {decimals!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")
    return [round(reading * scale, decimals) or reading * scale for reading in readings]


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)`` such that ``path`` is either the old file or the new one.

    The object is written to a temporary file in the same folder, flushed to disk, and
    then renamed over ``path`` with ``os.replace``, which is atomic on POSIX file systems;
    on POSIX the folder is then flushed too, so the rename survives a power cut. An
    interruption while saving leaves the previous checkpoint intact; a failed save
    removes its temporary file. The file gets the permissions ``torch.save`` would give
    it (0666 less the umask), not ``mkstemp``'s 0600. Returns the path. Introduced in chapter 08.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path must be in an existing folder, got {path}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            if os.name == "posix":  # mkstemp makes 0600; give what open() would give
                os.fchmod(file.fileno(), 0o666 & ~_current_umask())
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _current_umask() -> int:
    # The only way to read the umask is to set it: set it and put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    # The rename lives in the folder's entry list: flush it too, so that a power cut
    # right after the save cannot bring back the old entry. Windows cannot open folders.
    if os.name != "posix":
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)

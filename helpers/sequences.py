"""Sequences for recurrent networks: windows of a series, a memory task, encoded text.

Introduced in chapter 04 (recurrent networks): ``make_windows`` and ``naive_forecast``
for forecasting, ``adding_problem`` for the long-range memory task, ``load_cldr_names``
and ``CharVocab`` for the character-level name classifier.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "CharVocab",
    "adding_problem",
    "load_cldr_names",
    "make_windows",
    "naive_forecast",
]


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_series(series: torch.Tensor) -> None:
    if not isinstance(series, torch.Tensor):
        raise TypeError(f"series must be a torch.Tensor, got {type(series).__name__}")
    if series.ndim not in (1, 2):
        raise ValueError(f"series must be 1-D (T,) or 2-D (T, features), got shape {tuple(series.shape)}")


def make_windows(series: torch.Tensor, input_len: int, horizon: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a series into every (input window, following values) pair, as two tensors.

    Window ``i`` takes ``series[i : i + input_len]`` as input and the next ``horizon``
    values ``series[i + input_len : i + input_len + horizon]`` as target, for
    ``i = 0 .. T - input_len - horizon``. A series of shape ``(T,)`` gives inputs
    ``(N, input_len)`` and targets ``(N, horizon)``; one of shape ``(T, F)`` gives
    ``(N, input_len, F)`` and ``(N, horizon, F)``, with ``N = T - input_len - horizon + 1``.
    The results are fresh tensors, not views of ``series``. Introduced in chapter 04.
    """
    _check_series(series)
    _check_int("input_len", input_len, 1)
    _check_int("horizon", horizon, 1)
    span = input_len + horizon
    if len(series) < span:
        raise ValueError(f"series has {len(series)} steps, fewer than input_len + horizon = {span}")
    windows = series.unfold(0, span, 1)  # (N, span) or (N, F, span): a view, no copy
    if series.ndim == 2:
        windows = windows.transpose(1, 2)  # (N, span, F)
    return windows[:, :input_len].clone(), windows[:, input_len:].clone()


def naive_forecast(series: torch.Tensor, start: int, season: int = 1) -> torch.Tensor:
    """One-step forecasts of ``series[start:]`` that repeat an earlier value.

    The forecast of step ``t`` is ``series[t - season]``: the last value for
    ``season=1`` (the naive forecast), the value one season ago otherwise (the seasonal
    naive forecast). Returns a tensor shaped like ``series[start:]``. Introduced in
    chapter 04 as the baseline a learned forecaster must beat.
    """
    _check_series(series)
    _check_int("season", season, 1)
    _check_int("start", start, season)
    if start >= len(series):
        raise ValueError(f"start must be below len(series) = {len(series)}, got {start}")
    return series[start - season : len(series) - season].clone()


def adding_problem(
    n: int, length: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem (Hochreiter & Schmidhuber, 1997): a test of long-range memory.

    Each of the ``n`` sequences has ``length`` steps with two features: a random value
    drawn uniformly from [0, 1) and a marker that is 1 at exactly two steps, one in the
    first half and one in the second half, and 0 elsewhere. The target is the sum of the
    two marked values. Returns ``x`` of shape ``(n, length, 2)`` and ``y`` of shape
    ``(n,)``. Always predicting 1 (the mean) gives a mean squared error of 1/6, the
    variance of the sum. Introduced in chapter 04.
    """
    _check_int("n", n, 1)
    _check_int("length", length, 2)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    values = torch.rand(n, length, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, length, (n,), generator=generator)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)  # (n, length, 2)
    y = values[rows, first] + values[rows, second]
    return x, y


def load_cldr_names(
    languages: Sequence[str], kinds: Sequence[str] = ("territories", "languages")
) -> list[tuple[str, str, str]]:
    """Names of countries, regions and languages as written in each of ``languages``.

    The names come from the Unicode CLDR locale data that the ``babel`` package ships
    (e.g. ``Locale("de").territories["DE"] == "Deutschland"``). Returns
    ``(name, language, key)`` triples, where ``key`` such as ``"territories:DE"`` names
    the thing the name refers to, identical across languages. A name spelled the same in
    two or more of ``languages`` (``"Angola"``) is left out: a classifier that reads only
    the name gives all its rows the same answer, so it could not be right for all of
    them. A name used for two things in one language is kept once, for the first of
    ``kinds``.
    Introduced in chapter 04.
    """
    if isinstance(languages, str) or not isinstance(languages, Sequence):
        raise TypeError(f"languages must be a sequence of locale codes, got {type(languages).__name__}")
    if not all(isinstance(code, str) for code in languages):
        raise TypeError(f"languages must hold str locale codes such as 'de', got {list(languages)!r}")
    if len(set(languages)) < 2 or len(set(languages)) != len(languages):
        raise ValueError(f"languages must hold at least two distinct codes, got {list(languages)}")
    allowed = ("territories", "languages", "scripts", "currencies")
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise TypeError(f"kinds must be a sequence of str drawn from {allowed}, got {type(kinds).__name__}")
    if not kinds or any(kind not in allowed for kind in kinds):
        raise ValueError(f"kinds must be a non-empty sequence drawn from {allowed}, got {kinds!r}")
    from babel import Locale  # imported here: only the name classifier needs babel

    rows = []
    for language in languages:
        locale = Locale.parse(language)
        for kind in kinds:
            for key, name in sorted(getattr(locale, kind).items()):
                rows.append((name, language, f"{kind}:{key}"))
    spellings: dict[str, set[str]] = defaultdict(set)
    for name, language, _ in rows:
        spellings[name].add(language)
    kept, seen = [], set()
    for name, language, key in rows:
        # one row per spelling: a name used twice in one language ("Fidschi") is kept once
        if len(spellings[name]) == 1 and name not in seen:
            seen.add(name)
            kept.append((name, language, key))
    return kept


class CharVocab:
    """Maps characters to integer ids for an embedding layer, and back.

    Id 0 is padding and id 1 stands for any character not seen when the vocabulary was
    built; the known characters follow in sorted order. Introduced in chapter 04.
    """

    PAD, UNKNOWN = 0, 1

    def __init__(self, texts: Iterable[str]) -> None:
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of strings, not one string")
        chars: set[str] = set()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
            chars.update(text)
        if not chars:
            raise ValueError("texts must contain at least one character")
        self.chars = ["<pad>", "<unk>", *sorted(chars)]
        self.index = {c: i for i, c in enumerate(self.chars) if i >= 2}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """The ids of ``text``'s characters as a 1-D ``int64`` tensor."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text must not be empty: a recurrent layer needs at least one step")
        return torch.tensor([self.index.get(c, self.UNKNOWN) for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        """The text for ``ids``, skipping padding; unknown characters come back as ``?``."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be integer ids, got dtype {ids.dtype}")
        outside = ids[(ids < 0) | (ids >= len(self.chars))]
        if len(outside):
            raise ValueError(
                f"ids must be in [0, {len(self.chars)}) for this vocabulary of {len(self.chars)}, "
                f"got {outside[0].item()}"
            )
        return "".join("?" if i == self.UNKNOWN else self.chars[i] for i in ids.tolist() if i != self.PAD)

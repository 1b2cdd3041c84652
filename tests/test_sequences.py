import re

import numpy as np
import pytest
import torch
from babel import Locale

from helpers.sequences import (
    CharVocab,
    adding_problem,
    load_cldr_names,
    make_windows,
    naive_forecast,
)


def test_make_windows_matches_a_python_loop():
    series = torch.arange(10.0) ** 2
    inputs, targets = make_windows(series, input_len=3, horizon=2)
    expected_x = [series[i : i + 3].tolist() for i in range(10 - 3 - 2 + 1)]
    expected_y = [series[i + 3 : i + 5].tolist() for i in range(10 - 3 - 2 + 1)]
    assert inputs.shape == (6, 3) and targets.shape == (6, 2)
    assert inputs.tolist() == expected_x and targets.tolist() == expected_y


def test_make_windows_with_features_matches_numpy_sliding_window():
    series = torch.randn(12, 2, generator=torch.Generator().manual_seed(0))
    inputs, targets = make_windows(series, input_len=4)
    # numpy puts the window axis last: (N, F, span) -> (N, span, F)
    reference = np.lib.stride_tricks.sliding_window_view(series.numpy(), 5, axis=0).transpose(0, 2, 1)
    assert inputs.shape == (8, 4, 2) and targets.shape == (8, 1, 2)
    np.testing.assert_array_equal(inputs.numpy(), reference[:, :4])
    np.testing.assert_array_equal(targets.numpy(), reference[:, 4:])


def test_make_windows_returns_copies():
    series = torch.zeros(6)
    inputs, _ = make_windows(series, 2)
    inputs[0, 0] = 5.0
    assert series[0] == 0.0


def test_make_windows_accepts_the_smallest_window_and_the_shortest_series():
    # input_len=1 is allowed, and a series of exactly input_len + horizon steps gives one window
    inputs, targets = make_windows(torch.arange(3.0), input_len=1, horizon=2)
    assert inputs.tolist() == [[0.0]] and targets.tolist() == [[1.0, 2.0]]


def _raises(error, message):
    """``pytest.raises`` that matches the whole message, not a part of it."""
    return pytest.raises(error, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (([1.0, 2.0, 3.0], 1), TypeError, "series must be a torch.Tensor, got list"),
        (
            (torch.zeros(2, 2, 2), 1),
            ValueError,
            "series must be 1-D (T,) or 2-D (T, features), got shape (2, 2, 2)",
        ),
        ((torch.zeros(5), 0), ValueError, "input_len must be >= 1, got 0"),
        ((torch.zeros(5), 2.0), TypeError, "input_len must be an int, got float"),
        ((torch.zeros(5), 2, 0), ValueError, "horizon must be >= 1, got 0"),
        ((torch.zeros(5), 2, True), TypeError, "horizon must be an int, got bool"),
        ((torch.zeros(5), 4, 2), ValueError, "series has 5 steps, fewer than input_len + horizon = 6"),
    ],
)
def test_make_windows_rejects_bad_input(args, error, message):
    with _raises(error, message):
        make_windows(*args)


def test_naive_forecasts_repeat_the_value_one_step_or_one_season_ago():
    series = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    assert naive_forecast(series, start=3).tolist() == [4.0, 8.0, 16.0]
    assert naive_forecast(series, start=3, season=2).tolist() == [2.0, 4.0, 8.0]
    assert naive_forecast(series, start=2, season=2).tolist() == [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"start": 1, "season": 2}, ValueError, "start must be >= 2, got 1"),
        ({"start": 6}, ValueError, "start must be below len(series) = 6, got 6"),
        ({"start": 2, "season": 0}, ValueError, "season must be >= 1, got 0"),
        ({"start": 2.0}, TypeError, "start must be an int, got float"),
    ],
)
def test_naive_forecast_rejects_bad_input(kwargs, error, message):
    with _raises(error, message):
        naive_forecast(torch.arange(6.0), **kwargs)


def test_adding_problem_targets_are_the_sums_of_the_two_marked_values():
    x, y = adding_problem(200, 10, torch.Generator().manual_seed(0))
    assert x.shape == (200, 10, 2) and y.shape == (200,)
    markers = x[..., 1]
    assert torch.equal(markers.sum(1), torch.full((200,), 2.0))
    assert torch.equal(markers[:, :5].sum(1), torch.ones(200))  # one marker in each half
    for row in range(200):
        marked = x[row, :, 0][x[row, :, 1] == 1.0]
        assert torch.isclose(marked.sum(), y[row])
    assert ((x[..., 0] >= 0) & (x[..., 0] < 1)).all()


def test_adding_problem_chance_error_is_one_sixth_and_draws_are_repeatable():
    x, y = adding_problem(20_000, 6, torch.Generator().manual_seed(1))
    assert abs(((y - 1.0) ** 2).mean().item() - 1 / 6) < 0.01
    x2, y2 = adding_problem(20_000, 6, torch.Generator().manual_seed(1))
    assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, 5), ValueError, "n must be >= 1, got 0"),
        ((3, 1), ValueError, "length must be >= 2, got 1"),
        ((3, 5.0), TypeError, "length must be an int, got float"),
        ((True, 5), TypeError, "n must be an int, got bool"),
        ((3, 5, 7), TypeError, "generator must be a torch.Generator or None, got int"),
    ],
)
def test_adding_problem_rejects_bad_input(args, error, message):
    with _raises(error, message):
        adding_problem(*args)


def test_adding_problem_without_a_generator_draws_from_torchs_global_generator():
    with torch.random.fork_rng():
        torch.manual_seed(4)
        x, y = adding_problem(3, 6)
        torch.manual_seed(4)
        x2, y2 = adding_problem(3, 6)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert torch.equal(x[..., 1].sum(1), torch.full((3,), 2.0))


def test_adding_problem_marks_the_only_possible_steps_for_length_two():
    x, y = adding_problem(5, 2, torch.Generator().manual_seed(3))
    assert torch.equal(x[..., 1], torch.ones(5, 2))  # halves of one step: both marked
    assert torch.allclose(y, x[..., 0].sum(1))


def test_cldr_names_match_babel_and_drop_shared_spellings():
    rows = load_cldr_names(["de", "fr"], kinds=("territories",))
    found = {(name, lang, key) for name, lang, key in rows}
    assert ("Deutschland", "de", "territories:DE") in found
    assert (Locale("fr").territories["DE"], "fr", "territories:DE") in found
    german, french = Locale("de").territories, Locale("fr").territories
    shared = set(german.values()) & set(french.values())
    assert shared, "the two lists share spellings such as 'Angola'"
    assert not {name for name, _, _ in rows} & shared
    assert len(rows) == len(set(german.values()) - shared) + len(set(french.values()) - shared)


def test_cldr_names_are_unique_and_are_every_spelling_one_language_alone_uses():
    langs = ["de", "nl"]
    rows = load_cldr_names(langs)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names))
    spelled = {
        lang: set(Locale(lang).territories.values()) | set(Locale(lang).languages.values()) for lang in langs
    }
    assert set(names) == spelled["de"] ^ spelled["nl"]  # in exactly one of the two
    for name, lang, key in rows:  # every key names what the name refers to
        kind, code = key.split(":")
        assert getattr(Locale(lang), kind)[code] == name


_KINDS = "('territories', 'languages', 'scripts', 'currencies')"


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (("de",), TypeError, "languages must be a sequence of locale codes, got str"),
        (([1, 2],), TypeError, "languages must hold str locale codes such as 'de', got [1, 2]"),
        ((["de"],), ValueError, "languages must hold at least two distinct codes, got ['de']"),
        ((["de", "de"],), ValueError, "languages must hold at least two distinct codes, got ['de', 'de']"),
        (
            (["de", "fr"], ("cities",)),
            ValueError,
            f"kinds must be a non-empty sequence drawn from {_KINDS}, got ('cities',)",
        ),
        ((["de", "fr"], ()), ValueError, f"kinds must be a non-empty sequence drawn from {_KINDS}, got ()"),
        (
            (["de", "fr"], "territories"),
            TypeError,
            f"kinds must be a sequence of str drawn from {_KINDS}, got str",
        ),
        ((["de", "fr"], 3), TypeError, f"kinds must be a sequence of str drawn from {_KINDS}, got int"),
    ],
)
def test_cldr_names_reject_bad_input(args, error, message):
    with _raises(error, message):
        load_cldr_names(*args)


def test_char_vocab_round_trips_and_reserves_padding_and_unknown():
    vocab = CharVocab(["abc", "cab", "dé"])
    assert len(vocab) == 2 + 5
    ids = vocab.encode("bad")
    assert ids.dtype == torch.long and ids.tolist() == [3, 2, 5]
    assert vocab.decode(ids) == "bad"
    assert vocab.encode("xa").tolist() == [CharVocab.UNKNOWN, 2]
    assert vocab.decode(torch.tensor([0, 2, 1, 0])) == "a?"
    assert vocab.chars == ["<pad>", "<unk>", "a", "b", "c", "d", "é"]  # the token of every id


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: CharVocab("abc"), TypeError, "texts must be an iterable of strings, not one string"),
        (lambda: CharVocab(["a", 3]), TypeError, "texts[1] must be a str, got int"),
        (lambda: CharVocab([""]), ValueError, "texts must contain at least one character"),
        (
            lambda: CharVocab(["ab"]).encode(""),
            ValueError,
            "text must not be empty: a recurrent layer needs at least one step",
        ),
        (lambda: CharVocab(["ab"]).encode(5), TypeError, "text must be a str, got int"),
        (lambda: CharVocab(["ab"]).decode([2]), TypeError, "ids must be a torch.Tensor, got list"),
        (
            lambda: CharVocab(["ab"]).decode(torch.ones(1, 2, dtype=torch.long)),
            ValueError,
            "ids must be 1-D, got shape (1, 2)",
        ),
        (
            lambda: CharVocab(["ab"]).decode(torch.tensor([2, -1])),
            ValueError,
            "ids must be in [0, 4) for this vocabulary of 4, got -1",
        ),
        (
            lambda: CharVocab(["ab"]).decode(torch.tensor([4])),
            ValueError,
            "ids must be in [0, 4) for this vocabulary of 4, got 4",
        ),
        (
            lambda: CharVocab(["ab"]).decode(torch.tensor([2.0])),
            ValueError,
            "ids must be integer ids, got dtype torch.float32",
        ),
        (
            lambda: CharVocab(["ab"]).decode(torch.tensor([True])),
            ValueError,
            "ids must be integer ids, got dtype torch.bool",
        ),
        (
            lambda: CharVocab(["ab"]).decode(torch.tensor([2 + 0j])),
            ValueError,
            "ids must be integer ids, got dtype torch.complex64",
        ),
    ],
)
def test_char_vocab_rejects_bad_input(call, error, message):
    with _raises(error, message):
        call()

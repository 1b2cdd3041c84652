import io

import pytest
import tqdm.auto
import tqdm.std

from helpers import progress
from helpers.progress import PLAIN_ENV, plain_progress


def test_readers_get_tqdm_auto(monkeypatch):
    monkeypatch.delenv(PLAIN_ENV, raising=False)
    bar = progress.tqdm(range(3), disable=True)
    assert type(bar) is tqdm.auto.tqdm
    assert not plain_progress()


def test_the_build_gets_a_text_bar_whose_last_state_is_complete(monkeypatch, capsys):
    monkeypatch.setenv(PLAIN_ENV, "1")
    assert list(progress.tqdm(range(4), desc="epochs")) == [0, 1, 2, 3]
    out = capsys.readouterr().out
    assert "epochs" in out and "4/4" in out.split("\r")[-1]


def test_caller_may_still_choose_the_stream(monkeypatch):
    monkeypatch.setenv(PLAIN_ENV, "1")
    stream = io.StringIO()
    bar = progress.tqdm(range(2), file=stream)
    assert type(bar) is tqdm.std.tqdm
    list(bar)
    assert "2/2" in stream.getvalue()


def test_a_bad_switch_value_is_an_error(monkeypatch):
    monkeypatch.setenv(PLAIN_ENV, "yes")
    with pytest.raises(ValueError, match=PLAIN_ENV):
        progress.tqdm(range(2))

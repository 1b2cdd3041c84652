from fractions import Fraction

import numpy as np
import pytest
import torch

from helpers import results
from helpers.results import GLUE_MIME_PREFIX, HEADLINE_KEY, PROSE_KEY, format_value, prose, record


@pytest.fixture
def shown(monkeypatch):
    """Capture what record() hands to IPython's display instead of printing it."""
    calls = []

    def fake_display(bundle, raw, metadata):
        calls.append((bundle, raw, metadata))

    monkeypatch.setattr("IPython.display.display", fake_display)
    monkeypatch.setattr(results, "_ipython_shell", lambda: object())
    return calls


def test_record_displays_a_glue_bundle_myst_nb_can_read(shown):
    glue = pytest.importorskip("myst_nb.ext.glue", reason="myst-nb is a book-build dependency")
    GLUE_PREFIX = glue.GLUE_PREFIX

    assert GLUE_MIME_PREFIX == GLUE_PREFIX
    assert record("test_accuracy", 0.98251, "{:.1%}") is None
    ((bundle, raw, metadata),) = shown
    assert raw is True
    assert bundle == {GLUE_PREFIX + "text/plain": "98.3%"}
    assert metadata == {"scrapbook": {"name": "test_accuracy", "mime_prefix": GLUE_PREFIX}}


def test_headline_values_carry_label_raw_value_and_text(shown):
    record("speedup", torch.tensor(1131.4), "{:,.0f}×", headline="Loop vs vectorised speed-up")
    (_, _, metadata) = shown[0]
    assert metadata[HEADLINE_KEY] == {
        "headline": "Loop vs vectorised speed-up",
        "value": pytest.approx(1131.4),
        "text": "1,131×",
    }


def test_numpy_and_tensor_scalars_are_stored_as_plain_python_numbers(shown):
    record("q", Fraction(1, 4), headline="Q")  # a Real without .item(): becomes float
    assert shown.pop()[2][HEADLINE_KEY] == {"headline": "Q", "value": 0.25, "text": "0.25"}
    record("a", np.float32(0.5), headline="A")
    record("b", np.array(0.25), "{:.2f}", headline="B")  # a 0-d array: only .item() reads it
    record("c", torch.tensor(3), headline="C")
    values = [metadata[HEADLINE_KEY]["value"] for _, _, metadata in shown]
    assert values == [0.5, 0.25, 3]
    assert [type(v) for v in values] == [float, float, int]
    assert shown[1][0] == {GLUE_MIME_PREFIX + "text/plain": "0.25"}


def test_a_prose_text_without_placeholder_is_quoted_by_its_first_60_characters(recorded):
    text = "x" * 59 + "yz and more"
    with pytest.raises(ValueError, match=f"it starts '{'x' * 59}y'\\)$"):
        prose(text)


def test_format_value_accepts_numpy_and_integer_scalars():
    assert format_value(np.float32(0.5), "{:.2f}") == "0.50"
    assert format_value(50378, "{:,}") == "50,378"
    assert format_value(True) == "True"
    assert format_value("relu") == "relu"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": 3, "value": 1.0}, TypeError, "^name must be a str, got int$"),
        ({"name": "test accuracy", "value": 1.0}, ValueError, "name"),
        (
            {"name": "x", "value": [1, 2]},
            TypeError,
            "^value must be a number, a string or a scalar tensor, got list$",
        ),
        ({"name": "x", "value": torch.ones(2)}, ValueError, "scalar"),
        ({"name": "x", "value": float("nan")}, ValueError, "finite"),
        ({"name": "x", "value": 1.0, "fmt": 2}, TypeError, "^fmt must be a str such as '{:.3f}', got int$"),
        ({"name": "x", "value": 1.0, "fmt": "%.2f"}, ValueError, "replacement field"),
        ({"name": "x", "value": "abc", "fmt": "{:.2f}"}, ValueError, "fmt"),
        ({"name": "x", "value": 1.0, "headline": " "}, ValueError, "headline"),
    ],
)
def test_bad_input_names_the_argument(shown, kwargs, error, message):
    with pytest.raises(error, match=message):
        record(**kwargs)
    assert shown == []


def test_outside_ipython_record_prints_a_readable_line(monkeypatch, capsys):
    monkeypatch.setattr(results, "_ipython_shell", lambda: None)
    assert record("loss", 0.1234, "{:.2f}") is None
    assert capsys.readouterr().out == "[record] loss = 0.12\n"


def test_the_shell_probe_finds_no_shell_under_pytest():
    assert results._ipython_shell() is None


@pytest.fixture
def recorded(monkeypatch):
    """An empty record store for one test."""
    monkeypatch.setattr(results, "_recorded", {})


def test_prose_fills_placeholders_with_recorded_text_and_shows_markdown(shown, recorded):
    record("acc", 0.98251, "{:.1%}")
    record("epochs", 7)
    shown.clear()
    assert (
        prose(r"""
        Reaches {{acc}} after {{ epochs }} epochs; $\frac{a}{b}$ stays, {{acc}} again.
    """)
        is None
    )
    ((bundle, raw, metadata),) = shown
    text = r"Reaches 98.3% after 7 epochs; $\frac{a}{b}$ stays, 98.3% again."
    assert bundle == {"text/markdown": text, "text/plain": text}
    assert raw is True
    assert metadata == {PROSE_KEY: True}


def test_prose_quotes_the_latest_recorded_value(shown, recorded):
    record("loss", 0.5, "{:.1f}")
    record("loss", 0.25, "{:.2f}")
    shown.clear()
    prose("Loss {{loss}}.")
    assert shown[0][0]["text/markdown"] == "Loss 0.25."


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        (3, TypeError, "^markdown must be a str, got int$"),
        ("No value here.", ValueError, "belongs in a Markdown cell"),
        (
            "Old style {glue:}`acc`.",
            ValueError,
            r"^prose uses \{\{name\}\} placeholders, not MyST \{glue\} roles$",
        ),
        ("Bad {{acc + 1}}.", ValueError, r"must be recorded names, got \['acc \+ 1'\]"),
        ("Missing {{acc}} and {{acu}}.", ValueError, r"\['acu'\].*did you mean 'acc'"),
        ("Never {{zzz}}.", ValueError, r"\['zzz'\].*run the cell that records it first$"),
    ],
)
def test_prose_names_what_is_wrong_and_shows_nothing(shown, recorded, text, error, message):
    record("acc", 0.5)
    shown.clear()
    with pytest.raises(error, match=message):
        prose(text)
    assert shown == []


def test_outside_ipython_prose_checks_its_input_but_prints_nothing(monkeypatch, capsys, recorded):
    monkeypatch.setattr(results, "_ipython_shell", lambda: None)
    record("acc", 0.5)
    capsys.readouterr()
    assert prose("Acc {{acc}}.") is None
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="acu"):
        prose("Acc {{acu}}.")


def test_prose_removes_only_the_blank_lines_around_the_paragraph(shown, recorded):
    record("n", 3)
    shown.clear()
    prose("\n\nX marks {{n}} spots\nX\n\n")
    assert shown[0][0]["text/markdown"] == "X marks 3 spots\nX"


def test_an_empty_value_leaves_no_double_space_or_line_break(shown, recorded):
    record("empty", "")
    record("n", 3)
    shown.clear()
    prose("Before {{empty}} after {{n}}.\nEnds {{empty}}\n  - kept {{empty}} indent\n```\na  b {{n}}\n```")
    assert shown[0][0]["text/markdown"] == ("Before after 3.\nEnds\n  - kept indent\n```\na  b 3\n```")
    shown.clear()
    prose("{{empty}} {{empty}} Starts {{n}} {{n}}.")
    assert shown[0][0]["text/markdown"] == "Starts 3 3."

"""The staged build: which notebooks it re-executes, and what it reads back from a run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="2">
<testcase classname="_stage.book.01_tensors" name="_stage/book/01_tensors.ipynb"
 file="_stage/book/01_tensors.ipynb" time="8.25"/>
<testcase classname="_stage.book.03_cnn" name="_stage/book/03_cnn.ipynb"
 file="_stage/book/03_cnn.ipynb" time="61.5"><failure message="CellExecutionError"/></testcase>
</testsuite></testsuites>"""


def test_junit_times_give_seconds_and_outcome_per_notebook(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    assert build_book.junit_times(report) == {
        "01_tensors.ipynb": (8.25, True),
        "03_cnn.ipynb": (61.5, False),
    }


def _notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_headlines_and_title_are_read_from_the_executed_notebook(tmp_path):
    headline = {"headline": "CNN test accuracy", "value": 0.983, "text": "98.3%"}
    cells = [
        {"cell_type": "markdown", "metadata": {}, "source": ["# 3. Convolutional networks\n", "text"]},
        {
            "cell_type": "code",
            "metadata": {},
            "source": "record(...)",
            "execution_count": 1,
            "outputs": [
                {"output_type": "display_data", "data": {}, "metadata": {"scrapbook": {"name": "x"}}},
                {"output_type": "display_data", "data": {}, "metadata": {"pytorch_book": headline}},
            ],
        },
    ]
    path = tmp_path / "03_cnn.ipynb"
    path.write_text(json.dumps(_notebook(cells)))
    assert build_book.headlines(path) == [headline]
    assert build_book.chapter_title(path) == "3. Convolutional networks"


def test_headline_key_matches_what_record_writes():
    from helpers.results import HEADLINE_KEY

    assert build_book.HEADLINE_KEY == HEADLINE_KEY


def test_a_notebook_digest_changes_with_the_notebook_or_the_shared_inputs(tmp_path):
    path = tmp_path / "a.ipynb"
    path.write_text("one")
    first = build_book.notebook_digest(path, "helpers-v1")
    assert build_book.notebook_digest(path, "helpers-v1") == first
    assert build_book.notebook_digest(path, "helpers-v2") != first
    path.write_text("two")
    assert build_book.notebook_digest(path, "helpers-v1") != first


def test_the_shared_digest_covers_every_helper_module(monkeypatch, tmp_path):
    (tmp_path / "helpers" / "sub").mkdir(parents=True)
    (tmp_path / "helpers" / "a.py").write_text("x = 1")
    (tmp_path / "helpers" / "sub" / "b.py").write_text("y = 1")
    (tmp_path / "uv.lock").write_text("lock")
    monkeypatch.setattr(build_book, "ROOT", tmp_path)
    before = build_book.inputs_digest()
    (tmp_path / "helpers" / "sub" / "b.py").write_text("y = 2")
    assert build_book.inputs_digest() != before


@pytest.fixture
def stage(monkeypatch, tmp_path):
    book, staged = tmp_path / "book", tmp_path / "_stage" / "book"
    book.mkdir()
    monkeypatch.setattr(build_book, "BOOK", book)
    monkeypatch.setattr(build_book, "STAGED_BOOK", staged)
    return book, staged


def test_mirror_copies_sources_but_leaves_notebooks_to_the_executor(stage):
    book, staged = stage
    (book / "intro.md").write_text("# Intro")
    (book / "01_a.ipynb").write_text("{}")
    staged.mkdir(parents=True)
    (staged / "09_gone.ipynb").write_text("{}")
    build_book.mirror_sources()
    assert (staged / "intro.md").read_text() == "# Intro"
    assert not (staged / "01_a.ipynb").exists()
    assert not (staged / "09_gone.ipynb").exists(), "a notebook removed from book/ leaves the stage"


@pytest.mark.parametrize(
    ("source", "alt"),
    [
        ('ax.set_title("Training loss")\nfig.suptitle(f"Epoch {epoch}")', "Figure: Training loss; Epoch …"),
        ("plot_losses(history, title='CNN on MNIST')", "Figure: CNN on MNIST"),
        ("plt.imshow(image)", "Figure drawn by the code cell above"),
    ],
)
def test_figure_alt_text_comes_from_the_titles_a_cell_sets(source, alt):
    assert build_book.figure_alt_text(source) == alt


def test_alt_text_is_added_to_figure_cells_only_and_never_overrides_the_chapter(tmp_path):
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR"}, "metadata": {}}
    own = {"mystnb": {"image": {"alt": "mine"}}}
    cells = [
        {"cell_type": "code", "metadata": {}, "source": "ax.set_title('A')", "outputs": [png]},
        {"cell_type": "code", "metadata": own, "source": "", "outputs": [png]},
        {"cell_type": "code", "metadata": {}, "source": "print(1)", "outputs": []},
    ]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(_notebook(cells)))
    assert build_book.add_alt_text(path) == 1
    got = [c["metadata"] for c in json.loads(path.read_text())["cells"]]
    assert got == [{"mystnb": {"image": {"alt": "Figure: A"}}}, {"mystnb": {"image": {"alt": "mine"}}}, {}]


def test_prepare_for_book_checks_the_reader_view_before_converting_boxes(monkeypatch, tmp_path):
    monkeypatch.setattr(build_book, "READER", tmp_path / "reader")
    box = {"cell_type": "markdown", "metadata": {"tags": ["box-tip"]}, "source": "> **Tip**\n>\n> Body."}
    good = tmp_path / "01_good.ipynb"
    good.write_text(json.dumps(_notebook([box])))
    assert build_book.prepare_for_book(good) == []
    (cell,) = json.loads(good.read_text())["cells"]
    assert cell["source"] == "```{admonition} Tip\n:class: tip\nBody.\n```\n"
    (kept,) = json.loads((tmp_path / "reader" / "01_good.ipynb").read_text())["cells"]
    assert kept["source"] == box["source"]

    raw = {"cell_type": "markdown", "metadata": {}, "source": "Accuracy {glue:}`acc`."}
    bad = tmp_path / "02_bad.ipynb"
    bad.write_text(json.dumps(_notebook([box, raw])))
    before = bad.read_text()
    assert build_book.prepare_for_book(bad) == [
        "02_bad.ipynb: cell 1 ('Accuracy {glue:}`acc`.'): a {glue:}` role"
    ]
    assert bad.read_text() == before
    assert not (tmp_path / "reader" / "02_bad.ipynb").exists()


def _stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_the_run_stamp_names_what_the_chapter_itself_reported(tmp_path):
    title = {"cell_type": "markdown", "metadata": {}, "source": "# 7. Reinforcement learning\n\nIntro."}
    setup = {
        "cell_type": "code",
        "metadata": {},
        "source": "print(describe_runtime(device, seed))",
        "outputs": [_stream("torch 2.15.0+cu130 | device: cuda (NVIDIA H200) | seed: 2 | gymnasium 1.4\n")],
    }
    notebook = tmp_path / "07_rl.ipynb"
    notebook.write_text(json.dumps(_notebook([title, setup])))
    runtime = build_book.runtime_of(notebook)
    assert runtime == {"torch": "2.15.0+cu130", "device": "cuda (NVIDIA H200)", "seed": "2"}
    build_book.add_run_stamp(notebook, {"executed_at": "2026-12-04 19:00", "seconds": 24.46, **runtime})
    first = json.loads(notebook.read_text())["cells"][0]["source"]
    assert first == (
        "# 7. Reinforcement learning\n\n*Executed on 2026-12-04 19:00 UTC with torch 2.15.0+cu130 on "
        "cuda (NVIDIA H200) in 24 s (seed 2), as a test: see [Status](status.md).*\n\nIntro."
    )
    assert build_book.chapter_title(notebook) == "7. Reinforcement learning"


def test_a_chapter_without_its_runtime_line_or_title_is_an_error(tmp_path):
    notebook = tmp_path / "01_x.ipynb"
    notebook.write_text(
        json.dumps(_notebook([{"cell_type": "markdown", "metadata": {}, "source": "No title"}]))
    )
    with pytest.raises(ValueError, match="describe_runtime"):
        build_book.runtime_of(notebook)
    with pytest.raises(ValueError, match="'# Title'"):
        build_book.add_run_stamp(
            notebook, {"executed_at": "x", "seconds": 1, "torch": "2", "device": "cpu", "seed": "0"}
        )

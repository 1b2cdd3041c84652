"""Portable notebook Markdown: the checks readers' notebooks pass, and the book's MyST."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("notebook_markup", ROOT / "scripts" / "notebook_markup.py")
markup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(markup)

PROSE_META = {"tags": ["remove-input"], "jupyter": {"source_hidden": True}, "cellView": "form"}


def md(text: str, tags: list[str] | None = None) -> dict:
    return {"cell_type": "markdown", "metadata": {"tags": tags} if tags else {}, "source": text}


def prose_cell(shown: str | None, tags: tuple[str, ...] = (), meta: dict | None = None) -> dict:
    metadata = {**(PROSE_META if meta is None else meta)}
    metadata["tags"] = [*metadata.get("tags", []), *tags]
    outputs = []
    if shown is not None:
        outputs = [{"output_type": "display_data", "data": {"text/markdown": shown, "text/plain": shown}}]
    return {
        "cell_type": "code",
        "metadata": metadata,
        "source": 'prose(r"""\nAcc {{acc}}.\n""")',
        "outputs": outputs,
    }


def notebook(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


WARNING = "> **Common pitfalls**\n>\n> - **Forgetting `zero_grad`**: gradients add up.\n> - Two."
DROPDOWN = "<details>\n<summary>Going further: TF32</summary>\n\nTensor cores *multiply*.\n\n</details>"


def test_a_quote_box_becomes_an_admonition_with_its_title_and_class():
    assert markup.box_to_myst("warning", WARNING) == (
        "```{admonition} Common pitfalls\n:class: warning\n"
        "- **Forgetting `zero_grad`**: gradients add up.\n- Two.\n```\n"
    )


def test_a_details_box_becomes_a_dropdown_admonition():
    assert markup.box_to_myst("dropdown", DROPDOWN) == (
        "```{admonition} Going further: TF32\n:class: dropdown\nTensor cores *multiply*.\n```\n"
    )


def test_a_box_holding_a_code_fence_gets_a_longer_fence():
    text = "> **Note**\n>\n> ```bash\n> ls\n> ```"
    converted = markup.box_to_myst("note", text)
    assert converted.startswith("````{admonition} Note\n:class: note\n```bash\nls\n```\n````")


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("warning", "**Title**\n\nbody", "block quote"),
        ("warning", "> Title\n> body", "bold title"),
        ("tip", "> **Title**\nnot quoted", "block quote"),
        ("dropdown", "<details>\nno summary\n</details>", "<summary>Title</summary>"),
        ("dropdown", WARNING, "<details>"),
    ],
)
def test_a_malformed_box_is_an_error_that_says_what_form_it_needs(kind, text, message):
    with pytest.raises(ValueError, match=message):
        markup.box_to_myst(kind, text)


def test_box_kind_reads_one_known_tag():
    assert markup.box_kind(md("x", ["box-tip"])) == "tip"
    assert markup.box_kind(md("x", ["hide-cell"])) is None
    with pytest.raises(ValueError, match="box-danger"):
        markup.box_kind(md("x", ["box-danger"]))
    with pytest.raises(ValueError, match="one tag"):
        markup.box_kind(md("x", ["box-tip", "box-note"]))


def test_to_book_converts_markdown_boxes_and_boxed_prose_output_and_nothing_else():
    plain = md("Just text with `code`.")
    box = md(WARNING, ["box-warning"])
    boxed_prose = prose_cell("> **Results**\n>\n> Acc 97.3%.", tags=("box-note",))
    prose = prose_cell("Acc 97.3%.")
    nb = notebook(plain, box, boxed_prose, prose)
    assert markup.to_book(nb) == 2
    assert plain["source"] == "Just text with `code`."
    assert box["source"].startswith("```{admonition} Common pitfalls\n:class: warning\n")
    data = boxed_prose["outputs"][0]["data"]
    assert data["text/markdown"] == "```{admonition} Results\n:class: note\nAcc 97.3%.\n```\n"
    assert prose["outputs"][0]["data"]["text/markdown"] == "Acc 97.3%."


def test_to_book_refuses_a_box_tag_on_a_plain_code_cell():
    cell = {"cell_type": "code", "metadata": {"tags": ["box-note"]}, "source": "x = 1", "outputs": []}
    with pytest.raises(ValueError, match="Markdown cell or a prose cell"):
        markup.to_book(notebook(cell))


def test_an_executed_portable_notebook_reads_right():
    nb = notebook(
        md("# Title\n\nText with $x^{2}$ and `{glue}` in code."),
        md(WARNING, ["box-warning"]),
        prose_cell("Acc 97.3%."),
    )
    assert markup.reader_problems(nb) == []


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        (md("Accuracy {glue:}`acc` here."), "a {glue:}` role"),
        (md("Value {eval}`x` here."), "a {eval}` role"),
        (
            md("```{admonition} Common pitfalls\n:class: warning\n- x\n```"),
            "a ```{admonition} Common pitfalls directive",
        ),
        (md("```{note}\nx\n```"), "a ```{note} directive"),
        (md("(sec-loop)=\n## The loop"), "a target (sec-loop)="),
        (prose_cell(None), "shows no paragraph"),
        (prose_cell("Acc {{acc}}."), "an unfilled {{acc}}"),
        (prose_cell("Acc {glue:}`acc`."), "a {glue:}` role"),
    ],
)
def test_reader_problems_name_the_cell_and_what_shows_raw(cell, problem):
    (found,) = markup.reader_problems(notebook(md("# Title"), cell))
    assert found.startswith("cell 1 (")
    assert found.endswith(problem)


def test_a_code_block_that_merely_shows_myst_is_not_raw_myst():
    assert markup.reader_problems(notebook(md("Write:\n\n```md\n{glue:}`x`\n```"))) == []


def test_source_problems_require_the_prose_metadata_for_all_three_places():
    assert markup.source_problems(notebook(prose_cell(None))) == []
    bare = prose_cell(None, meta={})
    problems = markup.source_problems(notebook(bare))
    assert [p.split(": ", 1)[1] for p in problems] == [
        "a prose cell needs the 'remove-input' tag",
        "a prose cell needs jupyter.source_hidden (JupyterLab)",
        "a prose cell needs cellView 'form' (Colab)",
    ]


def test_a_prose_cell_without_a_placeholder_belongs_in_markdown():
    cell = prose_cell(None)
    cell["source"] = 'prose(r"""\nNo values here.\n""")'
    (problem,) = markup.source_problems(notebook(cell))
    assert problem.endswith("a prose cell quotes no {{name}}: make it a Markdown cell")


def test_source_problems_check_boxes_and_raw_myst():
    cells = [
        md("> Title\n> body", ["box-note"]),
        md("See {glue:}`x`."),
        {"cell_type": "code", "metadata": {"tags": ["box-tip"]}, "source": "1", "outputs": []},
    ]
    problems = markup.source_problems(notebook(*cells))
    assert len(problems) == 3
    assert "bold title" in problems[0]
    assert problems[1].endswith("a {glue:}` role")
    assert problems[2].endswith("belongs on a Markdown or prose cell")


def stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def record(name):
    return {
        "output_type": "display_data",
        "data": {"application/papermill.record/text/plain": "1"},
        "metadata": {"scrapbook": {"name": name}},
    }


def figure():
    return {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Figure>"}}


def code_cell(*outputs):
    return {"cell_type": "code", "source": "", "metadata": {}, "outputs": list(outputs)}


def test_merge_streams_joins_prints_split_only_by_glue_records_and_keeps_them():
    cell = code_cell(stream("train 1149\n"), record("n_train"), stream(["85,002 ", "parameters\n"]))
    assert markup.merge_streams(notebook(cell)) == 1
    assert [o["output_type"] for o in cell["outputs"]] == ["stream", "display_data"]
    assert cell["outputs"][0]["text"] == "train 1149\n85,002 parameters\n"


def test_merge_streams_keeps_text_printed_after_a_figure_after_it():
    cell = code_cell(stream("before\n"), figure(), stream("after\n"), record("x"), stream("more\n"))
    assert markup.merge_streams(notebook(cell)) == 1
    assert [o.get("text") for o in cell["outputs"]] == ["before\n", None, "after\nmore\n", None]


def test_merge_streams_keeps_stdout_and_stderr_apart_and_skips_markdown_cells():
    cell = code_cell(stream("out\n"), stream("warn\n", "stderr"), stream("out 2\n"))
    nb = notebook(md("text"), cell)
    assert markup.merge_streams(nb) == 1
    assert [(o["name"], o["text"]) for o in cell["outputs"]] == [
        ("stdout", "out\nout 2\n"),
        ("stderr", "warn\n"),
    ]


def test_merge_streams_leaves_each_progress_line_in_its_final_state():
    cell = code_cell(stream("epoch  10%\repoch  50%\repoch 100%\r\nloss 0.3\n"), stream("a\rb\n"))
    markup.merge_streams(notebook(cell))
    assert cell["outputs"][0]["text"] == "epoch 100%\nloss 0.3\nb\n"

"""The chapters' portable Markdown, and the MyST the book build turns it into.

Readers meet a chapter in three places: the built book (MyST, rendered by Jupyter Book),
JupyterLab and Colab (plain Jupyter Markdown, where MyST shows raw). So the committed
notebooks hold only portable Markdown:

- a paragraph that quotes run-dependent values is a *prose cell*: a code cell
  ``prose(r\"\"\"... {{name}} ...\"\"\")`` (``helpers.results.prose``) whose Markdown
  output is the paragraph with the values of this run. It is tagged ``remove-input``
  (the book shows only the paragraph) and its source is folded away in JupyterLab
  (``jupyter.source_hidden``) and Colab (``cellView: form``);
- a box is a Markdown cell (or a prose cell) tagged ``box-<kind>``: for ``warning``,
  ``note`` and ``tip`` a block quote whose first line is the bold title
  (``> **Common pitfalls**``); for ``dropdown`` an HTML ``<details>`` element with a
  ``<summary>`` title. Both read right as they are; ``to_book`` turns them into MyST
  admonitions for the book, after the notebook was executed and checked.

``merge_streams`` joins a cell's prints that only glue records split, for the book.
``reader_problems`` checks an executed notebook the way JupyterLab and Colab show it;
``source_problems`` checks a committed notebook's cells. scripts/build_book.py runs the
first on every chapter it executes, tests/test_project.py the second.
"""

from __future__ import annotations

import functools
import re

PROSE_TAG = "remove-input"
BOX_KINDS = ("warning", "note", "tip", "dropdown")
# A MyST role written inline, e.g. {glue:}`name` or {eval}`x`, or a target (label)=.
_ROLE = re.compile(r"\{[A-Za-z][\w:-]*\}`")
_TARGET = re.compile(r"^\s*\([\w-]+\)=\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")


@functools.cache
def _markdown():
    # Imported when first needed: scripts that only import build_book (the CPU matrix)
    # run in environments without the book's Markdown parser.
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table")


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def is_prose(cell: dict) -> bool:
    """A code cell that shows a paragraph through ``prose(...)``."""
    return cell["cell_type"] == "code" and source(cell).lstrip().startswith("prose(")


def box_kind(cell: dict) -> str | None:
    """The ``box-<kind>`` a cell is tagged with, or None; an unknown kind is an error."""
    tags = [t for t in cell.get("metadata", {}).get("tags", []) if t.startswith("box-")]
    if not tags:
        return None
    kinds = [t.removeprefix("box-") for t in tags]
    if len(kinds) > 1 or kinds[0] not in BOX_KINDS:
        raise ValueError(f"a box cell needs one tag of {['box-' + k for k in BOX_KINDS]}, got {tags}")
    return kinds[0]


def markdown_output(cell: dict) -> str | None:
    """The text/markdown a code cell displayed (a prose cell's paragraph), if any."""
    for output in cell.get("outputs", []):
        text = output.get("data", {}).get("text/markdown")
        if text is not None:
            return "".join(text) if isinstance(text, list) else text
    return None


def _fence(body: str) -> str:
    longest = max((len(m[0]) for m in re.finditer(r"^\s*(`{3,})", body, re.MULTILINE)), default=2)
    return "`" * max(3, longest + 1)


def box_to_myst(kind: str, text: str) -> str:
    """Turn a box's portable Markdown into a MyST admonition; ValueError if malformed."""
    text = text.strip("\n")
    if kind == "dropdown":
        match = re.fullmatch(
            r"<details>\s*<summary>(?P<title>.+?)</summary>\n(?P<body>.*)\n</details>",
            text,
            re.DOTALL,
        )
        if not match:
            raise ValueError(
                "a box-dropdown cell is <details>, <summary>Title</summary>, the body, "
                f"</details>; it starts {text[:60]!r}"
            )
        title, body = match["title"].strip(), match["body"].strip("\n")
    else:
        lines = text.splitlines()
        if not lines or any(line and not line.startswith(">") for line in lines):
            raise ValueError(
                f"a box-{kind} cell is a block quote ('> ' on every line); it starts {text[:60]!r}"
            )
        lines = [re.sub(r"^> ?", "", line) for line in lines]
        match = re.fullmatch(r"\*\*(?P<title>.+)\*\*", lines[0].strip())
        if not match:
            raise ValueError(
                f"a box-{kind} cell's first line is its bold title (> **Title**), got {lines[0]!r}"
            )
        title, body = match["title"], "\n".join(lines[1:]).strip("\n")
    fence = _fence(body)
    return f"{fence}{{admonition}} {title}\n:class: {kind}\n{body}\n{fence}\n"


def to_book(notebook: dict) -> int:
    """Rewrite a notebook's boxes as MyST admonitions, in place; returns how many."""
    converted = 0
    for cell in notebook["cells"]:
        kind = box_kind(cell)
        if kind is None:
            continue
        if cell["cell_type"] == "markdown":
            cell["source"] = box_to_myst(kind, source(cell))
        elif is_prose(cell):
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                if "text/markdown" in data:
                    text = data["text/markdown"]
                    text = "".join(text) if isinstance(text, list) else text
                    data["text/markdown"] = box_to_myst(kind, text)
        else:
            raise ValueError("a box-* tag belongs on a Markdown cell or a prose cell")
        converted += 1
    return converted


# What glue (helpers.results.record) leaves in a cell's outputs: data for the page's
# {glue} roles, which the page itself never shows.
_RECORD_MIME = "application/papermill.record/"


def _shown(output: dict) -> bool:
    """Whether the page shows ``output``: anything but a stream or a glue record."""
    return not all(mime.startswith(_RECORD_MIME) for mime in output.get("data", {}))


def _as_terminal_shows(text: str) -> str:
    """``text`` with each line cut to what follows its last carriage return (a bar's final state)."""
    lines = []
    for line in text.split("\n"):
        parts = [part for part in line.split("\r") if part]
        lines.append(parts[-1] if parts else "")
    return "\n".join(lines)


def merge_streams(notebook: dict) -> int:
    """Join each cell's consecutive prints into one block, in place; returns how many joined.

    A cell that prints, records a value with glue and prints again has three outputs,
    and the page would show two text blocks where a notebook reader sees one. Streams
    of the same name are joined across glue records only: text printed after a figure
    stays after it, as in JupyterLab. Each stream's carriage returns (text progress
    bars) are resolved as a terminal would, keeping each line's final state.
    """
    joined = 0
    for cell in notebook["cells"]:
        outputs, open_streams = [], {}
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                text = output["text"]
                text = "".join(text) if isinstance(text, list) else text
                name = output["name"]
                if name in open_streams:
                    open_streams[name]["text"] += text
                    joined += 1
                    continue
                output["text"] = text
                open_streams[name] = output
            elif _shown(output):
                open_streams = {}
            outputs.append(output)
        for output in outputs:
            if output["output_type"] == "stream":
                output["text"] = _as_terminal_shows(output["text"])
        if "outputs" in cell:
            cell["outputs"] = outputs
    return joined


def _raw_myst(markdown: str) -> list[str]:
    """MyST that plain Jupyter Markdown would show as raw text or as a code block."""
    found = []
    for token in _markdown().parse(markdown):
        if token.type == "fence" and token.info.strip().startswith("{"):
            found.append(f"a ```{token.info.strip()} directive")
        if token.type == "inline":
            # Text as a reader sees it, with each code span's content blanked out: what
            # a code span shows is code, not markup.
            text = "".join(
                "`code`" if child.type == "code_inline" else child.content for child in token.children or []
            )
            found += [f"a {m[0]} role" for m in _ROLE.finditer(text)]
            found += [f"an unfilled {m[0]}" for m in _PLACEHOLDER.finditer(text)]
    found += [f"a target {m[0].strip()}" for m in _TARGET.finditer(markdown)]
    return found


def _where(index: int, cell: dict) -> str:
    first = source(cell).strip().splitlines()[:1]
    return f"cell {index} ({first[0][:50] if first else 'empty'!r})"


def reader_problems(notebook: dict) -> list[str]:
    """What is wrong with an executed notebook as JupyterLab and Colab show it."""
    problems = []
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "markdown":
            problems += [f"{_where(index, cell)}: {p}" for p in _raw_myst(source(cell))]
        elif is_prose(cell):
            shown = markdown_output(cell)
            if shown is None:
                problems.append(f"{_where(index, cell)}: the prose cell shows no paragraph")
            else:
                problems += [f"{_where(index, cell)}: {p}" for p in _raw_myst(shown)]
    return problems


def source_problems(notebook: dict) -> list[str]:
    """What is wrong with a committed notebook's portable Markdown and prose cells."""
    problems = []
    for index, cell in enumerate(notebook["cells"]):
        where = _where(index, cell)
        if cell["cell_type"] == "markdown":
            problems += [f"{where}: {p}" for p in _raw_myst(source(cell))]
        if is_prose(cell):
            meta = cell.get("metadata", {})
            if PROSE_TAG not in meta.get("tags", []):
                problems.append(f"{where}: a prose cell needs the {PROSE_TAG!r} tag")
            if meta.get("jupyter", {}).get("source_hidden") is not True:
                problems.append(f"{where}: a prose cell needs jupyter.source_hidden (JupyterLab)")
            if meta.get("cellView") != "form":
                problems.append(f"{where}: a prose cell needs cellView 'form' (Colab)")
            if not _PLACEHOLDER.search(source(cell)):
                problems.append(f"{where}: a prose cell quotes no {{{{name}}}}: make it a Markdown cell")
        try:
            kind = box_kind(cell)
            if kind and cell["cell_type"] == "markdown":
                box_to_myst(kind, source(cell))
            elif kind and not is_prose(cell):
                problems.append(f"{where}: a box-* tag belongs on a Markdown or prose cell")
        except ValueError as error:
            problems.append(f"{where}: {error}")
    return problems

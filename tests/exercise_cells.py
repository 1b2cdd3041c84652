"""Read a chapter's exercise cells, for the tests of its checkers (tests/test_exercises_chNN.py).

A chapter's starter cells carry the tag ``exercise-starter``; its solution cells are the
collapsed cells that follow them. ``run_starter`` executes a starter exactly as the
chapter has it, in a fresh namespace, and returns what it printed.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parent.parent
STARTER_TAG = "exercise-starter"


def starter_cells(chapter: str) -> list[str]:
    """The sources of the starter cells of ``chapters/<chapter>*.py``, in order."""
    (path,) = (ROOT / "chapters").glob(f"{chapter}*.py")
    notebook = jupytext.read(path)
    return [
        cell.source
        for cell in notebook.cells
        if cell.cell_type == "code" and STARTER_TAG in cell.metadata.get("tags", [])
    ]


def run_starter(source: str, **namespace: object) -> str:
    """Execute one starter cell as the chapter has it; ``namespace`` supplies chapter names it uses."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(source, "<starter cell>", "exec"), dict(namespace))
    return output.getvalue()

"""Every executed chapter as a reader sees it in JupyterLab after Run All.

scripts/build_book.py keeps each notebook it executed, before the book's MyST is put in,
in ``_stage/reader/``: exactly what a reader's JupyterLab or Colab holds after running
every cell. These tests open each one in this project's own JupyterLab, in headless
Chromium, and read the rendered page: no MyST shows raw, every paragraph that quotes the
run is shown with its numbers, and the code of those paragraphs is folded away.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READER = ROOT / "_stage" / "reader"
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
# What plain Jupyter Markdown shows when MyST is left in a notebook.
RAW_MYST = ["{glue", "{eval}", "{{", "```{", ":class:"]
# Render every cell, not only those scrolled into view, so the whole notebook is read.
NOTEBOOK_SETTINGS = {"windowingMode": "none"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def jupyterlab(tmp_path_factory) -> Iterator[str]:
    if not all((READER / f"{name}.ipynb").exists() for name in CHAPTERS):
        pytest.fail(f"no executed notebooks in {READER}: run `bash scripts/book.sh` first")
    settings = tmp_path_factory.mktemp("lab-settings")
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps(NOTEBOOK_SETTINGS))
    port = _free_port()
    log = (tmp_path_factory.mktemp("lab-log") / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            f"--ServerApp.root_dir={READER}", "--IdentityProvider.token=", "--ServerApp.password=",
            "--ServerApp.allow_root=True",
            f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={settings}",
        ],
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, JUPYTER_NO_CONFIG="1"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start: see {log.name}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _open_alone(page, jupyterlab: str, filename: str) -> None:
    """Open one notebook in a workspace of its own, reset, so no earlier tab is restored.

    JupyterLab saves its open tabs in the server's workspace; through the default one every
    page would reopen every notebook an earlier test opened, all rendering at once.
    """
    workspace = Path(filename).stem.replace("_", "-")
    page.goto(f"{jupyterlab}/lab/workspaces/{workspace}/tree/{filename}?reset", timeout=120_000)


def _wait_for_idle_kernel(jupyterlab: str, filename: str, timeout: float = 180) -> None:
    """Wait until the server reports the notebook's kernel started and idle."""
    deadline = time.monotonic() + timeout
    state = "no session"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{jupyterlab}/api/sessions", timeout=10) as response:
            sessions = json.load(response)
        kernels = [s["kernel"] for s in sessions if s["path"] == filename and s.get("kernel")]
        states = [kernel["execution_state"] for kernel in kernels]
        state = states[0] if states else "no session"
        if state == "idle":
            return
        time.sleep(0.5)
    pytest.fail(f"the kernel of {filename} is not idle after {timeout:.0f} s (last state: {state})")


def _cell_counts(name: str) -> tuple[int, int]:
    """How many Markdown cells and prose cells the executed notebook holds."""
    cells = json.loads((READER / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    markdown = sum(c["cell_type"] == "markdown" for c in cells)
    # a prose cell calls prose() once, at the start of a line; `record` calls may come first
    prose = sum(
        c["cell_type"] == "code" and re.search(r"^prose\(", "".join(c["source"]), re.MULTILINE) is not None
        for c in cells
    )
    return markdown, prose


@pytest.mark.xdist_group("jupyterlab")
@pytest.mark.parametrize("name", CHAPTERS)
def test_notebook_reads_right_in_jupyterlab_after_run_all(browser, jupyterlab, screenshots, name):
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        _open_alone(page, jupyterlab, f"{name}.ipynb")
        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook")
        notebook.locator(".jp-Cell").first.wait_for(timeout=120_000)
        markdown, prose = _cell_counts(name)
        rendered_cells = notebook.locator(".jp-MarkdownCell .jp-RenderedMarkdown")
        shown = notebook.locator(".jp-OutputArea-output.jp-RenderedMarkdown")
        deadline = time.monotonic() + 90
        while (rendered_cells.count(), shown.count()) != (markdown, prose) and time.monotonic() < deadline:
            time.sleep(0.5)
        if shown.count():
            shown.first.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshots / f"jupyterlab-{name}.png"))
        assert rendered_cells.count() == markdown, (
            f"{name}: {rendered_cells.count()} of {markdown} Markdown cells rendered"
        )
        assert shown.count() == prose, f"{name}: {shown.count()} of {prose} prose paragraphs rendered"
        rendered = notebook.locator(".jp-RenderedMarkdown")
        text = "\n".join(rendered.all_inner_texts())
        raw = {marker: text.count(marker) for marker in RAW_MYST if marker in text}
        assert raw == {}, f"{name} shows raw MyST in JupyterLab: {raw}"
        # A MyST directive fence renders as a code block whose language is "{name}".
        assert rendered.locator("code[class*='language-{']").count() == 0, f"{name} shows a MyST directive"
        folded = notebook.locator(
            ".jp-Cell:has(.jp-OutputArea-output.jp-RenderedMarkdown) .jp-InputPlaceholder"
        )
        assert folded.count() == prose, f"{name}: the code of some prose cells is not folded away"
    finally:
        page.close()


def _starter(chapter: str, index: int) -> str:
    """The source of a chapter's ``index``-th exercise starter cell, as the chapter has it."""
    import jupytext

    (path,) = (ROOT / "chapters").glob(f"{chapter}_*.py")
    cells = jupytext.read(path).cells
    return [c.source for c in cells if "exercise-starter" in c.metadata.get("tags", [])][index]


def _run_and_read(page, cell, text: str, expected: str) -> str:
    """Replace ``cell``'s code with ``text`` as a reader would, run it, return its output."""
    editor = cell.locator(".cm-content")
    page.keyboard.press("Escape")  # close a notification or completer that covers the cell
    editor.click(force=True, timeout=90_000)
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)  # no auto-indent or auto-closed brackets
    typed = [line.rstrip() for line in editor.inner_text().splitlines() if line.strip()]
    assert typed == [line.rstrip() for line in text.splitlines() if line.strip()], "the code was not typed"
    output, prompt = cell.locator(".jp-OutputArea"), cell.locator(".jp-InputPrompt")
    before = prompt.inner_text()  # "[ ]:" or the last run's "[n]:"; "[*]:" once queued
    deadline = time.monotonic() + 150
    pressed = 0.0
    while expected not in output.inner_text() and time.monotonic() < deadline:
        # A busy page can drop a key press: press again only while the prompt shows
        # that this run was never queued, 20 s after the last press.
        if prompt.inner_text() == before and time.monotonic() - pressed > 20:
            editor.click(force=True, timeout=90_000)
            page.keyboard.press("Shift+Enter")
            pressed = time.monotonic()
        time.sleep(0.5)
    return output.inner_text()


@pytest.mark.xdist_group("jupyterlab")
def test_a_reader_fills_in_a_starter_in_jupyterlab_and_the_checker_answers(browser, jupyterlab, screenshots):
    """Chapter 1, exercise 3: untouched, the usual mistake, then a right answer, typed in JupyterLab."""
    starter = _starter("01", 2)
    head, call = starter.split("    raise NotImplementedError  # your code here\n")
    notebook = READER / "_reader_tries_exercise_1_3.ipynb"
    setup_source = "import torch  # the chapter's setup cell, in short\nprint('ready')"
    setup, cell = (
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": source}
        for source in (setup_source, starter)
    )
    notebook.write_text(json.dumps({
        "cells": [setup, cell], "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    }))  # fmt: skip
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    try:
        _open_alone(page, jupyterlab, notebook.name)
        cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell")
        cells.first.wait_for(timeout=120_000)
        _wait_for_idle_kernel(jupyterlab, notebook.name)
        # Run the setup cell and wait for its output.
        assert "ready" in _run_and_read(page, cells.first, setup_source, "ready")
        cell = cells.nth(1)
        untouched = _run_and_read(page, cell, starter, "Exercise 1.3")
        assert "… Exercise 1.3: not attempted yet: fill in `logsumexp_rows` above" in untouched
        literal = head + "    return z.exp().sum(dim=1).log()\n" + call
        wrong = _run_and_read(page, cell, literal, "Hint")
        page.screenshot(path=str(screenshots / "jupyterlab-exercise-hint.png"))
        assert "✗ Exercise 1.3" in wrong and "subtract each row's maximum before exp" in wrong
        right = (
            head
            + "    m = z.amax(dim=1, keepdim=True)\n"
            + "    m = torch.where(m.isinf(), 0.0, m)\n"
            + "    return (z - m).exp().sum(dim=1).log() + m[:, 0]\n"
        )
        assert "✓ Exercise 1.3: matches torch.logsumexp" in _run_and_read(page, cell, right + call, "✓")
    finally:
        page.close()
        notebook.unlink()

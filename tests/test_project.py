"""Checks of the project's own files: notebook pairs, the Colab guard, the repository
address, the conda environment and the torch/torchvision pair."""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import json
import re
import tempfile
import tomllib
import warnings
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch
import torchvision
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"]
_spec = importlib.util.spec_from_file_location("notebook_markup", ROOT / "scripts" / "notebook_markup.py")
notebook_markup = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(notebook_markup)
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_chapter_has_a_notebook_and_every_notebook_a_chapter():
    assert [p.stem for p in CHAPTERS] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_pair_is_in_sync(chapter):
    """The .py and the .ipynb hold the same cells (run `jupytext --sync chapters/*.py` to fix)."""
    from_py = jupytext.read(chapter)
    from_ipynb = nbformat.read(ROOT / "book" / f"{chapter.stem}.ipynb", as_version=4)
    assert _cells(from_py) == _cells(from_ipynb), f"{chapter.name} and its notebook differ"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(notebook):
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{notebook.name} has outputs"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_holds_only_markdown_that_jupyterlab_and_colab_render(notebook):
    """No MyST roles or directives; prose cells and boxes in their portable form."""
    assert notebook_markup.source_problems(json.loads(notebook.read_text(encoding="utf-8"))) == []


def _recorded_names(source: str) -> list[str]:
    """Regexes for the names a code cell records: a literal name, or an f-string's shape."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "record" and node.args):
            continue
        name = node.args[0]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            found.append(re.escape(name.value))
        elif isinstance(name, ast.JoinedStr):
            found.append(
                "".join(re.escape(p.value) if isinstance(p, ast.Constant) else r"\w+" for p in name.values)
            )
        else:
            # A name held in a variable: any name may be recorded here, and only the
            # run itself (prose raises for a name not yet recorded) checks what follows.
            found.append(r"\w+")
    return found


def test_recorded_names_cover_literal_and_formatted_names():
    source = 'record("acc", 1)\nfor k in ks:\n    record(f"val_{k}_x", k)\nprint("record")\nrecord(key, 2)'
    assert sorted(_recorded_names(source)) == sorted(["acc", r"val_\w+_x", r"\w+"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_prose_cell_holds_its_paragraph_and_nothing_after_it(notebook):
    """Lines after prose(...) are hidden with its code: a heading there would vanish from the page."""
    for cell in nbformat.read(notebook, as_version=4).cells:
        source = cell.source.strip()
        if cell.cell_type == "code" and source.startswith("prose("):
            tail = source[source.rfind('"""') :]
            assert source.endswith(")"), f"{notebook.name}: text after a prose cell's call: {tail[:120]!r}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_quotes_only_values_recorded_above_it(notebook):
    """A notebook runs top to bottom: a paragraph can quote only what is already recorded."""
    recorded: list[str] = []
    late = []
    for cell in nbformat.read(notebook, as_version=4).cells:
        if notebook_markup.is_prose(cell):
            names = re.findall(r"\{\{\s*(\w+)\s*\}\}", cell.source)
            late += [n for n in names if not any(re.fullmatch(p, n) for p in recorded)]
        elif cell.cell_type == "code":
            recorded += _recorded_names(cell.source)
    assert late == [], f"{notebook.name}: prose quotes {late}, recorded only further down"


# Calls whose return value is bookkeeping, not a result: as a cell's last line the page
# would echo it ("<All keys matched successfully>").
_SILENT_CALLS = {"load_state_dict"}


def _echoed_call(source: str) -> str | None:
    """The name of a bookkeeping call that ends the cell and would be echoed, if any."""
    body = ast.parse(source).body
    if not body or not isinstance(body[-1], ast.Expr) or not isinstance(body[-1].value, ast.Call):
        return None
    func = body[-1].value.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name if name in _SILENT_CALLS else None


def test_echoed_call_spots_a_trailing_load_state_dict_and_nothing_else():
    assert _echoed_call("model.load_state_dict(state)") == "load_state_dict"
    assert _echoed_call("x = 1\nrecord('x', x)") is None
    assert _echoed_call("_ = model.load_state_dict(state)") is None
    assert _echoed_call("x") is None


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_cell_ends_in_a_call_the_page_would_echo(chapter):
    nb = jupytext.read(chapter)
    for cell in nb.cells:
        if cell.cell_type == "code" and not cell.source.lstrip().startswith(("%", "!")):
            name = _echoed_call(cell.source)
            assert name is None, f"{chapter.name}: a cell ends in {name}(...):\n{cell.source[-300:]}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_is_the_colab_guard(notebook):
    nb = nbformat.read(notebook, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    assert 'if "google.colab" in sys.modules:' in first
    assert f'repository = "{REPO_URL}"' in first and 'f"git+{repository}"' in first
    # nothing else may install anything
    rest = [c.source for c in nb.cells if c.cell_type == "code"][1:]
    assert not any(re.search(r"pip\b.*install", src) for src in rest)


def test_colab_guard_does_nothing_outside_colab(capsys):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code").source
    namespace: dict = {}
    exec(compile(first, "guard", "exec"), namespace)  # must not try to install anything here
    assert "subprocess" not in namespace
    assert capsys.readouterr().out == ""


def test_table_of_contents_lists_every_chapter_in_order_then_the_status_page():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    # status.md is generated by scripts/build_book.py at build time, never committed
    assert files == [p.stem for p in NOTEBOOKS] + ["status"]
    assert not (ROOT / "book" / "status.md").exists()


# GitHub repositories that are not this book's and that its documents link to.
OTHER_REPOSITORIES = {"googlecolab/backend-info"}  # Colab's package list


def test_repository_address_is_the_same_everywhere():
    assert PYPROJECT["project"]["urls"]["Repository"] == REPO_URL
    slug = REPO_URL.removeprefix("https://github.com/")
    for doc in ("README.md", "book/intro.md"):
        text = (ROOT / doc).read_text()
        for found in re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+)", text):
            if found in OTHER_REPOSITORIES:
                continue
            assert found == slug, f"{doc} links to {found}, _config.yml says {slug}"


def _project_requirements() -> dict[str, Requirement]:
    names = PYPROJECT["project"]["dependencies"] + PYPROJECT["dependency-groups"]["dev"]
    reqs = [Requirement(r) for r in names]
    return {r.name.lower(): r for r in reqs}


CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _environment_yml() -> tuple[dict[str, Requirement], list]:
    """environment.yml's conda requirements and its pip section parsed by pip itself."""
    with warnings.catch_warnings():
        # setuptools' distutils shim warns when pip is imported after distutils, which
        # torch.utils.benchmark (chapter 08's checkers, tested in this same process)
        # imports through torch.utils.cpp_extension; the order says nothing about pip.
        warnings.filterwarnings("ignore", "Setuptools is replacing distutils", UserWarning)
        from pip._internal.network.session import PipSession
        from pip._internal.req.req_file import parse_requirements

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip_lines = {}, []
    for item in env["dependencies"]:
        if isinstance(item, dict):
            pip_lines += item["pip"]
        elif not item.startswith("python"):
            req = Requirement(item)
            conda[CONDA_NAMES.get(req.name, req.name).lower()] = req
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "requirements.txt"
        path.write_text("\n".join(pip_lines) + "\n")
        # pip's own requirements-file rules: a line such as `--no-deps -e .` raises here
        parsed = list(parse_requirements(str(path), session=PipSession()))
    return conda, parsed


def test_environment_yml_pip_section_is_valid_for_pip_and_installs_this_package():
    _, parsed = _environment_yml()
    editable = [p.requirement for p in parsed if p.is_editable]
    assert editable == ["."], "the pip section must install this folder (-e .)"


def test_environment_yml_names_the_same_packages_and_minimums():
    conda, parsed = _environment_yml()
    for p in parsed:
        if not p.is_editable:
            req = Requirement(p.requirement)
            conda[req.name.lower()] = req
    project = _project_requirements()
    assert sorted(conda) == sorted(project)
    for name, req in project.items():
        assert conda[name].specifier == req.specifier, f"{name}: {conda[name].specifier} vs {req.specifier}"


def test_torchvision_compiled_ops_work_with_this_torch():
    """A mismatched torch/torchvision pair fails here ("operator torchvision::nms does not exist")."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = torchvision.ops.nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]  # box 1 overlaps box 0 with IoU 81/119 > 0.5


def test_readme_commands_are_the_scripts_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci
    assert "bash scripts/book.sh" in readme
    assert "bash scripts/book.sh" in (ROOT / "scripts" / "test.sh").read_text()


_EXERCISE = re.compile(r"^\*\*Exercise (\d+)\.\*\*", re.MULTILINE)
_CHECK_CALL = re.compile(r"^(?:assert )?(check_\w+)\(", re.MULTILINE)


def _exercise_cells(notebook: Path) -> dict[int, list]:
    """Each exercise's cells: from its **Exercise N.** paragraph to the next one or the summary."""
    cells = nbformat.read(notebook, as_version=4).cells
    found: dict[int, list] = {}
    current = None
    for cell in cells:
        if cell.cell_type == "markdown":
            numbers = _EXERCISE.findall(cell.source)
            if numbers:
                current = int(numbers[-1])
                found[current] = []
                continue
            if cell.source.lstrip().startswith("## "):
                current = None
        if current is not None:
            found[current].append(cell)
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_starter_that_checks_and_a_solution_that_asserts_the_same_check(notebook):
    exercises = _exercise_cells(notebook)
    assert len(exercises) >= 3, f"{notebook.name}: {len(exercises)} exercises"
    chapter = int(notebook.name[:2])
    for number, cells in exercises.items():
        code = [c for c in cells if c.cell_type == "code"]
        starters = [c for c in code if "exercise-starter" in c.metadata.get("tags", [])]
        assert len(starters) == 1, f"exercise {number}: {len(starters)} starter cells"
        starter = starters[0]
        assert not {"hide-cell", "remove-input", "remove-cell"} & set(starter.metadata.get("tags", []))
        assert not starter.metadata.get("jupyter", {}).get("source_hidden"), (
            f"exercise {number}'s starter is hidden"
        )
        checks = _CHECK_CALL.findall(starter.source)
        assert checks, f"exercise {number}'s starter calls no checker"
        assert f"from helpers.exercises.ch{chapter:02d} import" in starter.source
        after = code[code.index(starter) + 1 :]
        solutions = [c for c in after if "hide-cell" in c.metadata.get("tags", [])]
        assert solutions, f"exercise {number} has no collapsed solution after its starter"
        solution_text = "\n".join(c.source for c in solutions)
        for check in checks:
            assert f"assert {check}(" in solution_text, (
                f"exercise {number}: the solution does not assert {check}"
            )
        # the checker is this exercise's: asked about a skeleton, it names the exercise
        module = importlib.import_module(f"helpers.exercises.ch{chapter:02d}")
        for check in checks:
            with contextlib.redirect_stdout(io.StringIO()):
                verdict = getattr(module, check)(...)
            assert (verdict.exercise, verdict.status) == (f"{chapter}.{number}", "not attempted"), check


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_shown_code_fits_the_books_column(chapter):
    """The book's code column shows 83 characters at 1366 px (the browser test measures it)."""
    for cell in jupytext.read(chapter).cells:
        if cell.cell_type == "code" and "remove-input" not in cell.metadata.get("tags", []):
            long = [line for line in cell.source.splitlines() if len(line) > 82]
            assert not long, f"{chapter.name}: a code line of {len(long[0])} characters: {long[0][:60]!r}"


# float64 before the move: on MPS, which has no float64, `.double()` fails while the
# tensor or module is still there; the CPU copy must come first.
_FLOAT64_BEFORE_MOVE = re.compile(r"\.(double\(\)|to\(torch\.float64\))\s*\.(cpu|to)\(")


@pytest.mark.parametrize("path", [*CHAPTERS, *sorted((ROOT / "helpers").rglob("*.py"))], ids=lambda p: p.name)
def test_float64_copies_move_to_the_cpu_before_they_change_dtype(path):
    text = Path(path).read_text()
    found = [m.group(0) for m in _FLOAT64_BEFORE_MOVE.finditer(text)]
    assert not found, f"{path}: float64 before the move to the CPU: {found}"


def test_float64_rule_spots_the_wrong_order_only():
    assert _FLOAT64_BEFORE_MOVE.search("copy.deepcopy(lm).double().cpu().eval()")
    assert _FLOAT64_BEFORE_MOVE.search("x.to(torch.float64).to(device)")
    assert not _FLOAT64_BEFORE_MOVE.search("copy.deepcopy(lm).cpu().double().eval()")


BOX_KINDS = ("warning", "note", "tip", "dropdown")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_box_has_the_shape_the_book_build_converts(path):
    """A box cell, Markdown or a prose cell's paragraph, is what build_book.py can convert.

    The build turns each into an admonition only after the chapter has executed; a badly
    shaped one would otherwise first fail there, minutes into a build.
    """
    problems = []
    for cell in jupytext.read(path).cells:
        kinds = [t.removeprefix("box-") for t in cell.metadata.get("tags", []) if t.startswith("box-")]
        if not kinds:
            continue
        text = cell.source
        if cell.cell_type == "code":
            call = ast.parse(cell.source).body[0].value
            assert isinstance(call, ast.Call) and call.func.id == "prose", cell.source[:60]
            text = call.args[0].value
        for kind in kinds:
            assert kind in BOX_KINDS, f"{path.stem}: unknown box kind {kind!r}"
            try:
                notebook_markup.box_to_myst(kind, text.strip("\n"))
            except ValueError as error:
                problems.append(f"{path.stem}: {error}")
    assert problems == []

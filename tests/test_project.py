"""Checks of the project's own files: notebook pairs, the Colab guard, the repository
address, the conda environment and the torch/torchvision pair."""

from __future__ import annotations

import re
import tomllib
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
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_there_are_chapters_and_every_one_has_a_notebook():
    assert len(CHAPTERS) >= 2, "no chapters found"
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


def test_table_of_contents_lists_every_chapter_in_order():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    assert files == [p.stem for p in NOTEBOOKS]


def test_repository_address_is_the_same_everywhere():
    assert PYPROJECT["project"]["urls"]["Repository"] == REPO_URL
    slug = REPO_URL.removeprefix("https://github.com/")
    for doc in ("README.md", "book/intro.md"):
        text = (ROOT / doc).read_text()
        for found in re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+)", text):
            assert found == slug, f"{doc} links to {found}, _config.yml says {slug}"


def _project_requirements() -> dict[str, Requirement]:
    names = PYPROJECT["project"]["dependencies"] + PYPROJECT["dependency-groups"]["dev"]
    reqs = [Requirement(r) for r in names]
    return {r.name.lower(): r for r in reqs}


CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def test_environment_yml_names_the_same_packages_and_minimums():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {}
    for item in env["dependencies"]:
        if isinstance(item, str) and not item.startswith(("python", "pip")):
            req = Requirement(item)
            conda[CONDA_NAMES.get(req.name, req.name).lower()] = req
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

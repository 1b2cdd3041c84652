"""The Colab snapshot (scripts/colab_stack.txt), the script that reads and refreshes it,
and its agreement with the floor pyproject.toml declares."""

from __future__ import annotations

import importlib.util
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "colab_stack.txt"
_spec = importlib.util.spec_from_file_location("colab_stack", ROOT / "scripts" / "colab_stack.py")
colab_stack = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(colab_stack)

FREEZE = """\
babel==2.19.0
torch @ https://download.pytorch.org/whl/cpu/torch-2.12.1%2Bcpu-cp313-cp313-manylinux_2_28_x86_64.whl
torchvision==0.27.0+cu128
PyYAML==6.0.4
jupyter_kernel_gateway @ git+https://github.com/googlecolab/kernel_gateway@b134e99
"""


def test_every_project_minimum_is_colabs_version():
    """The floor is Colab's stack: the lane that executes the chapters there tests it."""
    pins = colab_stack.read_pins(STACK)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for line in project:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is a dependency but not in {STACK.name}"
        (spec,) = requirement.specifier
        assert (spec.operator, spec.version) == (">=", pins[name]), f"{name}: {spec} vs Colab's {pins[name]}"


def test_snapshot_names_its_source_date_and_python():
    text = STACK.read_text()
    assert "github.com/googlecolab/backend-info" in text
    assert "# commit: a72407924822ea377410b69f0a290150bcb5c9c2" in text
    assert "# date: 2026-08-19" in text and "# python: 3.13 " in text
    assert "bash scripts/test_colab.sh" in (ROOT / ".ci" / "run").read_text()


def test_read_pins_rejects_a_line_that_is_not_an_exact_pin(tmp_path):
    stack = tmp_path / "stack.txt"
    stack.write_text("# comment\ntorch==2.11.0\nnumpy>=2.1\n")
    with pytest.raises(ValueError, match=r"stack.txt:3: expected 'name==version', got 'numpy>=2.1'"):
        colab_stack.read_pins(stack)


def test_read_freeze_takes_versions_from_pins_and_wheel_urls_without_local_tags():
    assert colab_stack.read_freeze(FREEZE) == {
        "babel": "2.19.0",
        "torch": "2.12.1",
        "torchvision": "0.27.0",
        "pyyaml": "6.0.4",
    }


def _small_stack(tmp_path: Path) -> Path:
    stack = tmp_path / "stack.txt"
    stack.write_text(
        "# commit: " + "a" * 40 + ' ("x")\n# date: 2026-08-19\n'
        "# python: 3.13 (Colab: 3.13.15)\ntorch==2.11.0\nbabel==2.18.0\nPyYAML==6.0.3\n"
    )
    return stack


def test_refresh_rewrites_versions_commit_date_and_python(tmp_path):
    stack = _small_stack(tmp_path)
    changes = colab_stack.refresh(stack, FREEZE, "b" * 40, "2026-11-30", "3.14.2")
    assert changes == ["torch: 2.11.0 -> 2.12.1", "babel: 2.18.0 -> 2.19.0", "PyYAML: 6.0.3 -> 6.0.4"]
    text = stack.read_text()
    assert "# commit: " + "b" * 40 + "\n# date: 2026-11-30\n" in text
    assert "# python: 3.14 (Colab: 3.14.2)" in text
    assert colab_stack.read_pins(stack) == {"torch": "2.12.1", "babel": "2.19.0", "pyyaml": "6.0.4"}


@pytest.mark.parametrize(
    ("freeze", "commit", "date", "message"),
    [
        ("torch==2.12.1\n", "b" * 40, "2026-11-30", "the new pip freeze lacks babel, pyyaml"),
        (FREEZE, "b1587f5", "2026-11-30", "--commit must be a full 40-character SHA, got 'b1587f5'"),
        (FREEZE, "b" * 40, "30/11/2026", "--date must be YYYY-MM-DD, got '30/11/2026'"),
    ],
)
def test_refresh_refuses_bad_input_and_leaves_the_file(tmp_path, freeze, commit, date, message):
    stack = _small_stack(tmp_path)
    before = stack.read_text()
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        colab_stack.refresh(stack, freeze, commit, date, "3.13.15")
    assert stack.read_text() == before


def test_check_names_every_package_not_at_colabs_version(tmp_path, capsys):
    here = metadata.version("pytest")
    stack = tmp_path / "stack.txt"
    stack.write_text(f"pytest=={here}\nnumpy==0.0.1\nno-such-package-here==1.0\n")
    assert colab_stack.main(["check", str(stack)]) == 1
    err = capsys.readouterr().err
    assert f"numpy: {metadata.version('numpy')} installed, Colab has 0.0.1" in err
    assert "no-such-package-here: not installed (Colab has 1.0)" in err
    assert "pytest" not in err

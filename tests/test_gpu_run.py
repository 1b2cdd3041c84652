"""scripts/gpu_run.py (every chapter on a CUDA GPU) and its section of the Status page."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))  # gpu_run imports build_book from beside it
spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "scripts" / "gpu_run.py")
gpu_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_run)
build_book = gpu_run.build_book

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="2">
<testcase classname="_stage.gpu.01_a" name="_stage/gpu/01_a.ipynb" file="_stage/gpu/01_a.ipynb" time="4.5"/>
<testcase classname="_stage.gpu.02_b" name="_stage/gpu/02_b.ipynb" file="_stage/gpu/02_b.ipynb" time="30.0">
<failure message="CellExecutionError&#10;AssertionError: accuracy 0.81&#10;more&#10;and more"/></testcase>
</testsuite></testsuites>"""


def test_without_a_gpu_it_stops_with_a_message(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU is available"):
        gpu_run.gpu_description()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A GPU that is not there, three notebooks, and an nbmake that writes JUNIT."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA Test GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    book = tmp_path / "book"
    book.mkdir()
    for name in ("01_a", "02_b", "03_c"):
        (book / f"{name}.ipynb").write_text("{}")
    monkeypatch.setattr(build_book, "BOOK", book)
    monkeypatch.setattr(build_book, "matrix_digest", lambda: "sources")
    monkeypatch.setattr(gpu_run, "ROOT", tmp_path)
    monkeypatch.setattr(gpu_run, "WORK", tmp_path / "_stage" / "gpu")
    monkeypatch.setattr(gpu_run, "REPORT", tmp_path / "_stage" / "gpu_run.json")
    commands = []

    def nbmake(command, cwd, env, check):
        commands.append(command)
        assert env["BOOK_PLAIN_PROGRESS"] == "1" and env["MPLBACKEND"] == "Agg"
        (tmp_path / "_stage" / "gpu" / "junit.xml").write_text(JUNIT)

    monkeypatch.setattr(gpu_run.subprocess, "run", nbmake)
    return commands


def test_the_report_gives_each_chapters_time_and_first_error_lines(fake_gpu, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    assert gpu_run.main(["--jobs", "2"]) == 1  # a chapter failed
    (command,) = fake_gpu
    assert command[command.index("-n") + 1] == "2" and "--nbmake" in command
    assert [Path(c).name for c in command if c.endswith(".ipynb")] == [
        "01_a.ipynb",
        "02_b.ipynb",
        "03_c.ipynb",
    ]
    report = json.loads((tmp_path / "_stage" / "gpu_run.json").read_text())
    assert json.loads((out / "gpu_run.json").read_text()) == report
    assert (report["gpu"], report["gpus"], report["jobs"], report["digest"]) == (
        "NVIDIA Test GPU",
        "2",
        2,
        "sources",
    )
    assert report["chapters"] == {
        "01_a.ipynb": {"seconds": 4.5, "passed": True, "error": ""},
        "02_b.ipynb": {
            "seconds": 30.0,
            "passed": False,
            "error": "CellExecutionError / AssertionError: accuracy 0.81 / more",
        },
        "03_c.ipynb": {"seconds": None, "passed": False, "error": "not run"},
    }
    printed = capsys.readouterr().out
    assert "01_a.ipynb" in printed and "4.5 s  passed" in printed and "FAILED: not run" in printed


def test_one_job_runs_without_xdist_and_bad_jobs_are_refused(fake_gpu, capsys):
    gpu_run.main(["--jobs", "1"])
    assert "-n" not in fake_gpu[0]
    with pytest.raises(SystemExit):
        gpu_run.main(["--jobs", "0"])
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err


def _report(tmp_path: Path, digest: str) -> Path:
    path = tmp_path / "gpu_run.json"
    chapters = {
        "01_a.ipynb": {"seconds": 4.5, "passed": True, "error": ""},
        "02_b.ipynb": {"seconds": 30.0, "passed": False, "error": "AssertionError: a | b"},
    }
    data = {"gpu": "NVIDIA H200", "gpus": "1", "cuda": "12.8", "torch": "2.15.0", "jobs": 3,
            "started": "2026-12-04 22:00 UTC", "digest": digest, "chapters": chapters}  # fmt: skip
    path.write_text(json.dumps(data))
    return path


def test_status_page_shows_gpu_times_only_from_a_run_of_these_sources(monkeypatch, tmp_path):
    monkeypatch.setattr(build_book, "matrix_digest", lambda: "current")
    lines = build_book.gpu_section(_report(tmp_path, "current"))
    assert "| 01_a | 4.5 | passed |" in lines
    assert "| 02_b | 30.0 | failed: `AssertionError: a \\| b` |" in lines
    assert "**NVIDIA H200**" in "\n".join(lines)
    stale = "\n".join(build_book.gpu_section(_report(tmp_path, "older")))
    assert "other sources" in stale and "| 01_a |" not in stale
    assert "No run of `scripts/test_gpu.sh`" in "\n".join(build_book.gpu_section(tmp_path / "absent.json"))

"""The CPU matrix: which levels it runs, what it reports, and what the Status page says."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cpu_matrix = _load("cpu_matrix")
build_book = _load("build_book")

# What nbmake writes for a failed cell: IPython's coloured traceback.
FAILURE = (
    "\x1b[31m---------\x1b[39m\n"
    "\x1b[31mAssertionError\x1b[39m                            Traceback (most recent call last)\n"
    "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[23]\x1b[39m\x1b[32m, line 51\x1b[39m\n"
    "\x1b[32m     50\x1b[39m record(\x1b[33m'x'\x1b[39m, 1)\n"
    "\x1b[32m---> \x1b[39m\x1b[32m51\x1b[39m \x1b[38;5;28;01massert\x1b[39;00m "
    "short_mse < 0.5 * chance_mse, short_mse\n"
    "\n\x1b[31mAssertionError\x1b[39m: 0.1393948197364807\n"
)


def test_a_failure_is_summarised_by_its_exception_and_the_line_that_raised_it():
    line = cpu_matrix.first_error_line(FAILURE)
    assert line == "AssertionError: 0.1393948197364807 at `assert short_mse < 0.5 * chance_mse, short_mse`"


def test_a_failure_without_an_ipython_pointer_still_names_the_exception():
    text = "Traceback (most recent call last):\n  File 'x'\nRuntimeError: CUDA error: device-side assert\n"
    assert cpu_matrix.first_error_line(text) == "RuntimeError: CUDA error: device-side assert"


def test_junit_outcomes_carry_the_failing_line(tmp_path):
    report = tmp_path / "junit.xml"
    # pytest writes characters XML forbids, such as ESC, as the text "#x1B"
    escaped = FAILURE.replace("\x1b", "#x1B").replace("<", "&lt;")
    report.write_text(
        '<?xml version="1.0"?><testsuites><testsuite>'
        '<testcase file="book/01_tensors.ipynb" name="01_tensors.ipynb" time="8.5"/>'
        f'<testcase file="book/04_rnn.ipynb" name="04_rnn.ipynb" time="16.6"><failure message="x">{escaped}'
        "</failure></testcase></testsuite></testsuites>"
    )
    outcomes = cpu_matrix.read_junit(report)
    assert outcomes["01_tensors.ipynb"] == {"passed": True, "seconds": 8.5, "error": ""}
    assert outcomes["04_rnn.ipynb"]["passed"] is False
    assert outcomes["04_rnn.ipynb"]["seconds"] == 16.6
    assert outcomes["04_rnn.ipynb"]["error"].startswith("AssertionError: 0.139")


@pytest.mark.parametrize(
    ("level", "mkl", "onednn"),
    [("default", "SSE4_2", "SSE41"), ("avx2", "AVX2", "AVX2"), ("avx512", "AVX512", "AVX512_CORE")],
)
def test_each_level_limits_torch_mkl_and_onednn_alike(level, mkl, onednn):
    env = cpu_matrix.level_env(level, seed=2, threads=1)
    assert env["ATEN_CPU_CAPABILITY"] == level
    assert env["MKL_ENABLE_INSTRUCTIONS"] == mkl
    assert env["ONEDNN_MAX_CPU_ISA"] == onednn
    assert env["BOOK_SEED"] == "2" and env["OMP_NUM_THREADS"] == "1" and env["BOOK_DEVICE"] == "cpu"


def test_an_unknown_level_is_an_error_that_names_it():
    with pytest.raises(ValueError, match="level must be one of"):
        cpu_matrix.level_env("avx10", seed=0, threads=1)


@pytest.mark.integration
def test_torch_runs_each_level_the_probe_says_this_cpu_has():
    # one fresh torch per level and one for the native level: the probe's real subprocesses
    levels, native = cpu_matrix.available_levels()
    assert "default" in levels  # every x86-64 and Arm CPU runs the plain kernels
    assert native in {report for level in levels for report in cpu_matrix.LEVELS[level]["report"]}


def test_a_level_torch_falls_back_from_is_left_out(monkeypatch):
    # a processor without AVX-512: asked for it, torch reports the AVX2 kernels it runs
    seen = []

    def fake_report(env):
        seen.append(env)
        if env is None:
            return "AVX2"
        level = env["ATEN_CPU_CAPABILITY"]
        # probed in the environment the chapters run in, library settings included
        assert env == cpu_matrix.level_env(level, seed=0, threads=1)
        return {"default": "DEFAULT", "avx2": "AVX2", "avx512": "AVX2"}[level]

    monkeypatch.setattr(cpu_matrix, "reported_capability", fake_report)
    assert cpu_matrix.available_levels() == (["default", "avx2"], "AVX2")
    assert len(seen) == 1 + len(cpu_matrix.LEVELS)


def _report(tmp_path: Path, digest: str, runs: list[dict]) -> Path:
    path = tmp_path / "cpu_matrix.json"
    path.write_text(json.dumps({"native": "AVX512", "digest": digest, "runs": runs}))
    return path


def _run(chapter: str, level: str, seconds: float, error: str = "") -> dict:
    return {
        "chapter": f"{chapter}.ipynb",
        "level": level,
        "seed": 0,
        "passed": not error,
        "seconds": seconds,
        "error": error,
    }


def test_status_page_shows_each_level_and_its_failures(monkeypatch, tmp_path):
    monkeypatch.setattr(build_book, "matrix_digest", lambda: "current")
    runs = [
        _run("01_tensors", "avx2", 8.0),
        _run("04_rnn", "avx2", 16.0, "AssertionError: a | b at `assert x`"),
        _run("01_tensors", "default", 9.0),
        _run("04_rnn", "default", 20.0),
    ]
    lines = build_book.cpu_matrix_section(_report(tmp_path, "current", runs))
    text = "\n".join(lines)
    assert "| avx2 | 0 | 1 of 2 | 24 | 04_rnn: `AssertionError: a \\| b at 'assert x'` |" in lines
    assert "| default | 0 | 2 of 2 | 29 | — |" in lines
    assert "**AVX512**" in text


def test_status_page_never_shows_a_matrix_run_of_other_sources(monkeypatch, tmp_path):
    monkeypatch.setattr(build_book, "matrix_digest", lambda: "current")
    runs = [
        {
            "chapter": "01_tensors.ipynb",
            "level": "avx2",
            "seed": 0,
            "passed": True,
            "seconds": 8.0,
            "error": "",
        }
    ]
    text = "\n".join(build_book.cpu_matrix_section(_report(tmp_path, "older", runs)))
    assert "other sources" in text and "| avx2 |" not in text
    missing = "\n".join(build_book.cpu_matrix_section(tmp_path / "absent.json"))
    assert "No CPU-matrix run" in missing


def test_the_matrix_digest_changes_with_a_notebook(monkeypatch, tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "01_a.ipynb").write_text("one")
    monkeypatch.setattr(build_book, "BOOK", tmp_path / "book")
    monkeypatch.setattr(build_book, "inputs_digest", lambda: "helpers")
    first = build_book.matrix_digest()
    (tmp_path / "book" / "01_a.ipynb").write_text("two")
    assert build_book.matrix_digest() != first


def test_status_page_says_when_no_other_level_was_run(monkeypatch, tmp_path):
    monkeypatch.setattr(build_book, "matrix_digest", lambda: "current")
    text = "\n".join(build_book.cpu_matrix_section(_report(tmp_path, "current", [])))
    assert "no level besides torch's own choice, AVX512" in text
    assert "| Level |" not in text

"""Execute every chapter on this machine's CUDA GPU with nbmake; record times and failures.

Run by ``scripts/test_gpu.sh`` on a machine with an NVIDIA GPU. The chapters pick the
GPU themselves (``get_device``); this checks that one is there, executes the notebooks
(``--jobs`` at a time, all on the one GPU), and writes ``_stage/gpu_run.json``: when,
on which GPU and torch, from which sources (the digest the CPU matrix uses), and per
chapter the seconds and the first lines of any error. The Status page shows that table
when the report was made from the same sources as the build. With ``$OUT`` set (a lent
device machine) the report is copied there too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import build_book  # scripts/, beside this file

ROOT = build_book.ROOT
WORK = build_book.STAGE / "gpu"
REPORT = build_book.STAGE / "gpu_run.json"


def gpu_description() -> dict[str, str]:
    """The GPU, CUDA and torch this run uses; exits with a message when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA GPU is available to torch here: this script is for a machine with an NVIDIA GPU"
        )
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": str(torch.cuda.device_count()),
        "cuda": str(torch.version.cuda),
        "torch": torch.__version__,
    }


def error_summary(case, limit: int = 3) -> str:
    """The first ``limit`` lines of a failed test case's message, or '' if it passed."""
    for child in case:
        if child.tag in ("failure", "error"):
            text = child.get("message") or child.text or child.tag
            return " / ".join(line.strip() for line in text.strip().splitlines()[:limit])
    return ""


def run(jobs: int) -> dict:
    description = gpu_description()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    notebooks = sorted(build_book.BOOK.glob("*.ipynb"))
    for notebook in notebooks:
        shutil.copy2(notebook, WORK / notebook.name)
    junit = WORK / "junit.xml"
    command = [
        sys.executable, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "-p", "no:cacheprovider",
        f"--junitxml={junit}", "-o", "junit_family=xunit1",
        *(["-n", str(jobs)] if jobs > 1 else []),
        *[str((WORK / n.name).relative_to(ROOT)) for n in notebooks],
    ]  # fmt: skip
    env = dict(os.environ, BOOK_PLAIN_PROGRESS="1", MPLBACKEND="Agg")
    started = dt.datetime.now(dt.UTC)
    subprocess.run(command, cwd=ROOT, env=env, check=False)
    if not junit.exists():
        raise SystemExit("nbmake produced no report: see the pytest output above")
    cases = build_book.junit_cases(junit)
    chapters = {}
    for notebook in notebooks:
        case = cases.get(notebook.name)
        chapters[notebook.name] = (
            {"seconds": None, "passed": False, "error": "not run"}
            if case is None
            else {"seconds": float(case.get("time", 0)), "passed": not error_summary(case),
                  "error": error_summary(case)}
        )  # fmt: skip
    return {
        **description,
        "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "jobs": jobs,
        "digest": build_book.matrix_digest(),
        "chapters": chapters,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3, help="chapters executed at once (default 3)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    report = run(args.jobs)
    REPORT.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if os.environ.get("OUT"):
        shutil.copy2(REPORT, Path(os.environ["OUT"]) / REPORT.name)
    print(f"{report['gpu']} ({report['gpus']} GPU), torch {report['torch']}, CUDA {report['cuda']}:")
    for name, chapter in report["chapters"].items():
        seconds = "—" if chapter["seconds"] is None else f"{chapter['seconds']:.1f} s"
        print(f"  {name:28} {seconds:>9}  {'passed' if chapter['passed'] else 'FAILED: ' + chapter['error']}")
    return 0 if all(c["passed"] for c in report["chapters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Execute the chapters under every CPU kernel level torch can dispatch on this machine.

    python scripts/cpu_matrix.py [--levels default avx2 ...] [--seeds 0 1 2]
                                 [--chapters 04 06] [--jobs 2] [--skip-native]

torch picks its vectorised CPU kernels by the processor (plain C++, AVX2, AVX-512), and
so do the libraries below it (MKL for matrix products, oneDNN for convolutions). Each
rounds sums differently, so a training run takes a different trajectory on a laptop
with AVX2 than on a workstation with AVX-512: a chapter's lesson must hold on all of
them. ``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS`` and ``ONEDNN_MAX_CPU_ISA``
let one machine stand in for the others; this script sets all three per level and
executes each chapter's notebook with nbmake, once per level and seed (``BOOK_SEED``,
read by ``helpers.runtime.seed_everything``).

A level the processor lacks is skipped (torch would silently fall back to a lower
one). ``--skip-native`` leaves out the level torch picks by itself: the book build
already executes every chapter at that level. The report goes to
``_stage/cpu_matrix.json`` (with the digest of what the chapters depend on, so the
Status page shows it only while it is current). Exits 1 if any run failed, and also
when torch ignores ``ATEN_CPU_CAPABILITY`` and CI=true (elsewhere it says so and exits
0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
REPORT = ROOT / "_stage" / "cpu_matrix.json"
GLUE_MIME = "application/papermill.record/text/plain"  # what helpers.results.record writes
#: The interpreter that executes the chapters (``--python``; scripts/test_colab.sh runs
#: the plain level on Colab's stack with it).
PYTHON = sys.executable

#: Per level: the names torch reports for it, and the settings of the libraries below it.
LEVELS = {
    "default": {
        "report": ("DEFAULT",),
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
    },
    "avx2": {"report": ("AVX2",), "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {
        "report": ("AVX512",),
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
    },
}


def level_env(level: str, seed: int, threads: int) -> dict[str, str]:
    """The environment one chapter runs in at ``level`` with ``seed``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {sorted(LEVELS)}, got {level!r}")
    settings = LEVELS[level]
    return dict(
        os.environ,
        ATEN_CPU_CAPABILITY=level,
        MKL_ENABLE_INSTRUCTIONS=settings["MKL_ENABLE_INSTRUCTIONS"],
        ONEDNN_MAX_CPU_ISA=settings["ONEDNN_MAX_CPU_ISA"],
        BOOK_SEED=str(seed),
        BOOK_DEVICE="cpu",
        BOOK_PLAIN_PROGRESS="1",
        OMP_NUM_THREADS=str(threads),
    )


def reported_capability(env: dict[str, str] | None) -> str:
    """What torch says it dispatches to in a fresh process with ``env``."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    result = subprocess.run([PYTHON, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def available_levels() -> tuple[list[str], str]:
    """The levels this processor can run, and the one torch picks by itself.

    Each level is probed in the very environment its chapters run in (``level_env``):
    where the processor lacks a level, torch falls back to a lower one and says so.
    """
    native = reported_capability(None)
    levels = [
        level
        for level, settings in LEVELS.items()
        if reported_capability(level_env(level, seed=0, threads=1)) in settings["report"]
    ]
    return levels, native


# Terminal colour codes; pytest writes the escape character into its XML as "#x1B".
ANSI = re.compile(r"(?:\x1b|#x1B)\[[0-9;]*m")
ERROR = re.compile(r"^[A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*")


def first_error_line(text: str) -> str:
    """What went wrong in an nbmake failure report: the failing line and the exception.

    IPython marks the failing line of a cell with ``--->``; the exception's own line
    (``AssertionError: 0.139``) comes last.
    """
    lines = [ANSI.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    where = next((line for line in reversed(lines) if line.startswith("--->")), "")
    where = re.sub(r"^--->\s*\d*\s*", "", where)
    error = next((line for line in reversed(lines) if ERROR.match(line)), lines[-1] if lines else "")
    return (f"{error[:200]} at `{where[:120]}`" if where else error[:300]).strip()


def read_junit(report: Path) -> dict[str, dict]:
    """Outcome, seconds and the failing line per notebook from pytest's JUnit report."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_book import junit_cases

    outcomes = {}
    for name, case in junit_cases(report).items():
        problems = [child for child in case if child.tag in ("failure", "error")]
        detail = ""
        if problems:
            detail = first_error_line((problems[0].text or "") + "\n" + problems[0].get("message", ""))
        outcomes[name] = {"passed": not problems, "seconds": float(case.get("time", "0")), "error": detail}
    return outcomes


def recorded_values(notebook: Path) -> dict[str, str]:
    """The values an executed notebook recorded with ``helpers.results.record``."""
    values = {}
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            text = output.get("data", {}).get(GLUE_MIME)
            if name and text is not None:
                values[name] = "".join(text) if isinstance(text, list) else str(text)
    return values


def run_level(level: str, seed: int, notebooks: list[Path], jobs: int, log: Path) -> dict[str, dict]:
    """Execute copies of ``notebooks`` at ``level`` with ``seed``; book/ is not touched.

    Returns each notebook's outcome with the values it recorded (what its asserts and
    prose rest on). pytest's own output, with each failure's cell and traceback, goes
    to ``log``.
    """
    # Each worker gets an equal share of the cores, so side-by-side runs do not fight.
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with tempfile.TemporaryDirectory() as scratch:
        copies = Path(scratch) / "book"
        copies.mkdir()
        for notebook in notebooks:
            shutil.copy2(notebook, copies / notebook.name)
        junit = Path(scratch) / "junit.xml"
        command = [
            PYTHON, "-m", "pytest", "--nbmake", "--nbmake-timeout=900", "--overwrite", "-q",
            "-p", "no:cacheprovider", "-o", "junit_family=xunit1", f"--junitxml={junit}",
            *(["-n", str(jobs)] if jobs > 1 else []),
            *[str(copies / p.name) for p in notebooks],
        ]  # fmt: skip
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w", encoding="utf-8") as out:
            env = level_env(level, seed, threads)
            # torch.compile's on-disk cache does not tell kernels built for one level
            # from another: a kernel compiled under avx2 and loaded under avx512 gave
            # wrong outputs or crashed the process. Each run gets an empty cache.
            env["TORCHINDUCTOR_CACHE_DIR"] = str(Path(scratch) / "inductor")
            subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
        if not junit.exists():
            raise SystemExit(f"nbmake produced no report for level {level}, seed {seed}")
        outcomes = read_junit(junit)
        for name, outcome in outcomes.items():
            outcome["values"] = recorded_values(copies / name) if (copies / name).exists() else {}
        return outcomes


def matrix_digest() -> str:
    """The digest the Status page compares (helpers, lock and every notebook)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_book import matrix_digest as digest

    return digest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", nargs="+", choices=sorted(LEVELS), help="default: all this CPU has")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--chapters", nargs="+", default=[], help="chapter numbers, e.g. 04 06")
    parser.add_argument("--jobs", type=int, default=1, help="chapters executed side by side")
    parser.add_argument("--skip-native", action="store_true", help="leave out torch's own choice")
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--python", default=sys.executable, help="the Python that executes the chapters")
    args = parser.parse_args()
    global PYTHON
    PYTHON = args.python
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    ci = os.environ.get("CI", "").lower() == "true"

    levels, native = available_levels()
    if "default" not in levels:
        message = (
            "torch ignores ATEN_CPU_CAPABILITY here (it reported "
            f"{reported_capability(dict(os.environ, ATEN_CPU_CAPABILITY='default'))} for 'default'), "
            "so one machine cannot stand in for other CPUs"
        )
        print(("ERROR: " if ci else "SKIPPED: ") + message, file=sys.stderr)
        return 1 if ci else 0
    wanted = args.levels or levels
    missing = [level for level in wanted if level not in levels]
    if missing:
        print(f"==> this CPU cannot run level(s) {', '.join(missing)}; skipping them")
    wanted = [level for level in wanted if level in levels]
    if args.skip_native:
        wanted = [level for level in wanted if native not in LEVELS[level]["report"]]
    notebooks = sorted(BOOK.glob("*.ipynb"))
    if args.chapters:
        notebooks = [p for p in notebooks if p.name.split("_")[0] in args.chapters]
        if not notebooks:
            parser.error(f"no notebook in book/ matches --chapters {' '.join(args.chapters)}")

    report = {"native": native, "digest": matrix_digest(), "runs": []}
    failures = []
    for level in wanted:
        for seed in args.seeds:
            print(
                f"==> level {level}, seed {seed}: {len(notebooks)} chapter(s), {args.jobs} at a time",
                flush=True,
            )
            started = time.perf_counter()
            log = args.report.parent / "cpu_matrix" / f"{level}-seed{seed}.log"
            outcomes = run_level(level, seed, notebooks, args.jobs, log)
            for notebook in notebooks:
                missing = {"passed": False, "seconds": 0.0, "error": "not run", "values": {}}
                outcome = outcomes.get(notebook.name, missing)
                report["runs"].append({"chapter": notebook.name, "level": level, "seed": seed, **outcome})
                mark = "passed" if outcome["passed"] else "FAILED: " + outcome["error"]
                print(f"    {notebook.name:24} {outcome['seconds']:6.1f} s  {mark}")
                if not outcome["passed"]:
                    failures.append(f"{notebook.name} at {level}, seed {seed}")
            print(
                f"    ({time.perf_counter() - started:.0f} s; pytest's report: {os.path.relpath(log, ROOT)})"
            )
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1), encoding="utf-8")
    if failures:
        print("ERROR: failed under the CPU matrix: " + "; ".join(failures), file=sys.stderr)
        return 1
    print(f"==> every chapter passed at level(s) {', '.join(wanted) or 'none'} (torch's own: {native})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

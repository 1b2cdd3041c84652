"""Execute every chapter once, with nbmake, and build the book from those very outputs.

    python scripts/build_book.py [--fresh]

1. ``book/`` is mirrored into ``_stage/book/`` (nbmake skips any path containing
   ``_build``, so the stage lives beside it, not inside it).
2. Every staged notebook whose source, helpers or locked dependencies changed since its
   last successful execution is executed in place by ``pytest --nbmake --overwrite``:
   the notebooks-as-tests run and the page outputs are one and the same execution.
   ``--fresh`` (and ``CI=true``) executes all of them.
3. Every executed notebook is checked as JupyterLab and Colab show it (no raw MyST, no
   paragraph left unshown; ``notebook_markup.reader_problems``) and kept as such in
   ``_stage/reader/``; then its portable boxes become MyST admonitions for the book
   (``notebook_markup.to_book``), and the prints of a cell that only glue records split
   become one block (``notebook_markup.merge_streams``).
4. Each chapter's execution time (from pytest's JUnit report) and headline results
   (from its ``helpers.results.record`` outputs) go into ``_stage/runs.json`` and onto
   a generated Status page.
5. Jupyter Book builds ``_stage/book`` with execution off into ``_build/html``.
   Launch buttons come from ``repository.path_to_book`` in ``_config.yml``, so they
   still point at ``book/NN_topic.ipynb``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notebook_markup  # scripts/, beside this file

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
STAGE = ROOT / "_stage"
STAGED_BOOK = STAGE / "book"
# Each executed notebook as a JupyterLab or Colab reader has it after Run All (before
# its boxes become MyST); tests/browser opens these in JupyterLab.
READER = STAGE / "reader"
RUNS = STAGE / "runs.json"
JUNIT = STAGE / "junit.xml"
CPU_MATRIX = STAGE / "cpu_matrix.json"  # written by scripts/cpu_matrix.py
GPU_RUN = STAGE / "gpu_run.json"  # written by scripts/gpu_run.py on a GPU machine
HEADLINE_KEY = "pytorch_book"  # the output-metadata key helpers.results.record writes


def inputs_digest() -> str:
    """What every chapter depends on besides its own notebook: the helpers and the lock."""
    digest = hashlib.sha256()
    for path in [*sorted((ROOT / "helpers").rglob("*.py")), ROOT / "uv.lock"]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def notebook_digest(notebook: Path, shared: str) -> str:
    return hashlib.sha256(notebook.read_bytes() + shared.encode()).hexdigest()


def mirror_sources() -> None:
    """Copy everything in book/ except notebooks into the stage (cheap, always)."""
    STAGED_BOOK.mkdir(parents=True, exist_ok=True)
    for path in BOOK.rglob("*"):
        if path.is_dir() or path.suffix == ".ipynb" or ".ipynb_checkpoints" in path.parts:
            continue
        target = STAGED_BOOK / path.relative_to(BOOK)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() or target.read_bytes() != path.read_bytes():
            shutil.copy2(path, target)
    wanted = {p.name for p in BOOK.glob("*.ipynb")}
    for stale in STAGED_BOOK.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()


def junit_cases(report: Path) -> dict[str, ET.Element]:
    """Each notebook's <testcase> in pytest's JUnit XML report, by notebook file name."""
    cases = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = Path(case.get("file") or case.get("name", "")).name
        if not name.endswith(".ipynb"):
            name = Path(case.get("classname", "").replace(".", "/")).name + ".ipynb"
        cases[name] = case
    return cases


def junit_times(report: Path) -> dict[str, tuple[float, bool]]:
    """Seconds and pass/fail per notebook from pytest's JUnit XML report."""
    times: dict[str, tuple[float, bool]] = {}
    for name, case in junit_cases(report).items():
        failed = any(child.tag in ("failure", "error") for child in case)
        times[name] = (float(case.get("time", "0")), not failed)
    return times


def execute(notebooks: list[Path]) -> dict[str, tuple[float, bool]]:
    if not notebooks:
        return {}
    env = dict(os.environ, BOOK_PLAIN_PROGRESS="1")
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbmake",
        "--overwrite",
        "--nbmake-timeout=600",
        f"--junitxml={JUNIT}",
        "-p",
        "no:cacheprovider",
        "-o",
        "junit_family=xunit1",
        *[str(p.relative_to(ROOT)) for p in notebooks],
    ]
    print("==> executing with nbmake:", ", ".join(p.name for p in notebooks), flush=True)
    subprocess.run(command, cwd=ROOT, env=env, check=False)
    if not JUNIT.exists():
        raise SystemExit("nbmake produced no report: see the pytest output above")
    return junit_times(JUNIT)


_TITLE = re.compile(r"""(?:set_title|suptitle|plt\.title|title)\s*[(=]\s*f?(["'])(?P<text>.+?)\1""")


def figure_alt_text(source: str) -> str:
    """A description of a code cell's figure for screen readers, from the titles it sets."""
    titles = [re.sub(r"\{[^}]*\}", "…", m["text"]) for m in _TITLE.finditer(source)]
    titles = list(dict.fromkeys(t for t in titles if t.strip()))
    if not titles:
        return "Figure drawn by the code cell above"
    return "Figure: " + "; ".join(titles)


def add_alt_text(notebook: Path) -> int:
    """Give every cell that draws a figure an alt text, unless the chapter set one itself.

    myst-nb reads it from the cell's ``mystnb.image.alt`` metadata. Returns how many
    cells were given one.
    """
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    added = 0
    for cell in nb.get("cells", []):
        if cell["cell_type"] != "code":
            continue
        if not any("image/png" in out.get("data", {}) for out in cell.get("outputs", [])):
            continue
        image = cell["metadata"].setdefault("mystnb", {}).setdefault("image", {})
        if "alt" not in image:
            image["alt"] = figure_alt_text("".join(cell["source"]))
            added += 1
    notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return added


def prepare_for_book(notebook: Path) -> list[str]:
    """Check an executed notebook as notebook readers see it, then turn it into MyST.

    Returns the problems found (the notebook is left as it is then); with none, the
    notebook's boxes are rewritten as admonitions for the book.
    """
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    problems = [f"{notebook.name}: {p}" for p in notebook_markup.reader_problems(nb)]
    if not problems:
        READER.mkdir(parents=True, exist_ok=True)
        shutil.copy2(notebook, READER / notebook.name)
        notebook_markup.to_book(nb)
        notebook_markup.merge_streams(nb)
        notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return problems


# The line every chapter's setup cell prints (helpers.runtime.describe_runtime).
_RUNTIME = re.compile(r"torch (?P<torch>\S+) \| device: (?P<device>[^|\n]+?) \| seed: (?P<seed>\d+)")


def runtime_of(notebook: Path) -> dict[str, str]:
    """torch version, device and seed the chapter reported in its own setup cell."""
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            match = _RUNTIME.search("".join(text) if isinstance(text, list) else text)
            if match:
                return match.groupdict()
    raise ValueError(f"{notebook.name} printed no 'torch … | device: … | seed: …' line (describe_runtime)")


def add_run_stamp(notebook: Path, run: dict) -> None:
    """Put one line under the chapter's title: when, with what and how fast it ran."""
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    stamp = (
        f"*Executed on {run['executed_at']} UTC with torch {run['torch']} on {run['device']} "
        f"in {run['seconds']:.0f} s (seed {run['seed']}), as a test: see [Status](status.md).*"
    )
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        lines = notebook_markup.source(cell).split("\n")
        if not lines[0].startswith("# "):
            break
        cell["source"] = "\n".join([lines[0], "", stamp, *lines[1:]])
        notebook.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return
    raise ValueError(f"{notebook.name} does not start with a '# Title' Markdown cell")


def headlines(notebook: Path) -> list[dict]:
    found = []
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get(HEADLINE_KEY)
            if meta:
                found.append(meta)
    return found


def chapter_title(notebook: Path) -> str:
    for cell in json.loads(notebook.read_text(encoding="utf-8")).get("cells", []):
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.stem


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import torch

    sys.path.insert(0, str(ROOT))
    from helpers.runtime import get_device

    device = get_device()
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    return {
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": version("torchvision"),
        "gymnasium": version("gymnasium"),
        "Device": name,
        "Machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores",
    }


def write_status(runs: dict) -> None:
    lines = [
        "# Status",
        "",
        "This page is generated by the build that made the pages you are reading. Each chapter",
        "was executed once, as a test, by `nbmake`; the pages show the outputs of that",
        "execution, and the numbers below are the values each chapter asserts. The same",
        'pages are printed into one PDF: <a href="pytorch-book.pdf">pytorch-book.pdf</a>.',
        "",
        "## Environment",
        "",
        "| Component | Version or value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in versions().items()]
    lines += [
        "",
        "## Chapters",
        "",
        "| Chapter | Executed (UTC) | Time (s) | Headline results |",
        "|---|---|---:|---|",
    ]
    total = 0.0
    for name in sorted(runs):
        run = runs[name]
        total += run["seconds"]
        results = "<br>".join(f"{h['headline']}: **{h['text']}**" for h in run["headlines"]) or "—"
        link = f"[{run['title']}]({Path(name).stem}.ipynb)"
        lines.append(f"| {link} | {run['executed_at']} | {run['seconds']:.1f} | {results} |")
    lines += ["", f"Total execution time of the chapters: {total:.0f} s.", ""]
    lines += cpu_matrix_section(CPU_MATRIX)
    lines += gpu_section(GPU_RUN)
    (STAGED_BOOK / "status.md").write_text("\n".join(lines), encoding="utf-8")


def cpu_matrix_section(report: Path) -> list[str]:
    """The Status page's account of ``scripts/cpu_matrix.py``: which kernel levels passed.

    Only a report made from the same notebooks, helpers and lock as this build counts;
    an older one is named as such, so the page never claims a pass it did not see.
    """
    lines = ["## Other CPUs", ""]
    intro = (
        "torch picks its CPU kernels by the processor (plain C++, AVX2, AVX-512), and each "
        "rounds sums differently, so training takes another path on another machine. The "
        "test suite's CPU matrix (`scripts/cpu_matrix.py`) executes every chapter again "
        "with `ATEN_CPU_CAPABILITY` (and MKL's and oneDNN's matching limits) set to each "
        "vectorised level this machine can run; the plain C++ level runs in CI's Colab lane "
        "(`scripts/test_colab.sh`), on Colab's stack, after this page is built."
    )
    lines += [intro, ""]
    if not report.exists():
        return [*lines, "No CPU-matrix run was made with this build (it is part of `scripts/test.sh`).", ""]
    data = json.loads(report.read_text(encoding="utf-8"))
    if data.get("digest") != matrix_digest():
        return [*lines, "The last CPU-matrix run was made from other sources than this build: not shown.", ""]
    if not data["runs"]:
        return [*lines, f"This machine runs no level besides torch's own choice, {data['native']}.", ""]
    lines += [
        f"Without the variable, torch chose **{data['native']}** here; the chapter table above "
        "ran at that level.",
        "",
        "| Level | Seed | Chapters passed | Time (s) | Failures |",
        "|---|---:|---:|---:|---|",
    ]
    groups: dict[tuple[str, int], list[dict]] = {}
    for run in data["runs"]:
        groups.setdefault((run["level"], run["seed"]), []).append(run)
    for (level, seed), runs in groups.items():
        passed = sum(run["passed"] for run in runs)
        seconds = sum(run["seconds"] for run in runs)
        failures = "<br>".join(
            f"{Path(run['chapter']).stem}: {table_cell(run['error'])}" for run in runs if not run["passed"]
        )
        lines.append(f"| {level} | {seed} | {passed} of {len(runs)} | {seconds:.0f} | {failures or '—'} |")
    return [*lines, ""]


def gpu_section(report: Path) -> list[str]:
    """The Status page's account of ``scripts/test_gpu.sh``: every chapter on a CUDA GPU.

    Shown only from a report made from the same notebooks, helpers and lock as this
    build; otherwise the page says there is none, never older times.
    """
    lines = ["## On a GPU", ""]
    if not report.exists():
        return [
            *lines,
            "No run of `scripts/test_gpu.sh` (every chapter on an NVIDIA GPU) was made from these sources.",
            "",
        ]
    data = json.loads(report.read_text(encoding="utf-8"))
    if data.get("digest") != matrix_digest():
        return [*lines, "The last GPU run was made from other sources than this build: not shown.", ""]
    lines += [
        f"Every chapter executed by `nbmake` on **{data['gpu']}** ({data['gpus']} GPU, CUDA {data['cuda']}, "
        f"torch {data['torch']}), {data['jobs']} at a time, on {data['started']}.",
        "",
        "| Chapter | Time (s) | Result |",
        "|---|---:|---|",
    ]
    for name, chapter in data["chapters"].items():
        seconds = "—" if chapter["seconds"] is None else f"{chapter['seconds']:.1f}"
        result = "passed" if chapter["passed"] else f"failed: {table_cell(chapter['error'])}"
        lines.append(f"| {Path(name).stem} | {seconds} | {result} |")
    return [*lines, ""]


def table_cell(text: str) -> str:
    """``text`` as one Markdown table cell: no pipes or backticks to break the row."""
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


def matrix_digest() -> str:
    """What a CPU-matrix run depends on: the helpers, the lock and every notebook."""
    digest = hashlib.sha256(inputs_digest().encode())
    for notebook in sorted(BOOK.glob("*.ipynb")):
        digest.update(notebook.read_bytes())
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="execute every chapter, cached or not")
    args = parser.parse_args()
    fresh = args.fresh or os.environ.get("CI", "").lower() == "true"

    mirror_sources()
    runs = json.loads(RUNS.read_text()) if RUNS.exists() and not fresh else {}
    shared = inputs_digest()
    todo = []
    for source in sorted(BOOK.glob("*.ipynb")):
        staged = STAGED_BOOK / source.name
        digest = notebook_digest(source, shared)
        cached = runs.get(source.name, {})
        if (
            fresh
            or cached.get("digest") != digest
            or not staged.exists()
            or not (READER / source.name).exists()
        ):
            shutil.copy2(source, staged)
            todo.append(staged)
            runs.pop(source.name, None)
        else:
            print(f"==> {source.name}: unchanged since its last execution, reusing its outputs")
    runs = {name: run for name, run in runs.items() if (BOOK / name).exists()}

    started = time.perf_counter()
    results = execute(todo)
    failed = []
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")
    for staged in todo:
        seconds, passed = results.get(staged.name, (0.0, False))
        if not passed:
            failed.append(staged.name)
            continue
        problems = prepare_for_book(staged)
        if problems:
            print("\n".join(f"ERROR: {p}" for p in problems), file=sys.stderr)
            failed.append(staged.name)
            continue
        add_alt_text(staged)
        runs[staged.name] = {
            "digest": notebook_digest(BOOK / staged.name, shared),
            "seconds": round(seconds, 1),
            "executed_at": now,
            "title": chapter_title(staged),
            "headlines": headlines(staged),
            **runtime_of(staged),
        }
        add_run_stamp(staged, runs[staged.name])
    RUNS.write_text(json.dumps(runs, indent=1, sort_keys=True), encoding="utf-8")
    if todo:
        print(f"==> executed {len(todo)} notebook(s) in {time.perf_counter() - started:.0f} s")
    for name in sorted(runs):
        print(f"    {name}: {runs[name]['seconds']:.1f} s")
    if failed:
        print("ERROR: these notebooks failed:", ", ".join(failed), file=sys.stderr)
        return 1
    write_status(runs)

    print("==> building the HTML book from the executed notebooks", flush=True)
    build = [
        str(Path(sys.executable).parent / "jupyter-book"),
        "build",
        str(STAGED_BOOK.relative_to(ROOT)),
        "--config",
        "_config.yml",
        "--path-output",
        ".",
        "-W",
        "--keep-going",
    ]
    if fresh:
        build.append("--all")
    return subprocess.run(build, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())

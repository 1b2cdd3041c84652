"""Read, check and refresh ``scripts/colab_stack.txt``, the snapshot of Colab's packages.

``check``: every package the snapshot pins is installed at that version in this
Python (run by ``scripts/test_colab.sh`` after ``pip install`` of the book, which must
keep Colab's torch and the rest).

``refresh``: rewrite the snapshot's versions from a newer ``pip-freeze.txt`` of
https://github.com/googlecolab/backend-info, keeping its list of packages::

    python scripts/colab_stack.py refresh backend-info/pip-freeze.txt \\
        --commit <sha> --date YYYY-MM-DD --python 3.13.15

Then raise pyproject.toml's minimums (and environment.yml's) to the new versions:
``tests/test_project.py`` checks that they agree.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)$")
# pip freeze writes a wheel URL for packages installed from one (Colab's torch):
# torch @ https://download.pytorch.org/whl/cpu/torch-2.11.0%2Bcpu-cp313-...whl
_URL = re.compile(r"^(?P<name>[A-Za-z0-9._-]+) @ \S*/(?P=name)-(?P<version>[^-/%]+)(?:%2B|\+)?[^/]*\.whl$")


def read_pins(path: Path) -> dict[str, str]:
    """The snapshot's ``name==version`` lines, by canonical name; rejects any other line."""
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"{path}:{number}: expected 'name==version', got {line!r}")
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def read_freeze(text: str) -> dict[str, str]:
    """Versions from a ``pip freeze`` listing; local tags (``+cpu``) dropped."""
    versions: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        match = _PIN.match(line) or _URL.match(line)
        if match:
            versions[canonicalize_name(match["name"])] = match["version"].split("+")[0]
    return versions


def installed_mismatches(pins: dict[str, str]) -> list[str]:
    """One line per pinned package that is missing or at another version here."""
    problems = []
    for name, version in pins.items():
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}: not installed (Colab has {version})")
            continue
        if found.split("+")[0] != version:
            problems.append(f"{name}: {found} installed, Colab has {version}")
    return problems


def refresh(stack: Path, freeze: str, commit: str, date: str, python: str) -> list[str]:
    """Rewrite ``stack`` with the versions in ``freeze``; returns the changes made."""
    new = read_freeze(freeze)
    missing = sorted(set(read_pins(stack)) - set(new))
    if missing:
        raise ValueError(f"the new pip freeze lacks {', '.join(missing)}: edit {stack} by hand")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"--commit must be a full 40-character SHA, got {commit!r}")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise ValueError(f"--date must be YYYY-MM-DD, got {date!r}")
    changes, lines = [], []
    for line in stack.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            version = new[canonicalize_name(match["name"])]
            if version != match["version"]:
                changes.append(f"{match['name']}: {match['version']} -> {version}")
            line = f"{match['name']}=={version}"
        if line.startswith("# commit: "):
            line = f"# commit: {commit}"
        if line.startswith("# date: "):
            line = f"# date: {date}"
        minor = ".".join(python.split(".")[:2])
        line = re.sub(r"^# python: .*", f"# python: {minor} (Colab: {python})", line)
        lines.append(line)
    stack.write_text("\n".join(lines) + "\n")
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="fail unless this Python has the snapshot's versions")
    check.add_argument("stack", type=Path)
    update = sub.add_parser("refresh", help="take the versions from a newer pip-freeze.txt")
    update.add_argument("freeze", type=Path)
    update.add_argument("--stack", type=Path, default=Path(__file__).with_name("colab_stack.txt"))
    update.add_argument("--commit", required=True)
    update.add_argument("--date", required=True)
    update.add_argument("--python", required=True, help="Colab's Python, from os-info.txt")
    args = parser.parse_args(argv)
    if args.command == "check":
        problems = installed_mismatches(read_pins(args.stack))
        if problems:
            print("ERROR: this environment is not Colab's stack:", *problems, sep="\n  ", file=sys.stderr)
            return 1
        pins = read_pins(args.stack)
        print(f"    Colab's {len(pins)} versions kept: torch {pins['torch']}, numpy {pins['numpy']}")
        return 0
    for change in refresh(args.stack, args.freeze.read_text(), args.commit, args.date, args.python):
        print(change)
    return 0


if __name__ == "__main__":
    sys.exit(main())

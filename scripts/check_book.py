"""Check the built HTML book: every chapter in the table of contents has a page that
shows executed outputs, figures among them, and no error output.

Run by scripts/book.sh after `jupyter-book build`; exits non-zero with a message
naming the page when something is missing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"


def chapter_files(toc: dict) -> list[str]:
    return [entry["file"] for part in toc["parts"] for entry in part["chapters"]]


def main() -> int:
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    problems = []
    chapters = chapter_files(toc)
    if not chapters:
        problems.append("book/_toc.yml lists no chapters")
    for name in chapters:
        page = HTML / f"{name}.html"
        if not page.exists():
            problems.append(f"{page.relative_to(ROOT)} was not built")
            continue
        html = page.read_text(encoding="utf-8")
        outputs = html.count('class="cell_output')
        figures = len(re.findall(r'<img[^>]+src="_images/[^"]+\.png"', html))
        if outputs == 0:
            problems.append(f"{page.name}: no executed cell outputs")
        if figures == 0:
            problems.append(f"{page.name}: no figures")
        if "output traceback" in html or "ansi-red-fg" in html:
            problems.append(f"{page.name}: contains an error traceback")
        print(f"{page.name}: {outputs} cell outputs, {figures} figures")
    for problem in problems:
        print("ERROR:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

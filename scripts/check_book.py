"""Check the built HTML book without a browser.

Every chapter in the table of contents has a page with executed outputs, figures among
them, and no error output; no page or stylesheet loads anything from the web; every
value a page quotes from its run was filled in; the Status page lists every chapter.

Run by scripts/book.sh after the build; exits non-zero with a message naming the page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"

# A tag that makes the browser fetch something, with an absolute (web) address.
REMOTE_TAG = re.compile(
    r"<(?P<tag>script|link|img|iframe|source|video|audio|embed|object)\b[^>]*?"
    r"\b(?P<attr>src|href|data|srcset)\s*=\s*[\"'](?P<url>(?:https?:)?//[^\"']+)",
    re.IGNORECASE,
)
# <link rel="..."> values that only name a related page and fetch nothing.
NON_FETCHING_REL = {"canonical", "alternate", "author", "license", "search", "help", "next", "prev"}
REMOTE_CSS = re.compile(r"(?:url\(\s*[\"']?|@import\s+[\"'])(?P<url>(?:https?:)?//[^\"')]+)", re.I)


def chapter_files(toc: dict) -> list[str]:
    return [entry["file"] for part in toc["parts"] for entry in part["chapters"]]


def remote_loads(html: str) -> list[str]:
    """Web addresses a page would fetch: scripts, stylesheets, images, fonts, frames."""
    found = []
    for match in REMOTE_TAG.finditer(html):
        if match["tag"].lower() == "link":
            rel = re.search(r"\brel\s*=\s*[\"']([^\"']+)", match[0], re.I)
            if rel and set(rel[1].lower().split()) <= NON_FETCHING_REL:
                continue
        found.append(f"<{match['tag']} {match['attr']}={match['url']}>")
    found += [f"style {m['url']}" for m in REMOTE_CSS.finditer(html)]
    return found


def check_chapter(page: Path) -> list[str]:
    html = page.read_text(encoding="utf-8")
    problems = []
    outputs = html.count('class="cell_output')
    figures = len(re.findall(r'<img[^>]+src="_images/[^"]+\.png"', html))
    if outputs == 0:
        problems.append(f"{page.name}: no executed cell outputs")
    if figures == 0:
        problems.append(f"{page.name}: no figures")
    if "output traceback" in html or "ansi-red-fg" in html:
        problems.append(f"{page.name}: contains an error traceback")
    if "{glue:" in html or "glue:text" in html or re.search(r"\{\{\s*\w+\s*\}\}", html):
        problems.append(f"{page.name}: a quoted value was not filled in")
    print(f"{page.name}: {outputs} cell outputs, {figures} figures")
    return problems


def main() -> int:
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    problems = []
    pages = chapter_files(toc)
    chapters = [name for name in pages if re.match(r"\d\d_", name)]
    if not chapters:
        problems.append("book/_toc.yml lists no chapters")
    for name in chapters:
        page = HTML / f"{name}.html"
        if page.exists():
            problems += check_chapter(page)
        else:
            problems.append(f"{page.relative_to(ROOT)} was not built")
    status = HTML / "status.html"
    if not status.exists():
        problems.append("the Status page was not built")
    else:
        text = status.read_text(encoding="utf-8")
        missing = [name for name in chapters if f'href="{name}.html"' not in text]
        problems += [f"status.html: no row for {name}" for name in missing]
    for page in sorted(HTML.rglob("*.html")) + sorted(HTML.rglob("*.css")):
        for load in remote_loads(page.read_text(encoding="utf-8", errors="replace")):
            problems.append(f"{page.relative_to(HTML)} loads from the web: {load}")
    for problem in problems:
        print("ERROR:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

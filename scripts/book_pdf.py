"""Print the built book into one PDF, offline: ``_build/pdf/pytorch-book.pdf``.

    python scripts/book_pdf.py [--html _build/html] [--toc book/_toc.yml]

Every page of the table of contents, in its order, is opened in headless Chromium from a
localhost server and printed with the book's print styles: no sidebars or header, every
collapsed cell and dropdown opened (a PDF cannot be clicked), code that wraps instead of
running off the page, figures kept whole. pypdf merges the pages behind a title page and
gives every page a bookmark. A copy goes into ``_build/html`` so the pages can link it.

Chromium is Debian's/Ubuntu's ``chromium`` (on PATH or named by ``BOOK_CHROMIUM``).
Without it the PDF is skipped with a message, except under ``CI=true``, where that is an
error. Exits non-zero, naming the page, if a page prints a code line cut off at the edge.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import html
import http.server
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
PDF_DIR = ROOT / "_build" / "pdf"
NAME = "pytorch-book.pdf"

PRINT_CSS = """
@page { size: A4; margin: 15mm 14mm 16mm 14mm; }
.bd-header, .bd-sidebar-primary, .bd-sidebar-secondary, .header-article,
.prev-next-area, .bd-footer, .bd-footer-article, footer, #pst-back-to-top,
.headerlink, .search-button, .theme-switch-button, .pst-scrollable-table-container::after
  { display: none !important; }
.bd-page-width, .bd-container, .bd-container__inner, .bd-main, .bd-content,
.bd-article-container, .bd-article
  { max-width: none !important; width: 100% !important; margin: 0 !important;
    padding: 0 !important; }
pre, div.highlight pre, .cell_output pre
  { white-space: pre-wrap !important; overflow-wrap: anywhere !important;
    overflow: visible !important; }
img { max-width: 100% !important; height: auto !important; break-inside: avoid; }
h1, h2, h3 { break-after: avoid; }
"""

OPEN_EVERYTHING = """() => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
}"""

# Code blocks whose text is wider than the block: they would be cut off on paper.
CLIPPED_CODE = """() => [...document.querySelectorAll('pre')]
  .filter(p => p.offsetParent !== null && p.scrollWidth > p.clientWidth + 1)
  .map(p => p.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a, ''))"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def toc_pages(toc_file: Path) -> list[str]:
    toc = yaml.safe_load(toc_file.read_text(encoding="utf-8"))
    chapters = toc.get("chapters") or [e for part in toc.get("parts", []) for e in part["chapters"]]
    return [toc["root"]] + [entry["file"] for entry in chapters]


def page_title(page) -> str:
    heading = page.locator("main h1").first
    text = heading.inner_text() if heading.count() else page.title()
    return text.replace("#", "").strip()


def title_page_html(title: str, author: str, stamp: str) -> str:
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font-family: sans-serif; margin: 0; height: 250mm; display: flex;
       flex-direction: column; justify-content: center; align-items: center; }}
h1 {{ font-size: 30pt; text-align: center; margin: 0 20mm 12mm; }}
p {{ font-size: 13pt; color: #444; margin: 2mm; }}
</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(author)}</p>
<p>{html.escape(stamp)}</p></body></html>"""


def chromium() -> str | None:
    named = os.environ.get("BOOK_CHROMIUM")
    return named or shutil.which("chromium") or shutil.which("chromium-browser")


def print_pages(browser, base_url: str, names: list[str], folder: Path) -> list[tuple[str, Path, int]]:
    """Print each page to its own PDF; return (title, file, images) in order."""
    printed = []
    context = browser.new_context(viewport={"width": 1000, "height": 1400})
    try:
        for name in names:
            page = context.new_page()
            page.goto(f"{base_url}/{name}.html", wait_until="networkidle")
            # open collapsed cells and dropdowns first: a figure inside one (a solution's)
            # must be loaded, not only present, when the page is printed
            page.evaluate(OPEN_EVERYTHING)
            page.evaluate("() => document.querySelectorAll('img').forEach(i => i.scrollIntoView())")
            page.wait_for_load_state("networkidle")
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            if page.evaluate("() => Boolean(window.MathJax && MathJax.startup)"):
                page.evaluate("() => MathJax.startup.promise")
            page.add_style_tag(content=PRINT_CSS)
            page.emulate_media(media="print")
            clipped = page.evaluate(CLIPPED_CODE)
            if clipped:
                raise SystemExit(
                    f"{name}: {len(clipped)} code block(s) would be cut off, e.g. {clipped[0]!r}"
                )
            images = page.evaluate("() => [...document.images].filter(i => i.naturalWidth > 0).length")
            path = folder / f"{len(printed):02d}_{name}.pdf"
            page.pdf(path=str(path), format="A4", print_background=True, prefer_css_page_size=True)
            printed.append((page_title(page), path, images))
            page.close()
    finally:
        context.close()
    return printed


def merge(title_pdf: Path, printed: list[tuple[str, Path, int]], out: Path, title: str, author: str) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(str(title_pdf), import_outline=False)
    for heading, path, _ in printed:
        start = len(writer.pages)
        writer.append(str(path), import_outline=False)
        writer.add_outline_item(title=heading, page_number=start)
    writer.add_metadata({"/Title": title, "/Author": author})
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as file:
        writer.write(file)
    pages = len(PdfReader(str(out)).pages)
    print(f"==> {out}: {pages} pages, {len(printed)} bookmarked pages of the book")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=HTML, help="the built book (default: %(default)s)")
    parser.add_argument("--toc", type=Path, default=ROOT / "book" / "_toc.yml", help="its table of contents")
    args = parser.parse_args()
    html_dir: Path = args.html.resolve()
    if not (html_dir / "index.html").exists():
        print(f"error: no built book in {html_dir}: run scripts/build_book.py first", file=sys.stderr)
        return 1
    executable = chromium()
    if executable is None or not Path(executable).exists():
        message = "no Chromium found (install Debian's `chromium` package or set BOOK_CHROMIUM)"
        if os.environ.get("CI", "").lower() == "true":
            print(f"error: CI=true and {message}: the PDF cannot be printed", file=sys.stderr)
            return 1
        print(f"==> skipping the PDF: {message}")
        return 0
    from playwright.sync_api import sync_playwright

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    title, author = config["title"], config["author"]
    stamp = f"Printed from the built pages on {dt.datetime.now(dt.UTC):%Y-%m-%d}"
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
            folder = Path(tmp)
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            try:
                base_url = f"http://127.0.0.1:{server.server_address[1]}"
                printed = print_pages(browser, base_url, toc_pages(args.toc), folder)
                cover = browser.new_page()
                cover.set_content(title_page_html(title, author, stamp))
                title_pdf = folder / "title.pdf"
                cover.pdf(path=str(title_pdf), format="A4")
            finally:
                browser.close()
            out = PDF_DIR / NAME
            merge(title_pdf, printed, out, title, author)
    finally:
        server.shutdown()
        server.server_close()
    shutil.copy2(out, html_dir / NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())

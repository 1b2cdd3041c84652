"""The book as one PDF (scripts/book_pdf.py), and the print styles it is made with."""

from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PDF = ROOT / "_build" / "pdf" / "pytorch-book.pdf"
HTML = ROOT / "_build" / "html"
spec = importlib.util.spec_from_file_location("book_pdf", ROOT / "scripts" / "book_pdf.py")
book_pdf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(book_pdf)
CHAPTERS = [p for p in book_pdf.toc_pages(ROOT / "book" / "_toc.yml") if re.match(r"\d\d_", p)]
RAW_MYST = ["{glue", "```{", ":class:"]
# An unfilled prose placeholder; chapter 09's code legitimately prints "${{NAME:-…}}".
PLACEHOLDER = re.compile(r"\{\{\s*\w+\s*\}\}")


def _chapter_title(name: str) -> str:
    cells = json.loads((ROOT / "book" / f"{name}.ipynb").read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"]).splitlines()[0]
    # the title as rendered: Markdown code spans lose their backticks
    return first.removeprefix("# ").replace("`", "").strip()


@pytest.fixture(scope="module")
def reader():
    if not PDF.exists():
        pytest.fail(f"no {PDF.relative_to(ROOT)}: run `bash scripts/book.sh` (it needs Chromium)")
    from pypdf import PdfReader

    return PdfReader(str(PDF))


@pytest.fixture(scope="module")
def texts(reader) -> list[str]:
    return [page.extract_text() or "" for page in reader.pages]


def test_every_chapter_has_a_bookmark_and_its_title_in_the_text(reader, texts):
    outline = [item.title for item in reader.outline]
    # compared without whitespace (a long title wraps) and with ligatures such as "ﬁ"
    # unfolded (NFKC), as the PDF's text layer has them
    joined = re.sub(r"\s+", "", unicodedata.normalize("NFKC", " ".join(texts)))
    for name in CHAPTERS:
        title = _chapter_title(name)
        assert title in outline, f"no bookmark for {title!r}: {outline}"
        assert re.sub(r"\s+", "", title) in joined, f"{title!r} is not in the PDF's text"
    # bookmarks in table-of-contents order, each pointing further into the file
    starts = [reader.get_destination_page_number(item) for item in reader.outline]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_the_figures_are_embedded(reader):
    images = sum(len(page.images) for page in reader.pages)
    built = len(list((HTML / "_images").glob("*.png")))
    assert images >= built > len(CHAPTERS), f"{images} images in the PDF, {built} figures in the book"


def test_no_page_shows_raw_myst(texts):
    raw = [(number + 1, marker) for number, text in enumerate(texts) for marker in RAW_MYST if marker in text]
    raw += [(number + 1, m[0]) for number, text in enumerate(texts) for m in PLACEHOLDER.finditer(text)]
    assert raw == []


def test_the_front_page_and_the_status_page_link_the_pdf():
    for page in ("intro.html", "status.html"):
        assert 'href="pytorch-book.pdf"' in (HTML / page).read_text(encoding="utf-8"), page
    assert (HTML / "pytorch-book.pdf").read_bytes() == PDF.read_bytes()


def test_print_styles_wrap_a_code_line_that_would_run_off_the_page(browser):
    long_line = "x = " + " + ".join(f"term_{i}" for i in range(40))
    page = browser.new_page(viewport={"width": 700, "height": 900})
    try:
        page.set_content(f"<main><div class='highlight'><pre>{long_line}</pre></div></main>")
        assert page.evaluate(book_pdf.CLIPPED_CODE) == [long_line]
        page.add_style_tag(content=book_pdf.PRINT_CSS)
        page.emulate_media(media="print")
        assert page.evaluate(book_pdf.CLIPPED_CODE) == []
    finally:
        page.close()

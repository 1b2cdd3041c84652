"""Every page of the built book, opened in headless Chromium from a localhost server.

Each page loads without console errors and without a single request leaving localhost;
its images decode, its math is typeset, its outputs are there; the sidebar links every
chapter; a chapter's launch buttons open its own notebook; axe-core finds no critical
or serious accessibility violation. A full-page screenshot of each is saved.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
TOC = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [entry["file"] for part in TOC["parts"] for entry in part["chapters"]]
CHAPTERS = [name for name in PAGES if re.match(r"\d\d_", name)]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO = CONFIG["repository"]["url"].removeprefix("https://github.com/")
BOOK_PATH = CONFIG["repository"]["path_to_book"]
LOCAL_SCHEMES = {"data", "blob", "about"}


def open_page(browser, url: str):
    """Open ``url``; return the page, the requests that left localhost and the console errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    remote, errors = [], []

    def on_request(request):
        parsed = urlparse(request.url)
        if parsed.scheme not in LOCAL_SCHEMES and parsed.hostname not in ("127.0.0.1", "localhost"):
            remote.append(request.url)

    page.on("request", on_request)
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url, wait_until="networkidle")
    return page, remote, errors


def wait_for_math(page) -> None:
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise")


@dataclass
class LoadedPage:
    """A page opened once and shared by every test of that page (loading is the slow part)."""

    name: str
    page: object  # playwright.sync_api.Page
    remote: list[str]
    errors: list[str]


@pytest.fixture(scope="module")
def loaded(request, browser, book_url) -> Iterator[LoadedPage]:
    name = request.param
    page, remote, errors = open_page(browser, f"{book_url}/{name}.html")
    try:
        yield LoadedPage(name, page, remote, errors)
    finally:
        page.context.close()


def each_page(names: list[str]):
    """Parametrize a test over pages so that each page loads once for all its tests.

    The module-scoped fixture makes pytest run a page's tests together; the xdist group
    keeps them on one worker when the tests run in parallel (``-n 2 --dist loadgroup``).
    """
    params = [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in names]
    return pytest.mark.parametrize("loaded", params, indirect=True, ids=names)


@each_page(PAGES)
def test_page_loads_offline_and_renders(loaded, screenshots):
    name, page = loaded.name, loaded.page
    # Bring every image into view so lazily loaded ones load too, then wait for the network.
    page.evaluate("() => document.querySelectorAll('img').forEach(i => i.scrollIntoView())")
    page.wait_for_load_state("networkidle")
    broken = page.evaluate(
        "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
    )
    assert broken == [], f"{name}: images that did not load: {broken}"
    # A figure's alt text describes it; docutils' default would be the file's path.
    undescribed = page.evaluate(
        "() => [...document.querySelectorAll('.cell_output img')]"
        ".filter(i => !i.alt || i.alt.includes('.png')).map(i => i.src)"
    )
    assert undescribed == [], f"{name}: figures without alt text: {undescribed}"

    has_math = page.evaluate("() => document.querySelectorAll('.math').length") > 0
    if has_math:
        wait_for_math(page)
        untypeset = page.evaluate(
            "() => [...document.querySelectorAll('.math')]"
            ".filter(m => !m.querySelector('mjx-container')).length"
        )
        assert untypeset == 0, f"{name}: {untypeset} formulas were not typeset"
    if name in CHAPTERS:
        assert page.locator(".cell_output").count() > 0, f"{name}: no executed outputs"

    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)
    assert loaded.errors == [], f"{name}: console errors {loaded.errors}"
    assert loaded.remote == [], f"{name}: {len(loaded.remote)} requests left localhost: {loaded.remote[:5]}"


def test_some_page_has_math_so_offline_mathjax_is_exercised():
    pages = {name: (HTML / f"{name}.html").read_text(encoding="utf-8") for name in PAGES}
    with_math = [name for name, html in pages.items() if 'class="math' in html]
    assert with_math, "no page has math: the offline MathJax set-up is untested"


@each_page(PAGES)
def test_sidebar_links_every_chapter(loaded):
    hrefs = loaded.page.eval_on_selector_all(
        "nav.bd-links a", "links => links.map(a => a.getAttribute('href'))"
    )
    linked = {Path(urlparse(h).path).stem for h in hrefs}
    missing = [c for c in [*CHAPTERS, "status"] if c not in linked and c != loaded.name]
    assert missing == [], f"{loaded.name}: the sidebar does not link {missing}"


@each_page(CHAPTERS)
def test_launch_buttons_open_this_chapters_notebook(loaded):
    hrefs = loaded.page.eval_on_selector_all("a", "links => links.map(a => a.href)")
    notebook = f"{BOOK_PATH}/{loaded.name}.ipynb"
    colab = [h for h in hrefs if "colab.research.google.com" in h]
    binder = [h for h in hrefs if "mybinder.org" in h]
    assert colab == [f"https://colab.research.google.com/github/{REPO}/blob/main/{notebook}"]
    assert len(binder) == 1 and unquote(binder[0]).endswith(notebook), binder
    others = {n for h in colab + binder for n in re.findall(r"\d\d_\w+\.ipynb", unquote(h))}
    assert others == {f"{loaded.name}.ipynb"}


@each_page(PAGES)
def test_no_serious_accessibility_violations(loaded):
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(loaded.page)
    serious = [
        f"{v['id']} ({v['impact']}, {len(v['nodes'])} nodes): {v['help']}"
        for v in results.response["violations"]
        if v["impact"] in ("critical", "serious")
    ]
    assert serious == [], f"{loaded.name}: " + "; ".join(serious)


def unique_search_term() -> tuple[str, str]:
    """A word of the search index that occurs in exactly one chapter (and no other page)."""
    text = (HTML / "searchindex.js").read_text(encoding="utf-8")
    index = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    docnames = index["docnames"]
    for term, docs in sorted(index["terms"].items(), key=lambda item: (-len(item[0]), item[0])):
        if isinstance(docs, int) and docnames[docs] in CHAPTERS and term.isalpha() and len(term) >= 6:
            page = (HTML / f"{docnames[docs]}.html").read_text(encoding="utf-8").lower()
            if re.search(rf"\b{term}\b", page):
                return term, docnames[docs]
    raise AssertionError("no search term found in exactly one chapter")


def test_search_finds_a_word_that_only_one_chapter_uses(browser, book_url, screenshots):
    term, chapter = unique_search_term()
    page, remote, errors = open_page(browser, f"{book_url}/search.html?q={term}")
    try:
        page.wait_for_function(
            "() => document.querySelector('#search-results .search-summary')?.textContent.includes('found')",
            timeout=20_000,
        )
        hits = page.eval_on_selector_all(
            "#search-results ul.search li a", "links => links.map(a => a.getAttribute('href'))"
        )
        found = {Path(urlparse(h).path).stem for h in hits}
        page.screenshot(path=str(screenshots / "search.png"), full_page=True)
        assert chapter in found, f"searching {term!r}: expected {chapter}, got {sorted(found)}"
        extra = sorted(found - {chapter})
        assert extra == [], f"searching {term!r} (only in {chapter}) also found {extra}"
        assert errors == [] and remote == []
    finally:
        page.context.close()


@each_page(CHAPTERS)
def test_chapter_page_says_under_its_title_when_and_how_it_ran(loaded):
    stamp = loaded.page.locator("main h1 + p").first
    text = stamp.inner_text()
    pattern = (
        r"Executed on \d{4}-\d\d-\d\d \d\d:\d\d UTC with torch \S+ on .+ in \d+ s "
        r"\(seed \d+\), as a test: see Status\."
    )
    assert re.fullmatch(pattern, text), f"{loaded.name}: the line under the title is {text!r}"
    assert stamp.locator("a").get_attribute("href").startswith("status.html")


@each_page(PAGES)
def test_one_search_box_and_the_book_title_once(loaded):
    page = loaded.page
    searches = [e for e in page.locator(".search-button-field, form.bd-search input").all() if e.is_visible()]
    assert len(searches) == 1, f"{loaded.name}: {len(searches)} search boxes"
    sidebar = page.locator(".bd-sidebar-primary").inner_text()
    assert sidebar.count(CONFIG["title"]) == 1, (
        f"{loaded.name}: the sidebar names the book {sidebar.count(CONFIG['title'])} times"
    )


LAPTOP = {"width": 1366, "height": 768}  # the most common laptop screen


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in CHAPTERS])
def test_no_code_cell_scrolls_sideways_on_a_laptop_screen(browser, book_url, name):
    context = browser.new_context(viewport=LAPTOP)
    try:
        page = context.new_page()
        page.goto(f"{book_url}/{name}.html", wait_until="networkidle")
        # open the collapsed cells (setup and solutions): their code must fit too
        page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
        wide = page.evaluate(
            "() => [...document.querySelectorAll('.cell_input pre')]"
            ".filter(p => p.scrollWidth > p.clientWidth + 1)"
            ".map(p => p.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a, ''))"
        )
        assert wide == [], f"{name}: {len(wide)} code cells scroll sideways at 1366 px, e.g. {wide[0]!r}"
    finally:
        context.close()

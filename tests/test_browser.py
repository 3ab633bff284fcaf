"""Open every page of the built book in headless Chromium (Debian's) served on localhost.

Checks per page: no console errors or page errors; every image loads; math is typeset by the offline
MathJax; every plotly figure is drawn; every static explorable responds to its slider (the frame key and
the drawn figure change) without a kernel. Run after `make book` (the Makefile's test-browser does).

Checks on the built HTML (no browser needed, but the build is): no raw TeX or markdown pipe table left in a
page's prose (:func:`book_pages.raw_markup_problems`, whose fixture tests are in test_book_text.py); every
chapter's results file exists, parses and agrees with the closing table rendered in that chapter; the
scoreboard lists every claim of every chapter with its verdict and a link back.
"""
import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from book_pages import REPO, notebooks, raw_markup_problems, rendered_tables, toc_files

pytestmark = pytest.mark.browser
HTML = REPO / "_build" / "html"
RESULTS = REPO / "_build" / "results"
CHAPTERS = [f"book/{p.stem}" for p in notebooks()]
TABLE_HEADER = ["claim", "post", "this book", "verdict", "test", "note"]
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail("no built book in _build/html: run `make book` first (make test does)")
    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Chromium not found at /usr/bin/chromium: `make browser` installs Debian's package")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, url):
    page = browser.new_page()
    errors = []
    page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    page.wait_for_timeout(500)
    return page, errors


@pytest.mark.parametrize("doc", toc_files())
def test_page_renders_offline(browser, server, doc):
    page, errors = open_page(browser, f"{server}/{doc}.html")
    try:
        external = page.evaluate(
            "() => Array.from(document.querySelectorAll('script[src],link[href],img[src]'))"
            ".map(e => e.src || e.href).filter(u => u && !u.startsWith(location.origin) && !u.startsWith('data:'))"
        )
        assert not [u for u in external if u.startswith("http")], f"resources from the network: {external}"
        broken = page.evaluate("() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
                               ".map(i => i.src.slice(0, 80))")
        assert not broken, f"images that did not load: {broken}"
        has_math = page.evaluate("() => document.querySelectorAll('.math, span.math, div.math').length")
        if has_math:
            page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=20000)
        plots = page.evaluate("() => document.querySelectorAll('.plotly-graph-div, div.explorable-plot').length")
        if plots:
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.plotly-graph-div, div.explorable-plot'))"
                ".every(d => d.querySelector('.main-svg'))", timeout=20000)
        for index in range(page.locator(".explorable").count()):
            check_explorable_responds(page, index)
        assert not errors, "\n".join(errors)
    finally:
        page.close()


def check_explorable_responds(page, index):
    """Move the first slider with more than one position; the frame key and the figure must change."""
    root = page.locator(".explorable").nth(index)
    slider = root.locator("input[type=range]:not([max='0'])").first
    if slider.count() == 0:
        return
    snapshot = ("el => el.dataset.kind === 'png' ? el.querySelector('img').src.length + ':' + "
                "el.querySelector('img').src.slice(-200) : el.querySelector('.explorable-plot').innerHTML")
    before_key, before = root.get_attribute("data-frame"), root.evaluate(snapshot)
    # move to the far end from where the slider starts (an explorable may start at its last position)
    slider.evaluate("s => { s.value = String(+s.value === +s.max ? +s.min : +s.max); "
                    "s.dispatchEvent(new Event('input')); }")
    page.wait_for_function("([el, key]) => el.dataset.frame !== key", arg=[root.element_handle(), before_key],
                           timeout=10000)
    page.wait_for_timeout(300)
    assert root.evaluate(snapshot) != before, f"explorable {index} did not redraw after its slider moved"


def built_page(doc: str) -> str:
    path = HTML / f"{doc}.html"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make book` first (make test does)")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", toc_files())
def test_page_prose_has_no_raw_tex_or_pipe_tables(doc):
    problems = raw_markup_problems(built_page(doc))
    assert not problems, f"{doc}: text a reader sees unrendered:\n" + "\n".join(problems)


def results_of(doc: str) -> dict:
    chapter = doc.split("/")[-1]
    path = RESULTS / f"{chapter}.json"
    assert path.exists(), (f"{path} missing: the chapter's closing table must be "
                           f"viz.post_vs_book(rows, chapter={chapter!r}, metrics=...)")
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["chapter"] == chapter and payload["rows"], path
    return payload


@pytest.mark.parametrize("doc", CHAPTERS)
def test_results_file_agrees_with_the_chapter_table(doc):
    from lib.verdicts import VERDICTS

    payload = results_of(doc)
    tables = [t for t in rendered_tables(built_page(doc)) if t and t[0] == TABLE_HEADER]
    assert len(tables) == 1, f"{doc}: expected one closing table with columns {TABLE_HEADER}, found {len(tables)}"
    shown = tables[0][1:]
    expected = [[" ".join(str(r[k]).split()) for k in ("claim", "post", "book", "verdict", "test", "note")]
                for r in payload["rows"]]
    assert shown == expected, f"{doc}: the results file and the rendered table differ"
    assert all(r["verdict"] in VERDICTS and r["test"] for r in payload["rows"]), \
        f"{doc}: every row needs a verdict from lib.verdicts and the test that decided it"
    assert all(isinstance(k, str) for k in payload["metrics"]), doc


def test_scoreboard_lists_every_claim_with_its_verdict():
    html = built_page("book/scoreboard")
    tables = [t for t in rendered_tables(html) if t and t[0] == ["claim", "verdict", "this book", "test"]]
    listed = [row[:2] for t in tables for row in t[1:]]
    expected = [[" ".join(r["claim"].split()), r["verdict"]] for doc in CHAPTERS for r in results_of(doc)["rows"]]
    assert listed == expected
    for doc in CHAPTERS:
        assert f'href="{doc.split("/")[-1]}.html"' in html, f"the scoreboard does not link back to {doc}"

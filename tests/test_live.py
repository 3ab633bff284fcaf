"""The live path, as a reader uses it: JupyterLab from the project's venv, a chapter run in Chromium, a slider moved.

JupyterLab is started from ``.venv`` on 127.0.0.1 with a random free port and a token, on ``book/``, as
``make lab`` does (``BOOK_BUILD=0``: explorables are live ipywidgets). Debian's Chromium, driven by Playwright,
opens a chapter, runs every cell through the Run menu, drags the first live slider of an explorable and checks
that the explorable's output is redrawn with the new value. Every request the page makes to a host other than
127.0.0.1 is aborted and fails the test; console errors fail it; the server's own network features (news feed,
update check, extension manager) are switched off. Autosave is off and the notebook file must be unchanged
afterwards (notebooks are committed without outputs). The server and its kernels are stopped even on failure.

``BOOK_LIVE_CHAPTER`` selects the chapter (a notebook stem); ``BOOK_LIVE_RUNS=N`` repeats the whole run N
times in one session (a check for intermittent hangs).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from book_pages import REPO
from test_browser import browser  # noqa: F401 (the shared Chromium fixture)

pytestmark = pytest.mark.live
VENV_BIN = Path(sys.executable).parent
BOOK = REPO / "book"
FIXTURES = REPO / "tests" / "fixtures"
# The fastest chapter with a live slider (measured: see the module's test below); any chapter stem works.
CHAPTER = os.environ.get("BOOK_LIVE_CHAPTER", "03_entropy_normalization")
RUNS = int(os.environ.get("BOOK_LIVE_RUNS", "1"))
RUN_TIMEOUT_S = 1200  # executing the whole chapter in the kernel (budget 6 min on a quiet machine)
LOCAL_HOSTS = {"127.0.0.1"}
KERNEL_START_TIMEOUT_S = 300
PAGE_LOAD_TIMEOUT_MS = 180_000  # JupyterLab's page on a loaded 2-core machine took > 30 s (Playwright's default)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (localhost)
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url} within {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server shuts its kernels down), then SIGKILL for the process group if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # kernels left behind, if any
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


@contextlib.contextmanager
def lab_server(root: Path, home: Path):
    """A JupyterLab server from the venv on `root`; yields (base URL, token, log). Shut down in `finally`."""
    settings = home / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    port, token = free_port(), secrets.token_hex(16)
    command = [str(VENV_BIN / "jupyter"), "lab", "--no-browser", "--ServerApp.open_browser=False",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = dict(os.environ, BOOK_BUILD="0", JUPYTER_CONFIG_DIR=str(home / "config"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), BOOK_RESULTS_DIR=str(home / "results"),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONHASHSEED="0",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # as `make lab`
    env.pop("TQDM_DISABLE", None)  # a reader's session shows progress bars (tqdm's ipywidgets)
    log = home / "server.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(f"{base}/api/status?token={token}", process, log)
        yield base, token, log
    finally:
        stop(process)


@pytest.fixture(scope="module")
def book_lab(tmp_path_factory):
    """JupyterLab on book/, as `make lab` starts it."""
    with lab_server(BOOK, tmp_path_factory.mktemp("lab-book")) as server:
        yield server


@pytest.fixture(scope="module")
def fixture_lab(tmp_path_factory):
    """JupyterLab on tests/fixtures (a minimal notebook independent of the chapters)."""
    with lab_server(FIXTURES, tmp_path_factory.mktemp("lab-fixture")) as server:
        yield server


def test_kernel_is_the_projects_venv(book_lab):
    """The python3 kernel JupyterLab offers runs the venv's interpreter (the native kernel of the server)."""
    base, token, _ = book_lab
    with urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}", timeout=30) as response:  # noqa: S310
        specs = json.load(response)
    argv = specs["kernelspecs"][specs["default"]]["spec"]["argv"]
    assert Path(argv[0]).resolve().parent == VENV_BIN.resolve() or argv[0] == "python", argv


def shut_down_kernels(base: str, token: str) -> None:
    """Delete every session (and its kernel) so that the next run starts a fresh kernel."""
    with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=30) as response:  # noqa: S310
        sessions = json.load(response)
    for session in sessions:
        request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")
        urllib.request.urlopen(request, timeout=60).close()  # noqa: S310


KERNEL_IDLE = ("() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget; const k = w && "
               "w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel; "
               "return !!k && k.status === 'idle'; }")


def open_notebook(page, base: str, token: str, name: str, errors: list[str]) -> None:
    """Open `name` in JupyterLab and wait until its kernel is idle. If JupyterLab asks which kernel to use
    (it may, after the previous run's session was deleted), accept its proposal: the notebook's python3."""
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on("response", lambda r: errors.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(f"{base}/lab/tree/{name}?token={token}", wait_until="load", timeout=PAGE_LOAD_TIMEOUT_MS)
    deadline = time.monotonic() + KERNEL_START_TIMEOUT_S
    while not page.evaluate(KERNEL_IDLE):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel of {name} was not idle {KERNEL_START_TIMEOUT_S} s after opening it")
        accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if accept.count():
            accept.first.click()
        page.wait_for_timeout(1000)


CELL_STATE = """() => {
  const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
  const out = {code: 0, done: 0, errors: []};
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    out.code += 1;
    if (cell.executionCount) out.done += 1;
    for (const o of cell.outputs.toJSON())
      if (o.output_type === 'error') out.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
  }
  out.status = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status;
  return out;
}"""


def run_all_cells(page) -> dict:
    """Run → Run All Cells through the menu bar; wait until every code cell has run and the kernel is idle."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(f"() => {{ const s = ({CELL_STATE})(); return s.errors.length > 0 || "
                           "(s.done === s.code && s.status === 'idle'); }", timeout=RUN_TIMEOUT_S * 1000,
                           polling=1000)
    return page.evaluate(CELL_STATE)


def first_live_slider(page):
    """The first explorable (an ipywidgets box holding a slider and an Output) with a slider that can move."""
    explorables = page.locator(".jp-OutputArea-output .widget-vbox:has(.widget-output):has(.widget-slider)")
    assert explorables.count() > 0, "no live explorable (slider + output widget) in the chapter's outputs"
    root = explorables.first
    root.scroll_into_view_if_needed()
    return root, root.locator(".widget-slider").first


def drag_across(page, slider) -> None:
    """Drag the slider's handle with the mouse to the far end (right, or left if it already sits right of
    the middle), as a reader would."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.hover()  # Playwright waits until the handle is visible and stable, and scrolls to it
    track, knob = slider.locator(".noUi-base").first.bounding_box(), handle.bounding_box()
    y = knob["y"] + knob["height"] / 2
    right_half = knob["x"] + knob["width"] / 2 > track["x"] + track["width"] / 2
    target = track["x"] - 20 if right_half else track["x"] + track["width"] + 20
    page.mouse.move(knob["x"] + knob["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(target, y, steps=15)
    page.mouse.up()


OUTPUT_SNAPSHOT = ("el => { const o = el.querySelector('.widget-output'); return o ? "
                   "o.innerHTML.replace(/id=\"[^\"]*\"/g, '') : ''; }")


def local_only_context(browser, external: list[str]):
    """A browser context in which every request to a host other than 127.0.0.1 is aborted and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})

    def only_local(route):
        if urlparse(route.request.url).hostname in LOCAL_HOSTS:
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    context.route("**/*", only_local)
    return context


def test_the_network_guard_catches_a_request_to_another_host(fixture_lab, browser):
    base, token, _ = fixture_lab
    external = []
    context = local_only_context(browser, external)
    try:
        page = context.new_page()
        page.goto(f"{base}/lab?token={token}", wait_until="load", timeout=PAGE_LOAD_TIMEOUT_MS)  # its CSP allows fetches
        page.evaluate("() => fetch('http://198.51.100.7/cdn.js').catch(() => 'blocked')")
        assert external == ["http://198.51.100.7/cdn.js"]
    finally:
        context.close()


def check_one_run(browser, lab, notebook: Path) -> None:
    base, token, log = lab
    errors, external = [], []
    context = local_only_context(browser, external)
    page = context.new_page()
    try:
        open_notebook(page, base, token, notebook.name, errors)
        state = run_all_cells(page)
        assert not state["errors"], f"{notebook.name}: cells raised:\n" + "\n".join(state["errors"])
        assert state["done"] == state["code"] > 0, state
        root, slider = first_live_slider(page)
        readout = slider.locator(".widget-readout")
        before_value, before = readout.inner_text(), root.evaluate(OUTPUT_SNAPSHOT)
        assert before, "the explorable's output widget is empty before the slider moves"
        drag_across(page, slider)
        page.wait_for_function("([el, v]) => el.innerText !== v", arg=[readout.element_handle(), before_value],
                               timeout=30_000)
        page.wait_for_function(f"([el, b]) => {{ const s = ({OUTPUT_SNAPSHOT})(el); return s && s !== b; }}",
                               arg=[root.element_handle(), before], timeout=120_000, polling=250)
        page.wait_for_timeout(1000)  # a redraw that fails shows its traceback in the output widget
        after = page.evaluate(CELL_STATE)
        assert not after["errors"], "moving the slider raised:\n" + "\n".join(after["errors"])
        assert "Traceback" not in root.inner_text(), root.inner_text()[-2000:]
        assert not external, f"requests to other hosts (aborted): {sorted(set(external))}"
        assert not errors, "\n".join(errors)
    except Exception:  # what the reader would have seen, for the failure report
        shot = Path(log).with_name(f"{notebook.stem}-failure-{time.strftime('%H%M%S')}.png")
        page.screenshot(path=str(shot), full_page=False)
        print(f"screenshot of the failure: {shot}")
        raise
    finally:
        context.close()
        shut_down_kernels(base, token)


def check_runs(browser, lab, notebook: Path) -> None:
    """`RUNS` full runs of `notebook`, each in a fresh kernel; the file on disk must stay as committed."""
    assert notebook.exists(), f"no {notebook}"
    digest = hashlib.sha256(notebook.read_bytes()).hexdigest()
    for run in range(RUNS):
        start = time.perf_counter()
        check_one_run(browser, lab, notebook)
        print(f"live run {run + 1}/{RUNS} of {notebook.stem}: {time.perf_counter() - start:.0f} s")
    assert hashlib.sha256(notebook.read_bytes()).hexdigest() == digest, \
        f"{notebook.name} was modified by the live run (autosave must be off)"


def test_live_explorable_in_a_minimal_notebook(fixture_lab, browser):
    check_runs(browser, fixture_lab, FIXTURES / "live_explorable.ipynb")


def test_live_explorable_in_a_chapter(book_lab, browser):
    check_runs(browser, book_lab, BOOK / f"{CHAPTER}.ipynb")

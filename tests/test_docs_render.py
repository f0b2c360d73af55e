"""Build the docs site and look at it in headless Chromium.

``mkdocs build --strict`` into a temporary directory, served by ``http.server`` on a free
port; Chromium (Debian's ``chromium``) is driven over the DevTools protocol (a small client
on ``websocket-client``) to open the home page, the API reference, a rendered notebook and
the performance page. Each must load without console errors or uncaught exceptions, show
its expected headings, and (notebook, performance) show its plots as decoded images.
Screenshots go to ``docs_screenshots/`` (git-ignored; ``DOCS_SCREENSHOTS`` overrides) for
a person to look at.

Skips, with the reason, where mkdocs (the docs extra) is missing, and the browser checks
where websocket-client or a Chromium binary is, so the main suite runs without them; CI
installs all of them.

The one resource the site loads from elsewhere is MathJax (from cdnjs) for the notebooks'
TeX. Where the network cannot reach it, its failed load is reported but not counted as an
error, and the notebook's math stays as TeX source.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("mkdocs", reason="mkdocs is not installed (the docs extra)")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (the docs extra)")
pytest.importorskip("mkdocs_jupyter", reason="mkdocs-jupyter is not installed (the docs extra)")

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCREENSHOTS = pathlib.Path(os.environ.get("DOCS_SCREENSHOTS", ROOT / "docs_screenshots"))
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BUILD_BUDGET_S = 60.0
# Remote resources a page may fail to load offline without that being an error (see above).
OPTIONAL_REMOTE = ("https://cdnjs.cloudflare.com/ajax/libs/mathjax/",)
VIEWPORT = (1440, 1000)


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        f"no Chromium binary on PATH (tried {', '.join(BROWSERS)}; apt-get install chromium)"
    )


# ---- the site, served ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert elapsed < BUILD_BUDGET_S, (
        f"the docs build took {elapsed:.0f} s (budget {BUILD_BUDGET_S:.0f} s)"
    )
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def base_url(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ---- a minimal DevTools-protocol client ---------------------------------------------------


class DevTools:
    """One page target of a headless Chromium, driven over its DevTools websocket."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client; the browser fixture skips without it

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, timeout: float = 30.0, **params):
        self.next_id += 1
        call_id = self.next_id
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(method)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        for i, message in enumerate(self.events):
            if message["method"] == event:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        self.ws.settimeout(timeout)
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            if message.get("method") == event:
                return message
            if "method" in message:
                self.events.append(message)
        raise TimeoutError(event)

    def evaluate(self, expression: str):
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self):
        self.ws.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("websocket", reason="websocket-client is not installed (the docs extra)")
    binary = _browser()
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{binary} did not start (exit code {proc.poll()})")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        width, height = VIEWPORT
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _problems(events: list[dict]) -> tuple[list[str], list[str]]:
    """(errors, tolerated): console errors, uncaught exceptions and failed loads."""
    errors, tolerated = [], []
    failed_requests = {}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            failed_requests[params["requestId"]] = params["request"]["url"]
    for event in events:
        method, params = event["method"], event.get("params", {})
        text, url = None, ""
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            url = details.get("url", "")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            text = params["entry"]["text"]
            url = params["entry"].get("url", "")
        elif method == "Network.loadingFailed":
            url = failed_requests.get(params["requestId"], "?")
            text = f"failed to load {url}: {params.get('errorText')}"
        if text is None:
            continue
        (tolerated if url.startswith(OPTIONAL_REMOTE) else errors).append(f"{text} ({url})")
    return errors, tolerated


def visit(tools: DevTools, url: str, name: str) -> dict:
    """Open ``url``, wait until it and its images have loaded, screenshot it; return what
    the page shows (title, headings, images) and any errors."""
    tools.events.clear()
    tools.send("Page.navigate", url=url)
    tools.wait_for("Page.loadEventFired")
    # Images decoded, fonts ready, then a moment for scripts started by the load event.
    tools.evaluate(
        "Promise.all([document.fonts.ready, ...Array.from(document.images).map("
        "i => i.decode().catch(() => null))])"
    )
    time.sleep(1.0)
    info = tools.evaluate(
        """(() => {
          const text = e => e.textContent.replace(/[¶\\s]+/g, ' ').trim();
          const article = document.querySelector('article') || document.body;
          return {
            title: document.title,
            h1: Array.from(article.querySelectorAll('h1')).map(text),
            h2: Array.from(article.querySelectorAll('h2')).map(text),
            ids: Array.from(article.querySelectorAll('[id]')).map(e => e.id),
            images: Array.from(article.querySelectorAll('img')).map(i => ({
              src: i.src.slice(0, 80), width: i.naturalWidth, height: i.naturalHeight,
              shown: i.getBoundingClientRect().width})),
          };
        })()"""
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = tools.send("Page.captureScreenshot", format="png")
    (SCREENSHOTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))
    # The first plot, if any, scrolled into view: the picture that must not be broken.
    has_plot = tools.evaluate(
        """(() => { const i = Array.from(document.querySelectorAll('article img'))
                       .find(i => i.naturalWidth > 100);
                    if (!i) return false; i.scrollIntoView({block: 'center'}); return true; })()"""
    )
    if has_plot:
        time.sleep(0.3)
        shot = tools.send("Page.captureScreenshot", format="png")
        (SCREENSHOTS / f"{name}_plot.png").write_bytes(base64.b64decode(shot["data"]))
    errors, tolerated = _problems(tools.events)
    info["errors"], info["tolerated"] = errors, tolerated
    if tolerated:
        print(f"{name}: remote resources not loaded (tolerated): {tolerated}")
    return info


def test_build_is_strict_and_fast(site):
    for page in (
        "index.html",
        "api/index.html",
        "notebooks/01_pbdl_gd_newton_pg/index.html",
        "benchmarks/results/throughput_float64.png",
    ):
        assert (site / page).is_file(), page


def test_home_page(browser, base_url):
    info = visit(browser, f"{base_url}/", "home")
    assert info["errors"] == []
    assert info["h1"] == ["jaxopt_dict"], info["h1"]
    assert "Install" in info["h2"], info["h2"]


def test_api_reference(browser, base_url):
    info = visit(browser, f"{base_url}/api/", "api")
    assert info["errors"] == []
    assert info["h1"] == ["API reference"], info["h1"]
    for name in (
        "minimize",
        "minimize_batch",
        "OptimizeResult",
        "Status",
        "Method",
        "Stepper",
        "StepOutcome",
        "Evaluation",
        "Option",
        "register_method",
        "method_names",
        "project",
        "dict_minimize",
        "dict_minimize.minimize",
    ):
        assert f"jaxopt_dict.{name}" in info["ids"], f"no API entry for jaxopt_dict.{name}"


def test_rendered_notebook(browser, base_url):
    info = visit(browser, f"{base_url}/notebooks/01_pbdl_gd_newton_pg/", "notebook_01")
    assert info["errors"] == []
    assert info["h1"] == ["GD, Newton and the inverse-simulator update (PG), step by step"], info
    assert "Ten steps of each method" in info["h2"], info["h2"]
    plots = [
        i for i in info["images"] if i["src"].startswith("data:image/png") and i["width"] > 100
    ]
    assert plots and all(p["shown"] > 100 for p in plots), info["images"]


def test_performance_page_shows_the_benchmark_plots(browser, base_url):
    info = visit(browser, f"{base_url}/performance/", "performance")
    assert info["errors"] == []
    assert info["h1"] == ["Performance"], info["h1"]
    plots = [i for i in info["images"] if "benchmarks/results/" in i["src"]]
    assert len(plots) == 3 and all(p["width"] > 100 for p in plots), info["images"]

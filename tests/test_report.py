"""The Snakemake HTML report opens offline in a headless browser and shows the headline figures.

The report of the example run is opened from disk in Debian's chromium (installed with apt-get
when missing; needs root then, else the module is skipped), with every network route closed, and
driven like a reader would: click a category, click a figure, click its info button. It is driven
over chromium's DevTools protocol on a pipe (``--remote-debugging-pipe``: NUL-terminated JSON on
file descriptors 3 and 4), with the standard library only.

Checked: the page renders with no JavaScript error and no request other than ``file:``/``data:``;
the category menu is rendered by the page's code (the names are read from the rendered text, not
from the embedded JSON, which ``--dump-dom`` would also show without any JavaScript running); each
headline figure opens from its category, the ``<img>`` the browser shows decodes to the same bytes
as the PNG in ``results/figures``, at the PNG's size, and a screenshot of it matches the PNG;
each caption is shown. Screenshots are left in the test's tmp_path. About 10 s besides the
workflow run (the ``example_run`` fixture) and a one-off apt-get install of chromium (15-25 s).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import select
import shutil
import struct
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import apt_install, run_snakemake

pytestmark = pytest.mark.workflow

REPORT = "report_browser.html"
# The headline figures and the report category each must be found in.
HEADLINE = {
    "results/figures/summary/post_vs_pre/study_summary.png": "0. Summary",
    "results/figures/enrichment/post_vs_pre/heatmap_gsea.png": "6. Enrichment",
    "results/figures/enrichment/post_vs_pre/donor_scores.png": "6. Enrichment",
}
CATEGORIES = [
    "0. Summary",
    "1. Quality control",
    "2. Clustering",
    "3. Annotation",
    "4. Composition",
    "5. Differential expression",
    "6. Enrichment",
    "7. Provenance",
]
VIEWPORT = (1600, 1300)  # tall enough for each headline figure to show whole
# Offline: no proxy lookup, every host name unresolvable, any proxied request sent to a closed port,
# no background traffic (updates, safe browsing, metrics).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
]


# --------------------------------------------------------------------------------------------
# chromium and a minimal DevTools client


def _chromium() -> str:
    """Path of Debian's chromium; apt-get installs it when missing (CI starts from a fresh machine)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it with apt-get needs root")
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed, and apt-get (to install Debian's chromium) was not found")
    apt_install("chromium")
    found = shutil.which("chromium")
    assert found, "apt-get installed chromium, but no chromium program is on PATH"
    return found


class DevTools:
    """A headless chromium driven over ``--remote-debugging-pipe``, with one page attached."""

    def __init__(self, chromium: str, profile: Path, log: Path):
        to_browser_read, self._write_fd = os.pipe()
        self._read_fd, from_browser_write = os.pipe()
        self.log = log
        # chromium reads commands on fd 3 and writes answers and events on fd 4; the shell puts
        # the pipe ends there (pass_fds keeps descriptor numbers; dash cannot redirect from fds > 9).
        command = [
            "bash",
            "-c",
            f'exec "$0" "$@" 3<&{to_browser_read} 4>&{from_browser_write}',
            chromium,
            *CHROMIUM_FLAGS,
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        with open(log, "wb") as stream:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=stream,
                pass_fds=(to_browser_read, from_browser_write),
                start_new_session=True,
            )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session = None
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for method in ("Page.enable", "Runtime.enable", "Network.enable"):
                self.send(method)
            # DevTools' own offline mode on top of the flags: any network request fails (files load).
            self.send(
                "Network.emulateNetworkConditions",
                {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
            )
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)  # its own session: chromium and its helpers only
            self.process.wait(timeout=10)
        os.close(self._write_fd)
        os.close(self._read_fd)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from chromium in time")
            ready, _, _ = select.select([self._read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self._read_fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited ({self.process.poll()}):\n{self.log_tail()}")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        """Send one command (to the page once attached) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self.session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._write_fd, data) :]
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event["params"]
            seen = len(self.events)
            self.events.append(self._receive(deadline))

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}\nthrew {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression: str, what: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not reached after {timeout} s")
            time.sleep(0.1)

    def load(self, url: str | None = None) -> None:
        """Open ``url`` (or reload the page) and wait for its load event."""
        self.events = [e for e in self.events if e.get("method") != "Page.loadEventFired"]
        self.send("Page.navigate", {"url": url}) if url else self.send("Page.reload")
        self.wait_event("Page.loadEventFired")

    def screenshot(self, clip: dict | None = None) -> Image.Image:
        params = {"format": "png"}
        if clip:
            # Inside the viewport: capturing beyond it would resize the page and move the layout.
            params |= {"clip": {**clip, "scale": 1}, "captureBeyondViewport": False}
        data = base64.b64decode(self.send("Page.captureScreenshot", params)["data"])
        return Image.open(io.BytesIO(data)).convert("RGB")

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


# --------------------------------------------------------------------------------------------
# The report, read as a file


def _embedded(html_text: str, name: str) -> dict:
    """A JSON object the report embeds as ``<script id="name"> var <name> = {...};`` (results, categories)."""
    start = re.search(rf'<script id="{name}">\s*var {name} = ', html_text).end()
    return json.JSONDecoder().raw_decode(html_text, start)[0]


def _data_uri_bytes(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:image/png") and header.endswith(";base64"), header[:80]
    return base64.b64decode(payload)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _caption_text(caption_html: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", caption_html)).split())


def _grey(image: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    """Grey levels, blurred over ~2 px: the browser places the image at a sub-pixel offset."""
    image = image.convert("RGB")
    if size:
        image = image.resize(size, Image.LANCZOS)
    return np.asarray(image.convert("L").filter(ImageFilter.GaussianBlur(2)), dtype=float)


class _ResourceLinks(HTMLParser):
    """Attributes that make a browser load something, in the markup (not inside scripts)."""

    ATTRIBUTES: ClassVar[set[str]] = {"src", "srcset", "data", "poster", "background", "xlink:href"}

    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name, value in attrs.items():
            loads = name in self.ATTRIBUTES or (name == "href" and tag in {"link", "base", "use", "image"})
            if loads and value:
                self.links.append((tag, name, value))

    handle_startendtag = handle_starttag


def _is_remote(url: str) -> bool:
    return bool(re.match(r"\s*(https?:|wss?:|ftp:|//)", url, re.I))


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def report(example_run) -> Path:
    """The report of the example run, built under its own name (test_workflow_example builds report.html)."""
    path = example_run / REPORT
    if not path.exists():
        run_snakemake(example_run, "--config", f"samples={example_run / 'samples.tsv'}", "--report", REPORT)
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = _chromium()
    folder = tmp_path_factory.mktemp("chromium")
    devtools = DevTools(chromium, folder / "profile", folder / "chromium.log")
    try:
        yield devtools
    finally:
        devtools.close()


# --------------------------------------------------------------------------------------------
# Tests


def test_report_needs_nothing_from_the_network(report):
    """Scripts, styles and images are all inline: no src/href in the markup points off the machine."""
    text = report.read_text()
    parser = _ResourceLinks()
    parser.feed(text)
    remote = [link for link in parser.links if _is_remote(link[2])]
    assert not remote, f"the report loads from the network: {remote[:5]}"
    # CSS could still pull fonts or images.
    for style in re.findall(r"<style[^>]*>(.*?)</style>", text, re.S | re.I):
        assert not re.search(r"@import|url\(\s*['\"]?\s*(https?:)?//", style, re.I), style[:200]
    # Every headline figure is embedded, byte for byte.
    results = _embedded(text, "results")
    for path in HEADLINE:
        assert path in results, f"{path} is not in the report"
        embedded = _data_uri_bytes(results[path]["data_uri"])
        assert embedded == (report.parent / path).read_bytes(), f"{path}: embedded bytes differ from the file"


def _click_menu_entry(browser: DevTools, name: str) -> None:
    entry = f"[...document.querySelectorAll('nav a')].filter(a => a.innerText.trim() === {json.dumps(name)})"
    browser.wait_until(f"{LOADED} && {entry}.length", f"menu entry {name!r}")
    hits = browser.evaluate(
        f"(() => {{ const hits = {entry}; if (hits.length === 1) hits[0].click(); return hits.length; }})()"
    )
    assert hits == 1, f"{hits} menu entries named {name!r}"


def _open_category(browser: DevTools, category: str, subcategory: str | None = None) -> None:
    """Reload (the app keeps its view in memory only), click the category in the menu and, in a
    category with subcategories (one per contrast ...), the subcategory."""
    browser.load()
    _click_menu_entry(browser, category)
    if subcategory is not None:
        _click_menu_entry(browser, subcategory)


def _row(labels: list[str]) -> str:
    """JavaScript: the rows of the category's table that show all of a result's labels."""
    return (
        "[...document.querySelectorAll('nav table tbody tr')].filter(row => "
        f"{json.dumps(labels)}.every(label => [...row.querySelectorAll('td')]"
        ".some(td => td.innerText.trim() === label)))"
    )


LOADED = "document.querySelector('#loading-screen').style.display === 'none'"
# The PNG in the content pane: its source, decoded size and place on the page.
SHOWN_PNG = """[...document.querySelectorAll('img')]
    .filter(img => img.src.startsWith('data:image/png') && img.complete && img.naturalWidth > 0)
    .map(img => { const r = img.getBoundingClientRect();
                  return {src: img.src, width: img.naturalWidth, height: img.naturalHeight,
                          x: r.x, y: r.y, w: r.width, h: r.height}; })[0]"""
LOCAL = ("file:", "data:", "blob:", "about:")


def test_report_renders_offline_and_shows_headline_figures(report, browser, tmp_path):
    """Open the report, then each headline figure from its category as a reader would; screenshots in tmp_path."""
    text = report.read_text()
    results, categories = _embedded(text, "results"), _embedded(text, "categories")
    browser.load(report.resolve().as_uri())
    # Rendered by the page's JavaScript (React): loading screen gone, categories in the menu.
    menu = browser.wait_until(
        f"{LOADED} && document.querySelector('nav') && document.querySelector('nav').innerText",
        "the report's menu rendered",
    )
    for category in CATEGORIES:
        assert category in menu.splitlines(), f"category {category!r} not in the rendered menu:\n{menu}"
    page = browser.screenshot()
    page.save(tmp_path / "landing.png")
    assert len(page.getcolors(1 << 24)) > 20, "the landing page renders blank"

    for path, category in HEADLINE.items():
        assert path in [p for paths in categories[category].values() for p in paths], f"{path} not in {category}"
        subcategory = next(name for name, paths in categories[category].items() if path in paths)
        _open_category(browser, category, subcategory if len(categories[category]) > 1 else None)
        # A label with two values is a toggle above the table (a subcategory of two figures): set it.
        # The figure's row is then the one showing its other labels; its first button shows it.
        shown_labels = []
        for key, value in results[path]["labels"].items():
            if not value:
                continue
            toggle = json.dumps(f'label[for="toggle-{key}-{value}"]')
            toggled = browser.evaluate(
                f"(() => {{ const t = document.querySelector({toggle}); if (t) t.click(); return !!t; }})()"
            )
            if not toggled:
                shown_labels.append(value)
        row = _row(shown_labels)
        rows = browser.wait_until(f"{row}.length", f"the row of {path} in {category}")
        assert rows == 1, f"{rows} rows in {category} match the labels of {path}"
        browser.evaluate(f"{row}[0].querySelector('td:last-child a').click()")
        shown = browser.wait_until(f"app.state.resultPath === {json.dumps(path)} && {SHOWN_PNG}", f"{path} shown")
        figure = (report.parent / path).read_bytes()
        assert _data_uri_bytes(shown["src"]) == figure, f"the image shown for {path} is not the file"
        assert (shown["width"], shown["height"]) == _png_size(figure), f"{path} decoded at another size"
        assert shown["w"] > 200 and shown["h"] > 100, f"{path} displayed at {shown['w']}x{shown['h']} px"
        # What the browser paints is the figure: a screenshot of the image element against the
        # PNG scaled to the same size (about 1.0 here, 0.05-0.25 against the report's other figures).
        shot = browser.screenshot({"x": shown["x"], "y": shown["y"], "width": shown["w"], "height": shown["h"]})
        shot.save(tmp_path / f"{Path(path).stem}.png")
        browser.screenshot().save(tmp_path / f"{Path(path).stem}_page.png")
        painted = _grey(shot)
        assert painted.std() > 10, f"the screenshot of {path} is blank"
        correlation = np.corrcoef(painted.ravel(), _grey(Image.open(io.BytesIO(figure)), shot.size).ravel())[0, 1]
        assert correlation > 0.9, f"the screenshot of {path} does not look like the figure (r = {correlation:.3f})"
        # Its caption, shown by the info button next to it.
        caption = _caption_text(results[path]["caption"])
        assert caption, f"{path} has no caption"
        browser.evaluate(f"{row}[0].querySelectorAll('td:last-child a')[1].click()")
        info = browser.wait_until(
            "app.state.navbarMode === 'resultinfo' && document.querySelector('nav').innerText", f"info of {path}"
        )
        assert caption in " ".join(info.split()), f"caption of {path} not shown:\n{info}"

    # Offline throughout: only the file and inline data were requested, nothing failed to load,
    # no script error; and the browser was offline indeed (a request from the page fails).
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert requests, "no request recorded"
    assert all(url.startswith(LOCAL) for url in requests), [u[:100] for u in requests if not u.startswith(LOCAL)]
    failed = [e["params"] for e in browser.events if e.get("method") == "Network.loadingFailed"]
    assert not failed, failed[:3]
    errors = [e["params"]["exceptionDetails"] for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]
    assert not errors, errors[:3]
    probe = browser.send(
        "Runtime.evaluate",
        {
            "expression": "fetch('https://example.org/').then(() => 'loaded', () => 'failed')",
            "awaitPromise": True,
            "returnByValue": True,
        },
    )
    assert probe["result"]["value"] == "failed", probe

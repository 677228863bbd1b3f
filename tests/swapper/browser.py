"""A real browser on the web page: `python -m swapper.app` in a subprocess, Debian's headless Chromium
driven by Selenium through Debian's chromedriver (`make test-browser` installs both).

Nothing here reaches the network: the app binds 127.0.0.1 on a free port, Selenium Manager never runs
(the driver's path is given), and Chromium resolves no host name but the app's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-features=AutofillServerCommunication,OptimizationHints,OptimizationGuideModelDownloading,Translate",
    "--disable-search-engine-choice-screen",
    "--password-store=basic",
    "--window-size=1400,1000",
    # the hard guard: every host name is "not found" except the app's (the IP literal must be EXCLUDEd too)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
)


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    gone = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).is_file()]
    if gone:
        return f"{' and '.join(gone)} missing: `make test-browser` installs Debian's chromium and chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(args: list[str], root: Path, cwd: Path = REPO, timeout: float = 180.0) -> Iterator[tuple[str, Path]]:
    """`python -m swapper.app ARGS --port FREE`, run in `cwd`, until its page answers: (url, its log). Stopped
    on exit. Its files (log, uploads, results) go under `root`."""
    port = free_port()
    log_path = root / "app.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    env["GRADIO_TEMP_DIR"] = str(root / "gradio")  # uploads and Gradio's copies of results
    env["TMPDIR"] = str(root)  # the app's own folder
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # from any cwd
    url = f"http://127.0.0.1:{port}/"
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swapper.app", *args, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with {proc.returncode}:\n{log_path.read_text()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.3)
        print(f"[browser] the app answered after {time.monotonic() - start:.1f} s on {url}")
        yield url, log_path
    finally:
        proc.terminate()  # SIGTERM: the app closes its server and removes its folder
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium with a fresh profile, driven by Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the network log: requested_urls
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never download (it is not run anyway)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait(driver, condition, timeout: float = 60.0, what: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, what)


def open_page(driver, url: str, button: str) -> None:
    driver.get(url)
    wait(driver, lambda d: any(e.is_enabled() for e in css(d, button)), what=f"{button} on the page")


def upload(driver, elem_id: str, path: Path, media: str = "img") -> None:
    """Into a Gradio Image or Video: its hidden file <input>; then wait for the preview (the upload is an
    asynchronous POST, and a click before it lands sends nothing for that input)."""
    css(driver, f"#{elem_id} input[type=file]")[0].send_keys(str(path))
    wait(
        driver,
        lambda d: any(path.name in (e.get_attribute("src") or "") for e in css(d, f"#{elem_id} {media}")),
        30,
        f"the preview of {path.name} in #{elem_id}",
    )


def src_of(driver, selector: str, timeout: float = 120.0) -> str:
    """The `src` of the first element matching `selector`, once one has it."""

    def found(d):
        return next((s for e in css(d, selector) if (s := e.get_attribute("src"))), False)

    return wait(driver, found, timeout, f"a src on {selector}")


def error_toasts(driver) -> list[str]:
    return [e.text for e in css(driver, '[data-testid="toast-body"].error [data-testid="toast-text"]')]


def requested_urls(driver) -> list[str]:
    """The http(s) and ws(s) URLs the page requested since the last call (chromedriver's performance log,
    which each call drains)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", {}).get("url") or message["params"].get("url", "")
            if urllib.parse.urlparse(url).scheme in ("http", "https", "ws", "wss"):
                urls.append(url)
    return urls


def fetch(url: str) -> bytes:
    """A file the page shows, fetched from the app itself (never anywhere else)."""
    assert urllib.parse.urlparse(url).hostname == "127.0.0.1", url
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()

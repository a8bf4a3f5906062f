"""A real Dagster webserver over a THRESHER_HOME, and headless Chromium to look at it.

Shared by the browser tests and docs/screenshots.py. Chromium comes from Debian's package
(/usr/bin/chromium, installed by `make test`); Playwright only drives it, it never downloads a browser.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO

CHROMIUM = os.environ.get("THRESHER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dagster_webserver(home: Path, config: Path | None = None, timeout: float = 90.0) -> Iterator[str]:
    """Serve the Dagster UI over ``home`` (its own process group, stopped as a group) and yield its URL."""
    port = free_port()
    env = {**os.environ, "THRESHER_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    if config is not None:
        env["THRESHER_CONFIG"] = str(config)
    webserver = Path(sys.executable).with_name("dagster-webserver")
    log = (home / "webserver.log").open("w")
    proc = subprocess.Popen(
        [str(webserver), "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"dagster-webserver did not start; see {home / 'webserver.log'}"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()


def dismiss_community_dialog(page: object) -> None:
    """The one-time "Join the Dagster community" dialog (off in Thresher's instance, but be safe)."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.first.click()

"""The dashboard in a real browser: its server in the background and a headless Chromium driven by Playwright.

Used by the screenshot script (:mod:`dashboard.screenshots`), the browser timings (:mod:`dashboard.bench`) and
the browser tests. Playwright is imported only when a browser is started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: true once the script has finished, no element is a loading skeleton and every picture has loaded
SETTLED = """() => { const a = document.querySelector('[data-testid=stApp]');
    return a && a.getAttribute('data-test-script-state') === 'notRunning'
        && document.querySelectorAll('[data-testid=stSkeleton]').length === 0
        && [...document.images].every(i => i.complete) }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Return once the server answers its health check; raise if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the dashboard server did not answer on port {port} within {timeout:.0f} s")


@contextmanager
def server(store: str | Path, log: Path | None = None):
    """The dashboard of ``store`` served on a free local port for the duration of the block; yields its URL.
    The server (its whole process group) is always stopped afterwards."""
    from dashboard.launch import command, server_env

    port = free_port()
    out = open(log, "wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(command(store, port=port, host="127.0.0.1"), stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, env=server_env(store))
    try:
        wait_healthy(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        if log is not None:
            out.close()


@contextmanager
def chromium():
    """A headless Chromium (``/usr/bin/chromium``) through Playwright, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def settle(page, timeout: float = 120_000) -> None:
    """Wait until the page's script has finished and everything on it is drawn."""
    page.wait_for_timeout(500)
    page.wait_for_function(SETTLED, timeout=timeout, polling=50)
    page.wait_for_timeout(300)


__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "SETTLED", "free_port", "wait_healthy", "server", "chromium", "settle"]

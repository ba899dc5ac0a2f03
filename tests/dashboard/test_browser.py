"""End to end: the real server in a real Chromium. Open a shared link to the failure cases on a fresh server,
filter out a method in the sidebar, select the first failure case, and land on that image's detail page."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.dashboard.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no /_stcore/health after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _settle(page, timeout: float = 90_000) -> None:
    """Wait until the script has finished and no element is still a loading skeleton."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        """() => { const a = document.querySelector('[data-testid=stApp]');
                   return a && a.getAttribute('data-test-script-state') === 'notRunning'
                       && document.querySelectorAll('[data-testid=stSkeleton]').length === 0 }""",
        timeout=timeout)
    page.wait_for_timeout(1000)


@pytest.fixture
def server(store, tmp_path):
    """`streamlit run dashboard/app.py -- --store <store>` on a free port (always stopped afterwards)."""
    from dashboard.launch import command

    port = _free_port()
    log = tmp_path / "server.log"
    env = {**os.environ, "VITLENS_STORE": str(store)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(command(store, port=port, host="127.0.0.1"), cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(port, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def test_failure_case_opens_its_image_in_a_browser(server, store, store_info):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (make browser, or apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from store import query as q

    methods = store_info["facets"]["methods"]
    dropped, kept = methods[-1], tuple(methods[:-1])
    con = q.connect(store)
    expected = q.failure_cases(con, q.RowFilter(run_id=store_info["run_id"], protocol="report", methods=kept),
                               "iou", store_info["columns"], limit=50)["image_id"].iloc[0]
    con.close()

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{server}/failures")  # a fresh server whose first request names a page
            _settle(page)
            assert page.locator("h1", has_text="Failure cases").count() == 1
            assert page.locator('[data-testid="stSidebar"]').get_by_text("Filters", exact=True).count() == 1

            page.locator(f'[data-testid="stSidebar"] button[aria-label="Remove {dropped}"]').click()
            _settle(page)
            assert "method=" in page.url and f"method={dropped}" not in page.url
            page.screenshot(path=str(ARTIFACTS / "dashboard-failures.png"))

            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            # the row-selection checkbox of the first row (header ~36 px, rows 64 px)
            page.mouse.click(box["x"] + 16, box["y"] + 36 + 32)
            page.wait_for_url("**/image?**", timeout=60_000)
            _settle(page)

            assert f"image={expected}" in page.url
            assert f"method={dropped}" not in page.url  # the filter travelled with the link
            assert page.locator("h1", has_text="Image detail").count() == 1
            assert f"{expected} · ground truth" in page.locator('[data-testid="stMain"]').inner_text()
            assert page.locator('[data-testid="stImage"]').count() >= 1 + len(kept)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.mouse.move(0, 0)  # no hover decorations in the picture
            page.set_viewport_size({"width": 1500, "height": 2200})  # the app scrolls inside its own frame
            _settle(page)
            page.screenshot(path=str(ARTIFACTS / "dashboard-image-detail.png"))

            # the top navigation keeps the filters in the URL
            page.get_by_role("link", name="Leaderboard").click()
            page.wait_for_url(lambda url: "/image" not in url, timeout=60_000)
            _settle(page)
            assert page.locator("h1", has_text="Leaderboard").count() == 1
            assert "method=" in page.url and f"method={dropped}" not in page.url and "image=" not in page.url
            assert page.locator('[data-testid="stException"]').count() == 0
        finally:
            browser.close()

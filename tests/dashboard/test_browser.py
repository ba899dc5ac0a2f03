"""End to end: the real server in a real Chromium. Open a shared link to the failure cases on a fresh server,
filter out a method in the sidebar, select the first failure case, and land on that image's detail page."""

from __future__ import annotations


import pytest

from pathlib import Path

from dashboard.browser import CHROMIUM, CHROMIUM_ARGS, settle
from dashboard.browser import server as serve
from tests.dashboard.conftest import REPO

ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _settle(page) -> None:
    settle(page, timeout=90_000)


@pytest.fixture
def server(store, tmp_path):
    """The dashboard of ``store`` on a free port (always stopped afterwards)."""
    with serve(store, log=tmp_path / "server.log") as url:
        yield url


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
            page.goto(f"{server}/failures?fc_metric=iou")  # a fresh server whose first request names a page
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


# ------------------------------------------------------------------------------- the journey on a demo store
@pytest.fixture
def demo_server(demo_store, tmp_path):
    """The dashboard of a real demo store (planted cue, every method) on a free port."""
    with serve(demo_store, log=tmp_path / "demo-server.log") as url:
        yield url


def _main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def _same_view_in_a_fresh_context(browser, url: str, expect: list[str]) -> None:
    """A shared link: a new browser context (no session, no cookies) opening ``url`` shows the same view."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    try:
        fresh = context.new_page()
        fresh.goto(url)
        _settle(fresh)
        text = _main_text(fresh)
        missing = [e for e in expect if e not in text]
        assert not missing, f"{url} in a fresh context lacks {missing}"
        assert fresh.locator('[data-testid="stException"]').count() == 0
    finally:
        context.close()


def _click_first_scatter_point(page) -> None:
    """Click the first point of the scatter (the chart with a markers trace), at its pixel position."""
    xy = page.evaluate("""() => {
        for (const gd of document.querySelectorAll('.js-plotly-plot')) {
            const traces = (gd._fullData || []).filter(d => d.type === 'scatter' && d.mode === 'markers'
                                                           && d.visible !== false);
            if (!traces.length) continue;
            gd.scrollIntoView({block: 'center'});
            const L = gd._fullLayout, r = gd.getBoundingClientRect();
            const px = (t, i) => [r.left + L.xaxis._offset + L.xaxis.l2p(t.x[i]),
                                  r.top + L.yaxis._offset + L.yaxis.l2p(t.y[i])];
            const all = traces.flatMap(t => Array.from(t.x, (_, i) => px(t, i)));
            for (const t of traces) {  // a point no other point covers (8 px apart from every other)
                for (let i = 0; i < t.x.length; i++) {
                    const [x, y] = px(t, i);
                    const near = all.filter(([a, b]) => Math.hypot(a - x, b - y) < 8).length;
                    if (near === 1) return [x, y, String(t.customdata[i][0])];
                }
            }
        }
        return null; }""")
    assert xy, "no scatter on the page"
    page.mouse.move(xy[0], xy[1])  # hover first: plotly picks the point under the cursor
    page.wait_for_timeout(300)
    page.mouse.click(xy[0], xy[1])
    return xy[2]


def test_journey_on_a_demo_store(demo_server, demo_store):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (make browser, or apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    from store import query as q

    con = q.connect(demo_store)
    run_id = q.run_catalog(con)["run_id"].iloc[0]
    methods = q.run_facets(con, run_id)["methods"]
    con.close()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
            page = context.new_page()

            # failure cases, ranked by the strongest evidence the demo store has: counterfactual context reliance
            page.goto(f"{demo_server}/failures")
            _settle(page)
            assert "context reliance" in _main_text(page)
            failures_url = page.url
            grid = page.locator('[data-testid="stDataFrame"]').first
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            page.mouse.click(box["x"] + 16, box["y"] + 36 + 32)  # select the first row
            page.wait_for_url("**/image?**", timeout=60_000)
            _settle(page)

            # the image with every method's map, ground-truth and cue outlines
            image_url = page.url
            image_id = image_url.split("image=")[1].split("&")[0]
            text = _main_text(page)
            assert f"{image_id} · ground truth" in text and "planted cue" in text
            assert page.locator('[data-testid="stImage"]').count() >= 1 + len(methods)
            assert page.get_by_text("Ground truth", exact=True).count() >= 1
            assert page.get_by_text("Cue", exact=True).count() >= 1
            page.screenshot(path=str(ARTIFACTS / "journey-image-detail.png"), full_page=True)

            page.go_back()  # back to the ranked list
            page.wait_for_url(lambda url: "/failures" in url, timeout=60_000)
            _settle(page)
            assert page.locator("h1", has_text="Failure cases").count() == 1

            # the ranked list to the grid, then exported as image ids
            page.get_by_role("button", name="in the grid").click()
            page.wait_for_url("**/grid?**", timeout=60_000)
            _settle(page)
            grid_url = page.url
            assert "sel=" in grid_url
            with page.expect_download() as download:
                page.locator('[data-testid="stSidebar"]').get_by_role("button", name="Export CSV").click()
            lines = Path(download.value.path()).read_text().splitlines()
            assert lines[0] == "image_id" and len(lines) > 1 and image_id in lines[1:]
            page.screenshot(path=str(ARTIFACTS / "journey-grid-selection.png"))

            # a scatter point opens its image
            page.goto(f"{demo_server}/distributions")
            _settle(page)
            scatter_url = page.url
            clicked = _click_first_scatter_point(page)
            page.wait_for_url("**/image?**", timeout=60_000)
            _settle(page)
            assert f"image={clicked}" in page.url

            # every view again, from its link, in a fresh browser context
            _same_view_in_a_fresh_context(browser, failures_url, ["Failure cases", "context reliance"])
            _same_view_in_a_fresh_context(browser, image_url, [f"{image_id} · ground truth"])
            _same_view_in_a_fresh_context(browser, grid_url, ["Heatmap grid", f"{len(lines) - 1} images"])
            _same_view_in_a_fresh_context(browser, scatter_url, ["Distributions"])
            context.close()
        finally:
            browser.close()

"""End to end in a real Chromium against the real server: the Shortcuts page renders its tables and pictures, a
changed view goes into the URL and that URL reproduces it in a fresh browser context; the screenshot script
saves non-empty PNGs."""

from __future__ import annotations

import re
import struct

import pytest

from dashboard import browser
from tests.dashboard import synth_cf

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def cf_store(tmp_path_factory):
    if not browser.CHROMIUM.is_file():
        pytest.skip(f"{browser.CHROMIUM} is not installed (make browser, or apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    return synth_cf.build(tmp_path_factory.mktemp("cf-browser"))


def card_headers(page) -> list[str]:
    texts = page.locator('[data-testid="stMain"] [data-testid="stMarkdownContainer"]').all_inner_texts()
    return [t.strip() for t in texts if re.match(r"#\d+ · ", t.strip())]


def test_shortcuts_page_renders_and_a_shared_url_reproduces_it(cf_store, tmp_path):
    with browser.server(cf_store, log=tmp_path / "server.log") as url, browser.chromium() as chrome:
        first = chrome.new_context(viewport={"width": 1500, "height": 2400})
        page = first.new_page()
        page.goto(f"{url}/shortcuts?protocol=clean")
        browser.settle(page)
        main = page.locator('[data-testid="stMain"]')
        assert page.locator("h1", has_text="Shortcuts").count() == 1
        for heading in ("Context-driven decisions per class", "Which explanation exposes shortcuts best",
                        "Planted cue", "Images ranked by evidence"):
            assert main.get_by_text(heading, exact=True).count() == 1, heading
        assert main.locator('[data-testid="stDataFrame"]').count() >= 3   # per class, method trust, cue
        assert main.locator('[data-testid="stImage"]').count() >= 5 * 4
        assert page.locator('[data-testid="stException"]').count() == 0
        assert len(card_headers(page)) == 5

        # a tall window: the choices open below the box, inside the page
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Verdict").click()
        page.get_by_role("option", name="object-driven", exact=True).click()
        page.wait_for_url(re.compile(r".*sc_verdict=object-driven.*"), timeout=60_000)
        browser.settle(page)
        shown = card_headers(page)
        assert shown and all("verdict object-driven" in h for h in shown)
        shared = page.url
        assert "protocol=clean" in shared
        first.close()

        fresh = chrome.new_context(viewport={"width": 1500, "height": 2400})
        again = fresh.new_page()
        again.goto(shared)
        browser.settle(again)
        assert card_headers(again) == shown
        assert again.locator('[data-testid="stException"]').count() == 0
        fresh.close()


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_screenshot_script_saves_every_view(cf_store, tmp_path):
    from dashboard import screenshots

    saved = screenshots.take(cf_store, tmp_path / "img", protocol="clean")
    assert [p.name for p in saved] == [name for name, _ in screenshots.VIEWS]
    for path in saved:
        width, height = _png_size(path)
        assert width == screenshots.WIDTH and height >= 800 and path.stat().st_size > 20_000
    # the image detail shows the image whose context alone keeps the most of the explained class's probability
    from store.query import connect

    con = connect(cf_store)
    no_fg = con.execute("SELECT image_id, least(score / orig_score, 1.0) AS r FROM counterfactuals WHERE run_id = ? "
                        "AND protocol = 'clean' AND variant = 'no_fg'", [synth_cf.DEFAULT_RUN]).df()
    con.close()
    best = no_fg.sort_values(["r", "image_id"], ascending=[False, True])["image_id"].iloc[0]
    assert screenshots.featured_image(cf_store, "clean") == best

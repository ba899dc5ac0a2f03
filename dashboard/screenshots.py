"""Screenshots of the dashboard for the README: ``python -m dashboard.screenshots --store S --out docs/img``.

Serves ``S`` with the real server, opens each view in a headless Chromium (``/usr/bin/chromium``, through
Playwright) and saves one PNG per view, the whole page tall:

- ``shortcuts.png`` — the Shortcuts page (per-class context reliance, the method-trust table, ranked images);
- ``failures.png`` — the failure list;
- ``image-detail.png`` — the image detail of the image the store ranks first (the strongest context reliance
  when it has counterfactual rows, else the top failure case, else its first image), or of ``--image``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlencode

from dashboard import browser

#: (file name, page path) of every screenshot; the image detail gets its image's id added
VIEWS = (("shortcuts.png", "shortcuts"), ("failures.png", "failures"), ("image-detail.png", "image"))
WIDTH = 1500
MAX_HEIGHT = 4000


def featured_image(store: str | Path, protocol: str | None = None) -> str | None:
    """The image a reader should see first: strongest context reliance, else top failure case, else first."""
    from store import query as q
    from store import shortcuts

    con = q.connect(store)
    try:
        runs = q.run_catalog(con)
        if runs.empty:
            return None
        run_id = runs["run_id"].iloc[0]
        decisions = shortcuts.reliance(con, run_id, protocol).dropna(subset=["context_reliance"])
        if not decisions.empty:
            return str(decisions.sort_values(["context_reliance", "image_id"], ascending=[False, True])
                       ["image_id"].iloc[0])
        known = q.metric_columns(con)
        if "iou" in known:
            cases = q.failure_cases(con, q.RowFilter(run_id=run_id, protocol=protocol or "report"), "iou", known, 1)
            if not cases.empty:
                return str(cases["image_id"].iloc[0])
        ids = q.image_ids(con, run_id)
        return ids[0] if ids else None
    finally:
        con.close()


def _full_height(page) -> None:
    """Grow the viewport to the page's content (the app scrolls inside its own frame, not the window)."""
    height = page.evaluate("() => { const m = document.querySelector('[data-testid=stMain]');"
                           " return m ? m.scrollHeight : document.body.scrollHeight }")
    page.set_viewport_size({"width": WIDTH, "height": int(min(max(height, 800), MAX_HEIGHT))})
    browser.settle(page)


def take(store: str | Path, out: str | Path, image: str | None = None, protocol: str | None = None) -> list[Path]:
    """Save the screenshots of :data:`VIEWS` of ``store`` into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image = image or featured_image(store, protocol)
    saved = []
    with browser.server(store) as url, browser.chromium() as chrome:
        for name, path in VIEWS:
            params = {"protocol": protocol} if protocol else {}
            if path == "image" and image:
                params["image"] = image
            page = chrome.new_page(viewport={"width": WIDTH, "height": 1100})
            page.goto(f"{url}/{path}" + (f"?{urlencode(params)}" if params else ""))
            browser.settle(page)
            page.mouse.move(0, 0)  # no hover decorations
            _full_height(page)
            page.screenshot(path=str(out / name))
            page.close()
            saved.append(out / name)
    return saved


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dashboard.screenshots", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, required=True, help="the store to show")
    ap.add_argument("--out", type=Path, default=Path("docs/img"), help="folder of the PNG files (default docs/img)")
    ap.add_argument("--image", default=None, help="image id of the image detail (default: the store's first-ranked)")
    ap.add_argument("--protocol", default=None, choices=("report", "clean"),
                    help="protocol of every view (default: the dashboard's)")
    args = ap.parse_args(argv)
    for path in take(args.store, args.out, args.image, args.protocol):
        print(path)


if __name__ == "__main__":
    main()

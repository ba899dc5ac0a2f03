"""How fast does the dashboard answer a filter change on a large store? ``python -m dashboard.bench``.

Builds a synthetic store (default 100 000 metric rows: 12 500 images × 4 methods × 2 protocols, with their
heatmaps, images and counterfactual rows) written by the batch job's own writer (``store.writer.StoreWriter``: the same parts, commit
order and run manifest as a real run), then measures

1. the store queries the pages run (cold: first call on a fresh connection; warm: repeated), and
2. the time from a filter change to the rendered page, per page, through Streamlit's AppTest: each change
   picks a filter state not seen before (so every cached query misses), then the same state again (hits);
3. with ``--browser``, in Chromium against the real server: each page's first load from its link, and the
   time from a click in the sidebar to the fully drawn page.

Goal: a filter change renders in at most one second, a page's first load in at most three.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = ("raw_attention", "rollout", "gradcam", "agcam")
PROTOCOLS = ("report", "clean")
RUN_ID = "bench0000000"
APP = Path(__file__).resolve().parent / "app.py"
#: the pages measured, with the link parameters they are opened with
PAGES = (("leaderboard", None), ("distributions", {"chart": "box"}), ("failures", None),
         ("grid", {"per_page": "8"}), ("image", {"image": "bench_000042"}), ("shortcuts", None))


# ------------------------------------------------------------------------------------------- the store
def _pictures(rng: np.random.Generator, n: int = 16):
    """A few distinct (thumbnail JPEG, full-size mask PNG) pairs, reused across images (as parquet dictionary
    pages keep them small, the store stays light)."""
    from PIL import Image, ImageDraw

    from compute.data.voc import VOC_CLASSES

    out = []
    for i in range(n):
        w, h = 500, 375
        img = Image.new("RGB", (w, h), tuple(int(x) for x in rng.integers(40, 200, 3)))
        mask = Image.new("L", (w, h), 0)
        d, dm = ImageDraw.Draw(img), ImageDraw.Draw(mask)
        classes = sorted(set(int(c) for c in rng.integers(1, len(VOC_CLASSES), rng.integers(1, 3))))
        for c in classes:
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = (x0, y0, x0 + int(rng.integers(60, w // 2)), y0 + int(rng.integers(60, h // 2)))
            d.ellipse(box, fill=tuple(int(x) for x in rng.integers(0, 255, 3)))
            dm.ellipse(box, fill=c)
        thumb = img.copy()
        thumb.thumbnail((320, 320))
        jb, mb = io.BytesIO(), io.BytesIO()
        thumb.save(jb, format="JPEG", quality=88)
        mask.save(mb, format="PNG", optimize=True)
        out.append((jb.getvalue(), mb.getvalue(), [VOC_CLASSES[c] for c in classes], w, h))
    return out


def _counterfactual_rows(rng: np.random.Generator, image_id: str, gt: list[str], pred: int, label: str,
                         conf: float, partner: tuple[str, list[str]]) -> list[dict]:
    """The ``only_fg``, ``no_fg`` and ``mixed_rand`` rows of one image under each protocol, with outcomes drawn
    so that every verdict occurs."""
    rows = []
    for proto in PROTOCOLS:
        base = {"image_id": image_id, "target_kind": "logit", "target_class": pred, "protocol": proto,
                "fill": "blur", "gt_target": ",".join(gt), "region_area": float(rng.uniform(0.05, 0.6)),
                "score_kind": "probability", "orig_score": conf, "orig_pred_class": pred}
        for variant in ("only_fg", "no_fg", "mixed_rand"):
            same = bool(rng.random() < 0.5)
            row = {**base, "variant": variant, "score": float(conf * rng.uniform(0, 1)), "pred_class": pred,
                   "pred_label": label, "pred_voc": gt[0] if same else partner[1][0], "same_top1": same}
            if variant == "mixed_rand":
                row.update(partner_id=partner[0], partner_classes=",".join(partner[1]))
            rows.append(row)
    return rows


def build_store(out: str | Path, rows: int = 100_000, parts: int = 10, seed: int = 0) -> dict:
    """Write a synthetic store of ``rows`` metric rows into ``out``, with the counterfactual rows of every
    image; returns what was written."""
    from compute.data.voc import VOC_CLASSES
    from store.catalogue import names
    from store.schema import encode_heatmap
    from store.writer import StoreWriter

    out = Path(out)
    writer = StoreWriter(out, RUN_ID)
    rng = np.random.default_rng(seed)
    per_image = len(METHODS) * len(PROTOCOLS)
    n_images = max(1, rows // per_image)
    pics = _pictures(rng)
    # the families a run without faithfulness or planted cues fills
    score_cols = names("localisation") + names("threshold_free")
    labels = ["tabby", "goldfish", "airliner", "sports car", "collie", "sorrel", "mountain bike", "seashore"]
    ids = [f"bench_{i:06d}" for i in range(n_images)]
    bounds = np.linspace(0, n_images, parts + 1).astype(int)
    cf_rng = np.random.default_rng(seed + 1)  # its own stream: the metric rows stay those of earlier versions
    for p in range(parts):
        metrics, heatmaps, images, cfs = [], [], [], []
        for i in range(bounds[p], bounds[p + 1]):
            thumb, mask, gt, w, h = pics[i % len(pics)]
            conf = float(rng.beta(5, 2))
            correct = None if rng.random() < 0.2 else bool(rng.random() < 0.7)
            pred = int(rng.integers(0, 1000))
            label = labels[pred % len(labels)]
            top = rng.dirichlet(np.ones(5)) * conf
            images.append({"image_id": ids[i], "split": "val", "width": w, "height": h, "gt_classes": gt,
                           "top_classes": [pred] + [int(x) for x in rng.integers(0, 1000, 4)],
                           "top_labels": [label] + [labels[int(x) % len(labels)] for x in rng.integers(0, 8, 4)],
                           "top_probs": sorted([float(x) for x in top], reverse=True), "thumbnail": thumb,
                           "mask_png": mask, "cue_png": None, "meta": None})
            partner = (ids[(i + 1) % n_images], pics[(i + 1) % n_images % len(pics)][2])
            cfs += _counterfactual_rows(cf_rng, ids[i], gt, pred, label, conf, partner)
            for m in METHODS:
                heatmaps.append({"image_id": ids[i], "method": m, "target_kind": "logit", "target_class": pred,
                                 "height": 14, "width": 14,
                                 "data": encode_heatmap(rng.random((14, 14), dtype=np.float32))})
                quality = float(rng.beta(2, 5))
                for proto in PROTOCOLS:
                    row = {"image_id": ids[i], "split": "val", "model": "vit_base_patch16_224", "method": m,
                           "protocol": proto, "target_kind": "logit", "target_class": pred, "target_label": label,
                           "target_value": float(rng.normal(8, 2)), "pred_class": pred, "pred_label": label,
                           "confidence": conf, "gt_classes": ",".join(gt), "correct": correct,
                           "gt_target": ",".join(gt), "seconds": float(rng.uniform(0.001, 0.05))}
                    for c in score_cols:
                        row[c] = float(np.clip(quality + rng.normal(0, 0.1), 0, 1))
                    metrics.append(row)
        writer.write_batch(f"{p:016x}", {"images": images, "heatmaps": heatmaps, "metrics": metrics,
                                         "counterfactuals": cfs})
    writer.write_manifest({
        "created": "2025-01-01T00:00:00+0000", "class_names": list(VOC_CLASSES),
        "config": {"model": "vit_base_patch16_224", "weights": "synthetic", "split": "val",
                   "protocols": list(PROTOCOLS)},
        "counts": {"images": n_images}})
    return {"images": n_images, "rows": n_images * per_image, "heatmaps": n_images * len(METHODS),
            "bytes": sum(f.stat().st_size for f in out.rglob("*.parquet"))}


# ----------------------------------------------------------------------------------------- measurement
def _time(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def bench_queries(store: Path) -> list[tuple[str, float, float]]:
    """(query, cold seconds, warm seconds) of every query a page runs."""
    from store import query as q
    from store import shortcuts, trust

    t_connect, con = _time(lambda: q.connect(store))
    known = q.metric_columns(con)
    facets = q.run_facets(con, RUN_ID)
    f = q.RowFilter(run_id=RUN_ID, protocol="report", methods=METHODS[:3], classes=("person", "dog", "cat"))
    page_ids = list(q.image_page(con, f, "iou", known, "worst first", 8, 0)[0]["image_id"])
    calls = [
        ("run_catalog", lambda: q.run_catalog(con)),
        ("run_facets", lambda: q.run_facets(con, RUN_ID)),
        ("leaderboard (all columns)", lambda: q.leaderboard(con, f, facets["columns"], known)),
        ("class_breakdown", lambda: q.class_breakdown(con, f, "iou", known)),
        ("metric_histogram", lambda: q.metric_histogram(con, f, "iou", known)),
        ("metric_box_stats", lambda: q.metric_box_stats(con, f, "iou", known)),
        ("metric_sample (scatter 3000)", lambda: q.metric_sample(con, f, "iou", known, 3000, True)),
        ("failure_cases (top 50)", lambda: q.failure_cases(con, f, "iou", known, 50)),
        ("failure_images (top 50 images)", lambda: q.failure_images(con, f, "iou", known, 50)),
        ("per_image_means (intervals)", lambda: q.per_image_means(con, f, ["iou", "f1", "pixel_accuracy"], known)),
        ("filtered_image_ids", lambda: q.filtered_image_ids(con, f, known)),
        ("image_page (8, worst first)", lambda: q.image_page(con, f, "iou", known, "worst first", 8, 0)),
        ("rows_for_images (8)", lambda: q.rows_for_images(con, f, page_ids, known)),
        ("images_for (8)", lambda: q.images_for(con, RUN_ID, page_ids)),
        ("heatmaps_for (8 × 3)", lambda: q.heatmaps_for(con, RUN_ID, page_ids, list(METHODS[:3]))),
        # the Shortcuts page's statistics (store.shortcuts), each from the store as `vitlens report` runs them
        ("shortcuts: reliance", lambda: shortcuts.reliance(con, RUN_ID, "report")),
        ("shortcuts: context share + 1000×", lambda: shortcuts.context_share_by_class(con, RUN_ID, "report")),
        ("shortcuts: bg_gap + 1000×", lambda: shortcuts.bg_gap(con, RUN_ID, "report")),
        ("shortcuts: method trust (normal)", lambda: trust.method_trust(con, RUN_ID, "report", interval="normal")),
    ]
    out = [("connect (views over the parts)", t_connect, t_connect)]
    for name, fn in calls:
        cold, _ = _time(fn)
        warm, _ = _time(fn, repeat=3)
        out.append((name, cold, warm))
    con.close()
    return out


def bench_pages(store: Path, changes: int = 4, pages=PAGES) -> list[tuple[str, float, list[float], list[float]]]:
    """(page, first load, filter-change times (cache misses), same-state reruns (cache hits)) per page."""
    from streamlit.testing.v1 import AppTest

    from compute.data.voc import VOC_CLASSES

    os.environ["VITLENS_STORE"] = str(store)
    classes = list(VOC_CLASSES[1:])
    results = []
    for i, (page, params) in enumerate(pages):
        at = AppTest.from_file(str(APP), default_timeout=600)
        for k, v in (params or {}).items():
            at.query_params[k] = v
        if page != "leaderboard":
            at.switch_page(f"views/{page}.py")
        first, _ = _time(lambda: at.run())
        _check(at, page)
        misses, hits = [], []
        for j in range(changes):
            # a filter state never seen before in this process: another class, another method subset
            cls = [classes[(i * changes + j) % len(classes)]]
            methods = [m for k, m in enumerate(METHODS) if k != (i + j) % len(METHODS)]
            at.sidebar.multiselect(key="cls").set_value(cls)
            at.sidebar.multiselect(key="method").set_value(methods)
            t, _ = _time(lambda: at.run())
            _check(at, page)
            misses.append(t)
            t, _ = _time(lambda: at.run())
            hits.append(t)
        results.append((page, first, misses, hits))
    return results


def bench_browser(store: Path, changes: int = 3, pages=PAGES) -> list[tuple[str, float, list[float]]]:
    """(page, first load, seconds from each filter click to the settled page) in a real Chromium against the
    real server. The first load opens the page's link in a new tab: the page's own queries run cold. The first
    click switches to a protocol the page has not shown yet, so its statistics are computed then."""
    from dashboard import browser

    out = []
    with browser.server(store) as url, browser.chromium() as chrome:
        for name, params in pages:
            page = chrome.new_page(viewport={"width": 1500, "height": 1100})
            query = "&".join(f"{k}={v}" for k, v in (params or {}).items())
            t = time.perf_counter()
            page.goto(f"{url}/{'' if name == 'leaderboard' else name}" + (f"?{query}" if query else ""))
            page.wait_for_function(browser.SETTLED, timeout=120_000, polling=20)
            first = time.perf_counter() - t
            times = []
            for j in range(changes):
                radio = "clean" if j % 2 == 0 else "report"
                t = time.perf_counter()
                page.locator('[data-testid="stSidebar"] label').filter(has_text=radio).first.click()
                try:
                    page.wait_for_function("() => document.querySelector('[data-testid=stApp]')"
                                           ".getAttribute('data-test-script-state') === 'running'",
                                           timeout=2000, polling=10)
                except Exception:
                    pass  # it may have finished already
                page.wait_for_function(browser.SETTLED, timeout=120_000, polling=20)
                times.append(time.perf_counter() - t)
            page.close()
            out.append((name, first, times))
    return out


def _check(at, page: str) -> None:
    if at.exception:
        raise RuntimeError(f"{page}: {[e.value for e in at.exception]}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dashboard.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="metric rows of the synthetic store")
    ap.add_argument("--store", type=Path, default=None, help="where to build it (default: a temporary folder)")
    ap.add_argument("--changes", type=int, default=4, help="filter changes measured per page")
    ap.add_argument("--browser", action="store_true", help="also time filter changes in Chromium (/usr/bin/chromium)")
    ap.add_argument("--pages", default=",".join(p for p, _ in PAGES),
                    help="the pages measured, comma-separated (default: all; alone, a page's first load in "
                         "Chromium also pays the server's first script run, as a link opened on a fresh server)")
    args = ap.parse_args(argv)
    wanted = args.pages.split(",")
    unknown = sorted(set(wanted) - {p for p, _ in PAGES})
    if unknown:
        ap.error(f"unknown page(s) {', '.join(unknown)}; choose from {', '.join(p for p, _ in PAGES)}")
    pages = tuple(p for p in PAGES if p[0] in wanted)

    from streamlit import config as st_config

    st_config.set_option("global.disableWidgetStateDuplicationWarning", True)
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-") as tmp:
        store = args.store or Path(tmp) / "store"
        if not (store / "metrics").exists():
            t, facts = _time(lambda: build_store(store, rows=args.rows))
            print(f"built {facts['rows']:,} metric rows, {facts['heatmaps']:,} heatmaps, {facts['images']:,} "
                  f"images ({facts['bytes'] / 1e6:.1f} MB of parquet) in {t:.1f} s → {store}")
        print(f"\nqueries (DuckDB over the parquet parts; {os.cpu_count()} CPUs)")
        print(f"  {'query':34s} {'cold ms':>9s} {'warm ms':>9s}")
        for name, cold, warm in bench_queries(store):
            print(f"  {name:34s} {cold * 1e3:9.1f} {warm * 1e3:9.1f}")
        print("\npages (Streamlit AppTest run: script + queries + rendering; seconds)")
        print(f"  {'page':14s} {'first load':>10s} {'change median':>14s} {'change max':>11s} {'revisit':>8s}")
        worst = 0.0
        for page, first, misses, hits in bench_pages(store, args.changes, pages):
            worst = max(worst, max(misses))
            print(f"  {page:14s} {first:10.2f} {statistics.median(misses):14.2f} {max(misses):11.2f} "
                  f"{statistics.median(hits):8.2f}")
        print(f"\nslowest filter change (AppTest): {worst:.2f} s (goal ≤ 1 s)")
        if args.browser:
            print("\nbrowser (first load of a link; protocol switch in the sidebar → page settled, images loaded; "
                  "seconds)")
            print(f"  {'page':14s} {'first load':>10s} {'change median':>14s} {'change max':>11s}")
            for page, first, times in bench_browser(store, min(args.changes, 3), pages):
                print(f"  {page:14s} {first:10.2f} {statistics.median(times):14.2f} {max(times):11.2f}")


if __name__ == "__main__":
    main()

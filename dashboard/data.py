"""The dashboard's access to the store: where it is, one cached DuckDB connection, cached query results.

- :func:`store_path` — ``--store`` after ``--`` on the ``streamlit run`` line, else ``$VITLENS_STORE``, else
  ``results``. The URL never names a path.
- :func:`fingerprint` — changes when part files or run manifests are added or replaced, so that a store being
  filled shows its new rows (checked at most every few seconds).
- one DuckDB connection per (store, fingerprint) in ``st.cache_resource``; every query runs on its own
  ``.cursor()``, so concurrent sessions never share a cursor.
- every query result in ``st.cache_data`` keyed by the store, its fingerprint and the filter state
  (:class:`store.query.RowFilter` and the page's own choices), so going back to a view is instant.

The SQL itself lives in :mod:`store.query`; this module only caches it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.launch import ENV_STORE  # noqa: F401 (re-export: the launcher sets it without Streamlit)
from store import query as q
from store.schema import decode_heatmap

DEFAULT_STORE = "results"


def store_path(argv: list[str] | None = None) -> Path:
    """The store this server shows (see the module docstring for the order of precedence)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    raw = known.store or os.environ.get(ENV_STORE) or DEFAULT_STORE
    return Path(raw).expanduser().resolve()


def locate(store: Path) -> tuple[Path, str | None]:
    """The store to show for the folder ``store`` and a note when it is not that folder itself: a folder
    without results that holds exactly one store one level down (the demo's ``--out``) shows that one."""
    if q.has_results(store):
        return store, None
    below = q.stores_below(store)
    if len(below) == 1:
        return below[0], f"`{store}` holds no results itself; showing the store in its subfolder `{below[0].name}`."
    return store, None


def store_problem(store: Path) -> str | None:
    """None when ``store`` holds results; otherwise why not, in one sentence."""
    if not store.exists():
        return f"The store folder `{store}` does not exist."
    if not store.is_dir():
        return f"`{store}` is not a folder."
    if not q.has_results(store):
        below = q.stores_below(store)
        if below:  # several stores one level down: name them (one is shown directly, see locate)
            return (f"`{store}` holds no results itself, but these subfolders are stores: "
                    + ", ".join(f"`{p}`" for p in below) + ". Start the dashboard with `--store` one of them.")
        return f"The store `{store}` holds no results yet."
    return None


@st.cache_data(ttl=3, show_spinner=False)
def fingerprint(store: str) -> str:
    """A digest of the store's part files and run manifests (names, sizes, modification times)."""
    root = Path(store)
    h = hashlib.sha1()
    for pattern in ("*/run_id=*/part-*.parquet", "commits/run_id=*/*.json", "runs/*.json"):
        for p in sorted(root.glob(pattern)):
            try:
                s = p.stat()
            except OSError:
                continue
            h.update(f"{p.relative_to(root)}:{s.st_size}:{s.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


@st.cache_resource(max_entries=2, show_spinner=False)
def _connection(store: str, fp: str):
    return q.connect(store)


def damaged_parts(store: str, fp: str) -> list[str]:
    """What the reader left out of the store, one line per damaged or missing part (see store.commits)."""
    return _run(store, fp, q.store_problems)


def cursor(store: str, fp: str):
    """A fresh cursor on the cached connection (use as a context manager)."""
    return _connection(store, fp).cursor()


def _run(store: str, fp: str, fn, *args, **kwargs):
    with cursor(store, fp) as cur:
        return fn(cur, *args, **kwargs)


# ---------------------------------------------------------------------------------------------- catalogue
@st.cache_data(max_entries=16, show_spinner=False)
def known_columns(store: str, fp: str) -> list[str]:
    """Every numeric score column of the metrics view (whether or not a run fills it)."""
    return _run(store, fp, q.metric_columns)


@st.cache_data(max_entries=16, show_spinner=False)
def runs(store: str, fp: str):
    return _run(store, fp, q.run_catalog)


@st.cache_data(max_entries=64, show_spinner=False)
def facets(store: str, fp: str, run_id: str) -> dict:
    return _run(store, fp, q.run_facets, run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def image_ids(store: str, fp: str, run_id: str) -> list[str]:
    return _run(store, fp, q.image_ids, run_id)


@st.cache_data(max_entries=16, show_spinner=False)
def metric_image_ids(store: str, fp: str, run_id: str) -> list[str]:
    return _run(store, fp, q.metric_image_ids, run_id)


# ------------------------------------------------------------------------------------------------ views
@st.cache_data(max_entries=256, show_spinner=False)
def leaderboard(store: str, fp: str, f: q.RowFilter, columns: tuple[str, ...]):
    return _run(store, fp, q.leaderboard, f, list(columns), known_columns(store, fp))


@st.cache_data(max_entries=256, show_spinner=False)
def leaderboard_intervals(store: str, fp: str, f: q.RowFilter, columns: tuple[str, ...]):
    """Per method and column: the 95 % percentile bootstrap interval of the mean over images, exactly as
    ``vitlens report`` computes it (the per-image means resampled 1000 times, seed 0), as fractions: a DataFrame
    indexed by method with ``<column>_lo`` and ``<column>_hi``."""
    per_image = _run(store, fp, q.per_image_means, f, list(columns), known_columns(store, fp))
    out = {}
    for method, part in per_image.groupby("method", sort=False):
        out[method] = {}
        for c in columns:
            out[method][f"{c}_lo"], out[method][f"{c}_hi"] = bootstrap(part[c].to_numpy(dtype="float64"))
    return pd.DataFrame.from_dict(out, orient="index")


@st.cache_resource(max_entries=2, show_spinner=False)
def _resamples(n: int, resamples: int = 1000, seed: int = 0):
    """The resampling indices ``compute.report.bootstrap_interval`` draws for ``n`` values (it seeds a fresh
    generator on every call, so every method and column with ``n`` values shares them): drawn once."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(resamples, n)).astype(np.int32)  # half the memory


def bootstrap(values, level: float = 0.95) -> tuple[float, float]:
    """``compute.report.bootstrap_interval(values)`` (NaNs dropped; NaN when nothing is left), with the
    resampling indices drawn once per sample size (:func:`_resamples`) instead of once per call."""
    import numpy as np

    v = values[~np.isnan(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    means = v[_resamples(int(v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@st.cache_data(max_entries=64, show_spinner=False)
def skips(store: str, fp: str, run_id: str):
    return _run(store, fp, q.run_skips, run_id)


@st.cache_data(max_entries=64, show_spinner=False)
def correct_unknown_reason(store: str, fp: str, run_id: str) -> str:
    return q.correct_unknown_reason(store, run_id)


@st.cache_data(max_entries=256, show_spinner=False)
def class_breakdown(store: str, fp: str, f: q.RowFilter, column: str):
    return _run(store, fp, q.class_breakdown, f, column, known_columns(store, fp))


@st.cache_data(max_entries=256, show_spinner=False)
def histogram(store: str, fp: str, f: q.RowFilter, column: str, bins: int = 40):
    return _run(store, fp, q.metric_histogram, f, column, known_columns(store, fp), bins)


@st.cache_data(max_entries=256, show_spinner=False)
def box_stats(store: str, fp: str, f: q.RowFilter, column: str):
    return _run(store, fp, q.metric_box_stats, f, column, known_columns(store, fp))


@st.cache_data(max_entries=256, show_spinner=False)
def sample(store: str, fp: str, f: q.RowFilter, column: str, limit: int, need_confidence: bool = False):
    return _run(store, fp, q.metric_sample, f, column, known_columns(store, fp), limit, need_confidence)


@st.cache_data(max_entries=256, show_spinner=False)
def failures(store: str, fp: str, f: q.RowFilter, column: str, limit: int, correct_only: bool,
             misplaced: bool | None = None):
    return _run(store, fp, q.failure_cases, f, column, known_columns(store, fp), limit, correct_only, misplaced)


@st.cache_data(max_entries=256, show_spinner=False)
def failure_images(store: str, fp: str, f: q.RowFilter, column: str, limit: int, correct_only: bool,
                   by_reliance: bool):
    """One row per image ranked by evidence (:func:`store.query.failure_images`); ``by_reliance``: by the
    counterfactual context reliance of the run's decisions under ``f.protocol``."""
    def ranked(cur):
        found = None
        if by_reliance:
            from store.shortcuts import reliance

            found = reliance(cur, run_id=f.run_id, protocol=f.protocol)
        return q.failure_images(cur, f, column, known_columns(store, fp), limit, correct_only, found)

    return _run(store, fp, ranked)


@st.cache_data(max_entries=64, show_spinner=False)
def has_counterfactuals(store: str, fp: str, run_id: str) -> bool:
    return _run(store, fp, q.has_counterfactuals, run_id)


@st.cache_data(max_entries=256, show_spinner=False)
def image_page(store: str, fp: str, f: q.RowFilter, column: str, order: str, limit: int, offset: int):
    return _run(store, fp, q.image_page, f, column, known_columns(store, fp), order, limit, offset)


@st.cache_data(max_entries=256, show_spinner=False)
def rows_for_images(store: str, fp: str, f: q.RowFilter, ids: tuple[str, ...]):
    return _run(store, fp, q.rows_for_images, f, list(ids), known_columns(store, fp))


@st.cache_data(max_entries=256, show_spinner=False)
def filtered_image_ids(store: str, fp: str, f: q.RowFilter) -> list[str]:
    return _run(store, fp, q.filtered_image_ids, f, known_columns(store, fp))


@st.cache_data(max_entries=256, show_spinner=False)
def image_rows(store: str, fp: str, run_id: str, image_id: str):
    return _run(store, fp, q.image_rows, run_id, image_id)


# ------------------------------------------------------------------------- pictures (bytes, read-only)
# Binary rows are kept with st.cache_resource (no copy on every hit); callers must not modify them.
@st.cache_resource(max_entries=64, show_spinner=False)
def images(store: str, fp: str, run_id: str, ids: tuple[str, ...]) -> dict[str, dict]:
    """image_id -> images row, with blobs as ``bytes``."""
    recs = _run(store, fp, q.images_for, run_id, list(ids))
    for rec in recs.values():
        for k in ("thumbnail", "mask_png", "cue_png"):
            v = rec.get(k)
            rec[k] = None if v is None or (not isinstance(v, (bytes, bytearray, memoryview)) and pd.isna(v)) \
                else bytes(v)
    return recs


@st.cache_resource(max_entries=64, show_spinner=False)
def heatmaps(store: str, fp: str, run_id: str, ids: tuple[str, ...], methods: tuple[str, ...] | None):
    """(image_id, method) -> list of (target_kind, target_class, (data, height, width)) of the given images
    only. Maps stay encoded (a few KB each) until :func:`pick_heatmap` decodes the one a cell shows."""
    df = _run(store, fp, q.heatmaps_for, run_id, list(ids), list(methods) if methods is not None else None)
    out: dict[tuple[str, str], list] = {}
    for r in df.itertuples(index=False):
        tc = None if pd.isna(r.target_class) else int(r.target_class)
        out.setdefault((r.image_id, r.method), []).append(
            (r.target_kind, tc, (bytes(r.data), int(r.height), int(r.width))))
    return out


def pick_heatmap(maps: dict, image_id: str, method: str, target_kind=None, target_class=None):
    """The stored map of one row, decoded (only this one): the one explaining the row's target when several
    targets were explained."""
    found = maps.get((image_id, method)) or []
    for kind, tc, enc in found:
        if (target_kind is None or kind == target_kind) and tc == target_class:
            return decode_heatmap(*enc)
    return decode_heatmap(*found[0][2]) if found else None


@st.cache_data(max_entries=64, show_spinner=False)
def class_names(store: str, fp: str, run_id: str) -> tuple[str, ...]:
    """The names of the run's mask indices (its manifest's ``class_names``); a run whose manifest does not
    record them used the default data source, Pascal VOC, whose names are taken then."""
    names = q.run_class_names(store, run_id)
    if names is None:
        from compute.data.voc import VOC_CLASSES  # NumPy and PIL only

        names = VOC_CLASSES
    return tuple(names)


@st.cache_data(max_entries=2048, show_spinner=False)
def overlay(store: str, fp: str, run_id: str, batch: tuple[str, ...], image_id: str, method: str | None,
            target_kind: str | None, target_class: int | None, protocol: str, gt_target: str | None,
            style: tuple, methods: tuple[str, ...] | None = None) -> bytes:
    """JPEG of one cell: the image ``image_id`` (fetched with the other images of ``batch``, the ids on
    screen) with the map of ``method`` (None: no map) drawn in ``style`` (an OverlayStyle as a tuple)."""
    from dashboard import overlay as ov

    rec = images(store, fp, run_id, batch).get(image_id)
    if rec is None or rec.get("thumbnail") is None:
        return b""
    heat = None
    if method is not None:
        heat = pick_heatmap(heatmaps(store, fp, run_id, batch, methods), image_id, method, target_kind,
                            target_class)
    classes = ov.target_classes(gt_target, protocol, class_names(store, fp, run_id))
    return ov.render_bytes(rec["thumbnail"], heat, rec.get("mask_png"), rec.get("cue_png"), protocol, classes,
                           style=ov.OverlayStyle(*style))


@st.cache_data(max_entries=4096, show_spinner=False)
def mini_thumbnail(store: str, fp: str, run_id: str, batch: tuple[str, ...], image_id: str) -> str | None:
    from dashboard import overlay as ov

    rec = images(store, fp, run_id, batch).get(image_id)
    return ov.mini_thumbnail_uri(rec["thumbnail"]) if rec and rec.get("thumbnail") else None

"""Two runs over the same images, compared per method: does another model, other weights or another input size
explain better?

Connect with :func:`store.query.connect`; the functions take that connection, bind every value as a
parameter, check the one identifier they put into SQL (a metric column) against the store's columns
(``store.query._ident``), and return pandas DataFrames.

The comparison is *paired*: each image first gets its per-image value in each run (the mean of its rows under
the filter, one row per explained target, NULLs skipped — as the leaderboard and ``vitlens report`` average),
then only images with a value in *both* runs count, and the difference ``b − a`` is averaged over them. Its
95 % interval resamples those images (the pairs) with a seeded generator, so the same store gives the same
interval.
"""

from __future__ import annotations

from dataclasses import replace

import duckdb
import numpy as np
import pandas as pd

from store import catalogue
from store.query import RowFilter, _ident, filter_sql

BOOTSTRAP = 1000   # resamples of the paired interval
_CHUNK = 100       # resamples drawn at once (bounds the index matrix to _CHUNK × images)


def run_choices(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """The other runs of the store with what they share with ``run_id``: run_id, model, created, weights,
    images (their own), shared (image ids both have); most shared first, then newest."""
    return con.execute(
        "WITH mine AS (SELECT DISTINCT image_id FROM metrics WHERE run_id = ?), "
        "theirs AS (SELECT run_id, image_id, any_value(model) AS model FROM metrics WHERE run_id <> ? "
        "GROUP BY run_id, image_id) "
        "SELECT t.run_id, any_value(t.model) AS model, any_value(r.created) AS created, "
        "any_value(r.weights) AS weights, count(*) AS images, count(m.image_id) AS shared "
        "FROM theirs t LEFT JOIN mine m ON m.image_id = t.image_id LEFT JOIN runs r ON r.run_id = t.run_id "
        "GROUP BY t.run_id ORDER BY shared DESC, created DESC NULLS LAST, t.run_id", [run_id, run_id]).df()


def per_image_pairs(con: duckdb.DuckDBPyConnection, f: RowFilter, run_b: str, column: str,
                    known: list[str]) -> pd.DataFrame:
    """One row per (method, image) with a value of ``column`` in both runs: method, image_id, a, b (the
    per-image means in run ``f.run_id`` and in ``run_b``). The filter ``f`` applies to each run's own rows
    (its confidence and correctness are each run's own)."""
    q = _ident(column, known)
    where_a, params_a = filter_sql(f, known)
    where_b, params_b = filter_sql(replace(f, run_id=run_b), known)
    sql = (f"WITH a AS (SELECT method, image_id, avg({q}) AS v FROM metrics WHERE {where_a} "
           "GROUP BY method, image_id), "
           f"b AS (SELECT method, image_id, avg({q}) AS v FROM metrics WHERE {where_b} GROUP BY method, image_id) "
           "SELECT a.method, a.image_id, a.v AS a, b.v AS b FROM a JOIN b USING (method, image_id) "
           "WHERE a.v IS NOT NULL AND b.v IS NOT NULL ORDER BY a.method, a.image_id")
    return con.execute(sql, params_a + params_b).df()


def paired_interval(diff: np.ndarray, seed: int = 0, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``diff`` over ``resamples`` resamplings of its entries (the
    image pairs) with replacement; NaN for no pairs."""
    diff = np.asarray(diff, dtype=np.float64)
    n = len(diff)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.concatenate([diff[rng.integers(0, n, (min(_CHUNK, resamples - k), n))].mean(axis=1)
                            for k in range(0, resamples, _CHUNK)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def compare_leaderboard(con: duckdb.DuckDBPyConnection, f: RowFilter, run_b: str, column: str,
                        known: list[str], seed: int = 0, resamples: int = BOOTSTRAP) -> pd.DataFrame:
    """Per method present in both runs: ``n`` (images with a value in both), ``mean_a``, ``mean_b`` (over those
    images), ``diff = mean_b − mean_a`` with its paired 95 % interval (``low``, ``high``), and ``better`` — the
    share of images where run ``b``'s value is better in the column's direction. Largest improvement first."""

    pairs = per_image_pairs(con, f, run_b, column, known)
    sign = -1.0 if catalogue.lower_is_better(column) else 1.0
    rows = []
    for method, g in pairs.groupby("method", sort=True):
        a, b = g["a"].to_numpy(float), g["b"].to_numpy(float)
        low, high = paired_interval(b - a, seed, resamples)
        rows.append({"method": method, "n": len(a), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                     "diff": float((b - a).mean()), "low": low, "high": high,
                     "better": float((sign * (b - a) > 0).mean())})
    out = pd.DataFrame(rows, columns=["method", "n", "mean_a", "mean_b", "diff", "low", "high", "better"])
    out["_gain"] = sign * out["diff"]
    return out.sort_values(["_gain", "method"], ascending=[False, True]).drop(columns="_gain").reset_index(drop=True)


def shared_image_ids(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> list[str]:
    """Image ids both runs stored a picture of (``images`` rows), sorted."""
    return [r[0] for r in con.execute(
        "SELECT image_id FROM (SELECT DISTINCT image_id FROM images WHERE run_id = ? "
        "INTERSECT SELECT DISTINCT image_id FROM images WHERE run_id = ?) ORDER BY image_id",
        [run_a, run_b]).fetchall()]


__all__ = ["BOOTSTRAP", "run_choices", "per_image_pairs", "paired_interval", "compare_leaderboard",
           "shared_image_ids"]

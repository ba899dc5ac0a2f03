"""Read-only access to a store through DuckDB: views ``runs``, ``metrics``, ``heatmaps``, ``images``, ``skips``.

Every query that the report or the dashboard runs lives here, takes its values as bound parameters, and
returns a pandas DataFrame. Nothing here writes to the store.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from store import catalogue
from store.catalogue import CONTEXT_COLUMNS, REPORT_METRICS  # noqa: F401 (re-export)
from store.commits import committed
from store.schema import (COMMIT_TABLE, METRIC_COLUMNS, STANDALONE_TABLES, TABLES, decode_heatmap,  # noqa: F401 (re-export)
                          empty_table)


class StoreError(ValueError):
    """The folder is not a vitlens store (or holds nothing yet); the message says how to fill it."""


class QueryError(ValueError):
    """A dashboard query was asked for something the store does not have (a metric column, an order); the
    message names it. Raised before any SQL runs."""


FILL_HINT = ("fill it with: vitlens compute --voc-root <VOC folder> --out <store>  "
             "(offline: add --random-init --model vit_tiny_patch16_224, or run `make demo`)")


def has_results(store: str | Path) -> bool:
    return any(Path(store).glob("metrics/run_id=*/part-*.parquet"))


def stores_below(folder: str | Path) -> list[Path]:
    """The stores one level below ``folder`` (its subfolders that hold results), by name: ``vitlens demo
    --out DIR`` writes its store to ``DIR/store`` beside the data and the model."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and has_results(p))


def connect(store: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table (an empty, typed view for a table with no parts yet), over
    the committed, intact parts only (:mod:`store.commits`), and a view ``store_problems`` (``problem``) that
    names each damaged or missing part that was left out — empty when the store is whole."""
    root = Path(store).expanduser()
    if not root.is_dir():
        raise StoreError(f"store folder {str(root)!r} does not exist; {FILL_HINT}")
    con = duckdb.connect()
    counted = committed(root, check="footer")
    for table in TABLES:
        files = [str(p) for p in counted.files[table]]
        if files:
            rel = con.read_parquet(files, hive_partitioning=False, union_by_name=True)
        else:
            rel = con.from_arrow(empty_table(table))
        rel.create_view(table)
    con.from_arrow(_runs_table(root)).create_view("runs")
    con.from_arrow(pa.table({"problem": pa.array(counted.problems, pa.string())})).create_view("store_problems")
    return con


def store_problems(con: duckdb.DuckDBPyConnection) -> list[str]:
    """What :func:`connect` left out and why, one line per damaged part (empty for a whole store)."""
    return [r[0] for r in con.execute("SELECT problem FROM store_problems").fetchall()]


def _runs_table(root: Path) -> pa.Table:
    rows = []
    for p in sorted((root / "runs").glob("*.json")):
        try:
            m = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        cfg = m.get("config", {})
        rows.append({
            "run_id": m.get("run_id", p.stem), "created": str(m.get("created", "")),
            "model": cfg.get("model"), "weights": cfg.get("weights"), "split": cfg.get("split"),
            "protocols": ",".join(cfg.get("protocols", [])), "images": m.get("counts", {}).get("images"),
            "skipped": m.get("counts", {}).get("skipped"), "seconds": m.get("timings", {}).get("total_seconds"),
            "config": json.dumps(cfg, sort_keys=True),
        })
    schema = pa.schema([("run_id", pa.string()), ("created", pa.string()), ("model", pa.string()),
                        ("weights", pa.string()), ("split", pa.string()), ("protocols", pa.string()),
                        ("images", pa.int64()), ("skipped", pa.int64()), ("seconds", pa.float64()),
                        ("config", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def run_manifest(store: str | Path, run_id: str) -> dict:
    """A run's manifest (``runs/<run_id>.json``); empty when it is missing or unreadable."""
    try:
        m = json.loads((Path(store).expanduser() / "runs" / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


def run_class_names(store: str | Path, run_id: str) -> list[str] | None:
    """The names of a run's mask indices as its manifest (``runs/<run_id>.json``) records them; None when the
    manifest is missing, unreadable or predates the field."""
    names = run_manifest(store, run_id).get("class_names")
    return [str(n) for n in names] if isinstance(names, list) and names else None


def correct_unknown_reason(store: str | Path, run_id: str) -> str:
    """Why a run's ``correct`` column stays NULL, from its manifest: the reason the compute job recorded for not
    mapping the head's classes to the data's (``class_map.unsupported``), else a generic one."""
    class_map = run_manifest(store, run_id).get("class_map")
    if isinstance(class_map, dict) and class_map.get("unsupported"):
        return str(class_map["unsupported"])
    if isinstance(class_map, dict) and class_map.get("name"):
        return (f"the run maps the head's classes with {class_map['name']!r}, but no prediction could be checked "
                "(no confidence or no ground truth on its rows)")
    return ("the run's manifest records no class map (a store written before it was recorded, or a model whose "
            "classes do not map to the data's)")


def method_summary(con: duckdb.DuckDBPyConnection, protocol: str | None = None, min_confidence: float | None = None,
                   run_id: str | None = None):
    """Per method: image count and mean of each localisation metric (the report's table, as fractions)."""
    means = ", ".join(f"avg({quote(c)}) AS {quote(c)}" for c in METRIC_COLUMNS)
    sql = (f"SELECT method, count(DISTINCT image_id) AS images, count(*) AS rows, {means} FROM metrics "
           "WHERE (? IS NULL OR protocol = ?) AND (? IS NULL OR confidence > ?) AND (? IS NULL OR run_id = ?) "
           "GROUP BY method ORDER BY method")
    return con.execute(sql, [protocol, protocol, min_confidence, min_confidence, run_id, run_id]).df()


# ---------------------------------------------------------------------------------------------------------------
# Dashboard queries. Every value chosen in the dashboard (from a widget or the URL) reaches DuckDB as a bound
# parameter; the only identifiers put into SQL text are metric column names, and those are checked against the
# columns the ``metrics`` view really has (:func:`metric_columns`) before use.

# Numeric ``metrics`` columns that describe a row rather than score its map are ``CONTEXT_COLUMNS`` (from
# store/catalogue.py); every other numeric column is a metric the dashboard can show.
_NUMERIC_TYPES = ("FLOAT", "DOUBLE", "REAL", "DECIMAL", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                  "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


def metrics_column_types(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Column name -> DuckDB type of the ``metrics`` view, in table order."""
    return {r[0]: str(r[1]) for r in con.execute("DESCRIBE metrics").fetchall()}


def metric_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Numeric score columns of ``metrics``: the report's (``METRIC_COLUMNS``) first, then the others in table
    order. Discovered from the view, so columns added to the schema later show up without code changes."""
    types = metrics_column_types(con)
    numeric = [c for c, t in types.items() if t.upper().startswith(_NUMERIC_TYPES) and c not in CONTEXT_COLUMNS
               and SAFE_NAME.fullmatch(c)]
    return [c for c in METRIC_COLUMNS if c in numeric] + [c for c in numeric if c not in METRIC_COLUMNS]


#: what a column name read from a store may look like to be used at all: a store is data, and a crafted one
#: may carry any text as a column name
SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (a double quote inside it doubled): always text, never SQL."""
    return '"' + name.replace('"', '""') + '"'


def _ident(column: str, allowed) -> str:
    """A column name checked against ``allowed`` and the strict name rule, quoted for SQL; anything else is an
    error, never SQL."""
    if column not in allowed or not SAFE_NAME.fullmatch(column):
        raise QueryError(f"unknown metric column {column!r}; known: {', '.join(allowed) or '(none)'}")
    return quote(column)


@dataclass(frozen=True)
class RowFilter:
    """Which ``metrics`` rows a dashboard view shows. ``None``/empty means "no restriction" except for
    ``methods``, where an empty tuple selects nothing. ``thresholds`` are ``(column, low, high)`` inclusive."""

    run_id: str
    protocol: str | None = None
    methods: tuple[str, ...] | None = None
    classes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    confidence: tuple[float, float] | None = None
    correct: bool | None = None
    thresholds: tuple[tuple[str, float, float], ...] = ()
    images: tuple[str, ...] = ()      # a selection of image ids (empty: every image)


def filter_sql(f: RowFilter, columns) -> tuple[str, list]:
    """``WHERE`` clause (without the keyword) and its parameters for ``f``; ``columns`` are the metric columns
    a threshold may name."""
    sql, params = ["run_id = ?"], [f.run_id]
    if f.protocol is not None:
        sql.append("protocol = ?")
        params.append(f.protocol)
    if f.methods is not None:
        sql.append("list_contains(?::VARCHAR[], method)")
        params.append(list(f.methods))
    if f.classes:
        sql.append("list_has_any(string_split(coalesce(gt_classes, ''), ','), ?::VARCHAR[])")
        params.append(list(f.classes))
    if f.groups:
        sql.append("list_contains(?::VARCHAR[], image_group)")
        params.append(list(f.groups))
    if f.confidence is not None:
        sql.append("confidence BETWEEN ? AND ?")
        params += [float(f.confidence[0]), float(f.confidence[1])]
    if f.correct is not None:
        sql.append("correct = ?")
        params.append(bool(f.correct))
    if f.images:
        sql.append("list_contains(?::VARCHAR[], image_id)")
        params.append(list(f.images))
    for column, lo, hi in f.thresholds:
        sql.append(f"{_ident(column, columns)} BETWEEN ? AND ?")
        params += [float(lo), float(hi)]
    return " AND ".join(sql), params


def run_catalog(con: duckdb.DuckDBPyConnection):
    """One row per run that has metric rows: run_id, model, created, weights, split, rows, images (newest
    first; a run without its manifest still appears)."""
    return con.execute(
        "SELECT m.run_id, coalesce(min(m.model), any_value(r.model)) AS model, any_value(r.created) AS created, "
        "any_value(r.weights) AS weights, coalesce(any_value(r.split), min(m.split)) AS split, count(*) AS rows, "
        "count(DISTINCT m.image_id) AS images FROM metrics m LEFT JOIN runs r ON r.run_id = m.run_id "
        "GROUP BY m.run_id ORDER BY created DESC NULLS LAST, m.run_id").df()


def run_facets(con: duckdb.DuckDBPyConnection, run_id: str) -> dict:
    """What one run holds, for building filters: methods, protocols, classes, image groups, whether
    ``correct``/``confidence`` are known, and per metric column its non-null count, min and max."""
    columns = metric_columns(con)
    types = metrics_column_types(con)
    has = {c: c in types for c in ("correct", "image_group", "confidence")}
    parts = ["list(DISTINCT method ORDER BY method)", "list(DISTINCT protocol ORDER BY protocol)",
             "count(correct)" if has["correct"] else "0",
             "count(confidence)" if has["confidence"] else "0",
             "list(DISTINCT image_group ORDER BY image_group) FILTER (image_group IS NOT NULL)"
             if has["image_group"] else "[]::VARCHAR[]"]
    for c in columns:
        q = _ident(c, columns)
        parts += [f"count({q})", f"min({q})", f"max({q})"]
    row = con.execute(f"SELECT {', '.join(parts)} FROM metrics WHERE run_id = ?", [run_id]).fetchone()
    classes = [r[0] for r in con.execute(
        "SELECT DISTINCT unnest(string_split(gt_classes, ',')) AS c FROM metrics WHERE run_id = ? "
        "AND gt_classes IS NOT NULL ORDER BY c", [run_id]).fetchall() if r[0]]
    stats = {c: {"count": int(row[5 + 3 * i] or 0), "min": row[6 + 3 * i], "max": row[7 + 3 * i]}
             for i, c in enumerate(columns)}
    return {"methods": list(row[0] or []), "protocols": list(row[1] or []), "correct_known": int(row[2] or 0),
            "confidence_known": int(row[3] or 0), "groups": list(row[4] or []), "classes": classes,
            "columns": [c for c in columns if stats[c]["count"] > 0], "stats": stats}


def _best_first(column: str) -> str:
    """``ORDER BY`` direction that puts the best values of ``column`` first (its catalogue direction)."""
    return "ASC" if catalogue.lower_is_better(column) else "DESC"


def leaderboard(con: duckdb.DuckDBPyConnection, f: RowFilter, columns: list[str], known: list[str]):
    """Per method: images, rows, mean of each of ``columns`` (fractions), the number of images with a defined
    value of each (``n_<column>``) and the compute seconds per image; best mean of the first column first
    (the lowest for a column whose catalogue entry says lower is better).

    Means are per image, as in ``vitlens report`` (:func:`report_summary`): each image first gets the mean of
    its rows (one per explained target: several with ``--explain present``), NULLs skipped, then the mean
    over images of those per-image means, so every image weighs the same. With ``f.protocol`` set (the
    dashboard always sets it) the numbers equal the report's for that run and protocol. ``seconds`` is the
    mean over images of the sum of the image's rows' seconds (each row holds its target's share of the batch
    time, so the sum is what the image cost the method)."""
    per_image, params = _per_image_sql(f, columns, known)
    means = ", ".join(f"avg({_ident(c, known)}) AS {_ident(c, known)}" for c in columns)
    counts = ", ".join(f'count({_ident(c, known)}) AS {quote("n_" + c)}' for c in columns)
    order = f"{_ident(columns[0], known)} {_best_first(columns[0])} NULLS LAST, " if columns else ""
    sql = (f"WITH per_image AS ({per_image}) "
           f"SELECT method, count(*) AS images, CAST(sum(n_rows) AS BIGINT) AS rows"
           f"{', ' + means if means else ''}{', ' + counts if counts else ''}, avg(seconds) AS seconds "
           f"FROM per_image GROUP BY method ORDER BY {order}method")
    return con.execute(sql, params).df()


def _per_image_sql(f: RowFilter, columns: list[str], known: list[str]) -> tuple[str, list]:
    """SQL (and parameters) of one row per (method, image) under ``f``: the row count, each of ``columns``
    averaged over the image's rows (NULLs skipped) and the summed seconds."""
    means = ", ".join(f"avg({_ident(c, known)}) AS {_ident(c, known)}" for c in columns)
    where, params = filter_sql(f, known)
    return (f"SELECT method, image_id, count(*) AS n_rows{', ' + means if means else ''}, sum(seconds) AS seconds "
            f"FROM metrics WHERE {where} GROUP BY method, image_id"), params


def per_image_means(con: duckdb.DuckDBPyConnection, f: RowFilter, columns: list[str], known: list[str]):
    """One row per (method, image) under ``f`` with each of ``columns`` averaged over the image's rows: what
    :func:`leaderboard` averages, and what its bootstrap intervals resample."""
    sql, params = _per_image_sql(f, columns, known)
    return con.execute(f"{sql} ORDER BY method, image_id", params).df()


def run_skips(con: duckdb.DuckDBPyConnection, run_id: str):
    """What a run left out and why: one row per (stage, reason) with the method (for a ``method:<name>``
    stage, else NULL) and the number of images it concerns, most images first."""
    return con.execute(
        "SELECT stage, CASE WHEN starts_with(stage, 'method:') THEN substr(stage, 8) END AS method, reason, "
        "count(DISTINCT image_id) AS images FROM skips WHERE run_id = ? GROUP BY stage, reason "
        "ORDER BY images DESC, stage, reason", [run_id]).df()


#: per protocol, how a row is assigned to VOC classes in :func:`class_breakdown`: ``clean`` scores a row on
#: the class it explains (``gt_target``: one class with ``--explain present`` or when the explained head class
#: maps to a VOC class; all the image's classes when no class map applies; NULL when the class is absent, and
#: then the row has no score); ``report`` scores every row on all objects, so a row counts for every class of
#: its image (``gt_classes``).
CLASS_AWARE_PROTOCOLS = ("clean",)


def class_breakdown(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str]):
    """Mean of ``column`` per method and VOC class: method, cls, value, n (images with a defined value).

    A row belongs to the classes its score is about: under ``clean`` the class it explains (``gt_target``), so
    a dog row and a person row of one image land in the dog and the person cell respectively; under
    ``report`` every class present in the image (an image counts for each of its classes). As in
    :func:`leaderboard`, each image first gets the mean of its rows in a cell, then the cell is the mean over
    images. With a class filter, only the chosen classes are shown."""
    q = _ident(column, known)
    where, params = filter_sql(f, known)
    keep = "AND list_contains(?::VARCHAR[], cls)" if f.classes else ""
    aware = ", ".join(f"'{p}'" for p in CLASS_AWARE_PROTOCOLS)  # fixed text, never user input
    classes = f"CASE WHEN protocol IN ({aware}) THEN gt_target ELSE gt_classes END"
    sql = (f"WITH assigned AS (SELECT method, image_id, {q} AS v, "
           f"unnest(string_split(coalesce({classes}, ''), ',')) AS cls FROM metrics WHERE {where}), "
           f"per_image AS (SELECT method, cls, image_id, avg(v) AS v FROM assigned WHERE cls <> '' {keep} "
           "GROUP BY method, cls, image_id) "
           "SELECT method, cls, avg(v) AS value, count(v) AS n FROM per_image "
           "GROUP BY method, cls ORDER BY method, cls")
    return con.execute(sql, params + ([list(f.classes)] if f.classes else [])).df()


def metric_histogram(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str], bins: int = 40):
    """Histogram of ``column`` per method over common bins: method, lo, hi, n (bins computed in DuckDB, so
    the browser receives ``bins`` numbers per method however many rows there are)."""
    q = _ident(column, known)
    where, params = filter_sql(f, known)
    sql = (f"WITH v AS (SELECT method, {q} AS x FROM metrics WHERE {where} AND {q} IS NOT NULL), "
           "r AS (SELECT min(x) AS lo, max(x) AS hi FROM v), "
           "b AS (SELECT method, least(CAST(floor((x - r.lo) / greatest(r.hi - r.lo, 1e-12) * ?) AS INTEGER), ? - 1)"
           " AS k, r.lo, r.hi FROM v, r) "
           "SELECT method, k, any_value(lo) + k * (any_value(hi) - any_value(lo)) / ? AS lo, "
           "any_value(lo) + (k + 1) * (any_value(hi) - any_value(lo)) / ? AS hi, count(*) AS n "
           "FROM b GROUP BY method, k ORDER BY method, k")
    return con.execute(sql, params + [bins, bins, bins, bins]).df()


def metric_box_stats(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str]):
    """Per method: n, mean, min, q1, median, q3, max of ``column`` (for a box plot drawn from precomputed
    statistics)."""
    q = _ident(column, known)
    where, params = filter_sql(f, known)
    sql = (f"SELECT method, count({q}) AS n, avg({q}) AS mean, min({q}) AS min, "
           f"quantile_cont({q}, 0.25) AS q1, median({q}) AS median, quantile_cont({q}, 0.75) AS q3, "
           f"max({q}) AS max FROM metrics WHERE {where} AND {q} IS NOT NULL GROUP BY method ORDER BY method")
    return con.execute(sql, params).df()


def metric_sample(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str],
                  limit: int = 4000, need_confidence: bool = False):
    """Up to ``limit`` rows with a value of ``column`` (a fixed pseudo-random subset when there are more, the
    same for the same filter): image_id, method, value, confidence, pred_label, gt_classes, correct. Also
    returns the number of rows the subset was drawn from."""
    q = _ident(column, known)
    where, params = filter_sql(f, known)
    cond = f"{q} IS NOT NULL" + (" AND confidence IS NOT NULL" if need_confidence else "")
    total = con.execute(f"SELECT count(*) FROM metrics WHERE {where} AND {cond}", params).fetchone()[0]
    df = con.execute(
        f"SELECT image_id, method, {q} AS value, confidence, pred_label, gt_classes, correct, target_label "
        f"FROM metrics WHERE {where} AND {cond} ORDER BY hash(image_id, method, target_label), image_id, method "
        "LIMIT ?", params + [int(limit)]).df()
    return df, int(total)


def failure_cases(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str],
                  limit: int = 50, correct_only: bool = False, misplaced: bool | None = None):
    """Confident rows whose map misses the object, ranked by ``score = confidence × (1 − column)``: high when
    the model is sure and the map's agreement with the object (``column``, higher is better) is low. With
    ``misplaced``, ``column`` measures the map on something it should avoid (e.g. ``cue_mass``) and
    ``score = confidence × column``; None (the default) takes it from the column's catalogue direction
    (lower is better: misplaced)."""
    q = _ident(column, known)
    if misplaced is None:
        misplaced = catalogue.lower_is_better(column)
    term = q if misplaced else f"(1 - {q})"
    where, params = filter_sql(f, known)
    extra = " AND correct" if correct_only else ""
    sql = (f"SELECT image_id, method, target_kind, target_class, target_label, gt_target, pred_label, confidence, "
           f"correct, gt_classes, {q} AS value, "
           f"confidence * {term} AS score FROM metrics WHERE {where} AND {q} IS NOT NULL "
           f"AND confidence IS NOT NULL{extra} ORDER BY score DESC, image_id, method LIMIT ?")
    return con.execute(sql, params + [int(limit)]).df()


def failure_images(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str],
                   limit: int = 50, correct_only: bool = False, reliance=None):
    """One row per image, ranked by evidence that the decision rests on the wrong reason (highest first):
    image_id, score, evidence, confidence, pred_label, correct, gt_classes, image_group, worst_method, and
    one ``method:<name>`` column per method with that method's mean of ``column`` on the image.

    Without ``reliance`` the score is ``confidence × mean over methods of (1 − column)`` for a column whose
    catalogue direction is higher-is-better (IoU: the maps miss the object), ``confidence × mean of column``
    for a lower-is-better one (cue mass: the maps sit on the cue); a row without a confidence (a headless model)
    counts with confidence 1. With ``reliance`` (one row per decision: image_id, context_reliance, from
    :func:`store.shortcuts.reliance`), the score is the image's highest context reliance: how much of the
    explained class's probability survives with the object removed; images without one rank last.
    ``worst_method`` is the method whose map scores worst on ``column`` (the preview to show)."""
    q = _ident(column, known)
    term = "v" if catalogue.lower_is_better(column) else "(1 - v)"
    where, params = filter_sql(f, known)
    extra = " AND correct" if correct_only else ""
    per = (f"SELECT image_id, method, avg({q}) AS v, max(confidence) AS conf, any_value(pred_label) AS pred_label, "
           f"bool_or(correct) AS correct, any_value(gt_classes) AS gt_classes, any_value(image_group) AS image_group "
           f"FROM metrics WHERE {where}{extra} GROUP BY image_id, method")
    rows = con.execute(f"WITH per AS ({per}) SELECT *, {term} AS bad FROM per ORDER BY image_id, method",
                       params).df()
    if rows.empty:
        return rows.assign(score=[], evidence=[], worst_method=[])
    facts = rows.groupby("image_id", sort=False).agg(
        confidence=("conf", "max"), pred_label=("pred_label", "first"), correct=("correct", "first"),
        gt_classes=("gt_classes", "first"), image_group=("image_group", "first"), bad=("bad", "mean"))
    worst = rows.dropna(subset=["bad"]).sort_values(["bad", "method"], ascending=[False, True])
    facts["worst_method"] = worst.drop_duplicates("image_id").set_index("image_id")["method"]
    if reliance is None:
        facts["evidence"] = facts["bad"]
        facts["score"] = facts["confidence"].fillna(1.0) * facts["bad"]
    else:
        per_image = reliance.groupby("image_id")["context_reliance"].max()
        facts["evidence"] = per_image.reindex(facts.index)
        facts["score"] = facts["evidence"]
    facts = facts.dropna(subset=["score"]).reset_index()
    facts = facts.sort_values(["score", "image_id"], ascending=[False, True], kind="stable").head(int(limit))
    wide = rows.pivot(index="image_id", columns="method", values="v").add_prefix("method:")
    out = facts.drop(columns="bad").merge(wide, left_on="image_id", right_index=True, how="left")
    return out.reset_index(drop=True)


def has_counterfactuals(con: duckdb.DuckDBPyConnection, run_id: str) -> bool:
    """True when the run's ``counterfactuals`` table has a made variant (a store computed with them)."""
    return con.execute("SELECT count(*) FROM counterfactuals WHERE run_id = ? AND score IS NOT NULL",
                       [run_id]).fetchone()[0] > 0


#: the orders of :func:`image_page`; "worst" and "best" follow the metric's catalogue direction
IMAGE_ORDERS = ("image id", "worst first", "best first", "most confident first")


def _image_order_sql(order: str, column: str) -> str:
    """``ORDER BY`` over image_page's per-image aggregate (fixed text, never user input)."""
    if order == "image id":
        return "image_id"
    if order == "most confident first":
        return "confidence DESC NULLS LAST, image_id"
    best = _best_first(column)
    direction = best if order == "best first" else {"ASC": "DESC", "DESC": "ASC"}[best]
    return f"value {direction} NULLS LAST, image_id"


def image_page(con: duckdb.DuckDBPyConnection, f: RowFilter, column: str, known: list[str], order: str,
               limit: int, offset: int):
    """One page of the distinct images under ``f``: image_id, value (mean of ``column`` over methods),
    confidence; and the total number of images."""
    q = _ident(column, known)
    if order not in IMAGE_ORDERS:
        raise QueryError(f"unknown order {order!r}; choose from {', '.join(IMAGE_ORDERS)}")
    where, params = filter_sql(f, known)
    total = con.execute(f"SELECT count(DISTINCT image_id) FROM metrics WHERE {where}", params).fetchone()[0]
    df = con.execute(
        f"SELECT image_id, avg({q}) AS value, max(confidence) AS confidence FROM metrics WHERE {where} "
        f"GROUP BY image_id ORDER BY {_image_order_sql(order, column)} LIMIT ? OFFSET ?",
        params + [int(limit), int(offset)]).df()
    return df, int(total)


def rows_for_images(con: duckdb.DuckDBPyConnection, f: RowFilter, image_ids: list[str],
                    known: list[str]):
    """Every metrics row under ``f`` for the given images (all columns), for captions and detail tables;
    ``known`` are the metric columns a threshold of ``f`` may name (:func:`metric_columns`)."""
    where, params = filter_sql(f, known)
    return con.execute(f"SELECT * FROM metrics WHERE {where} AND list_contains(?::VARCHAR[], image_id) "
                       "ORDER BY image_id, method, protocol, target_class", params + [list(image_ids)]).df()


def filtered_image_ids(con: duckdb.DuckDBPyConnection, f: RowFilter, known: list[str]) -> list[str]:
    """The images under ``f`` that have a stored picture (what the image detail can show), by image id."""
    where, params = filter_sql(f, known)
    return [r[0] for r in con.execute(
        f"SELECT DISTINCT image_id FROM metrics WHERE {where} AND image_id IN "
        "(SELECT image_id FROM images WHERE run_id = ?) ORDER BY image_id", params + [f.run_id]).fetchall()]


def image_rows(con: duckdb.DuckDBPyConnection, run_id: str, image_id: str):
    """Every metrics row of one image of one run, whatever the filters."""
    return con.execute("SELECT * FROM metrics WHERE run_id = ? AND image_id = ? "
                       "ORDER BY method, protocol, target_class", [run_id, image_id]).df()


def metric_image_ids(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """Every image with metric rows in the run (what a selection may name), sorted."""
    return [r[0] for r in con.execute("SELECT DISTINCT image_id FROM metrics WHERE run_id = ? ORDER BY image_id",
                                      [run_id]).fetchall()]


def image_ids(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    return [r[0] for r in con.execute("SELECT DISTINCT image_id FROM images WHERE run_id = ? ORDER BY image_id",
                                      [run_id]).fetchall()]


def images_for(con: duckdb.DuckDBPyConnection, run_id: str, ids: list[str]) -> dict[str, dict]:
    """image_id -> the ``images`` row (thumbnail, masks, top-5, meta, ...) for the given images only."""
    df = con.execute("SELECT * FROM images WHERE run_id = ? AND list_contains(?::VARCHAR[], image_id) "
                     "QUALIFY row_number() OVER (PARTITION BY image_id) = 1", [run_id, list(ids)]).df()
    return {r["image_id"]: r for r in df.to_dict("records")}


def heatmaps_for(con: duckdb.DuckDBPyConnection, run_id: str, ids: list[str], methods: list[str] | None = None):
    """The stored maps (encoded) of the given images (and methods): image_id, method, target_kind,
    target_class, height, width, data."""
    sql = ("SELECT image_id, method, target_kind, target_class, height, width, data FROM heatmaps "
           "WHERE run_id = ? AND list_contains(?::VARCHAR[], image_id)")
    params: list = [run_id, list(ids)]
    if methods is not None:
        sql += " AND list_contains(?::VARCHAR[], method)"
        params.append(list(methods))
    return con.execute(sql + " ORDER BY image_id, method, target_class", params).df()


# ---- the evaluation report (compute/report.py) ---------------------------------------------------------------

# REPORT_METRICS (the report's metric columns) come from store/catalogue.py.
_REPORT_FILTER = ("(? IS NULL OR protocol = ?) AND (? IS NULL OR confidence > ?) AND (? IS NULL OR run_id = ?)")


def _report_params(protocol, min_confidence, run_id) -> list:
    return [protocol, protocol, min_confidence, min_confidence, run_id, run_id]


def report_per_image(con: duckdb.DuckDBPyConnection, protocol: str | None = None,
                     min_confidence: float | None = None, run_id: str | None = None):
    """One row per (run, model, protocol, method, image): the mean of each metric over the image's rows (one
    row per image for a single target; one per explained class with ``--explain present``), ``correct`` as
    0/1, and the image's row count. NULL metrics are skipped by the means. The bootstrap resamples these."""
    means = ", ".join(f"avg({quote(c)}) AS {quote(c)}" for c in REPORT_METRICS)
    sql = (f"SELECT run_id, model, protocol, method, image_id, count(*) AS rows, {means}, "
           "avg(CAST(correct AS DOUBLE)) AS correct FROM metrics "
           f"WHERE {_REPORT_FILTER} GROUP BY run_id, model, protocol, method, image_id "
           "ORDER BY run_id, protocol, method, image_id")
    return con.execute(sql, _report_params(protocol, min_confidence, run_id)).df()


def report_summary(con: duckdb.DuckDBPyConnection, protocol: str | None = None,
                   min_confidence: float | None = None, run_id: str | None = None):
    """One row per (run, model, protocol, method): every metric's mean over images of the per-image means
    (each image weighs the same), the number of images with a defined IoU (``images``), all images and rows
    behind the group, and the share of images whose top-1 is correct among those where it is defined."""
    inner = ", ".join(f"avg({quote(c)}) AS {quote(c)}" for c in REPORT_METRICS)
    outer = ", ".join(f"avg({quote(c)}) AS {quote(c)}" for c in REPORT_METRICS)
    sql = (f"WITH per_image AS (SELECT run_id, model, protocol, method, image_id, count(*) AS n_rows, {inner}, "
           f"avg(CAST(correct AS DOUBLE)) AS correct FROM metrics WHERE {_REPORT_FILTER} "
           "GROUP BY run_id, model, protocol, method, image_id) "
           "SELECT run_id, model, protocol, method, count(iou) AS images, count(*) AS all_images, "
           f"sum(n_rows) AS rows, {outer}, avg(correct) AS correct, count(correct) AS correct_images "
           "FROM per_image GROUP BY run_id, model, protocol, method ORDER BY run_id, protocol, method")
    return con.execute(sql, _report_params(protocol, min_confidence, run_id)).df()

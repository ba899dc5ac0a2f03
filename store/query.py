"""Read-only access to a store through DuckDB: views ``runs``, ``metrics``, ``heatmaps``, ``images``, ``skips``.

Every query that the report or the dashboard runs lives here, takes its values as bound parameters, and
returns a pandas DataFrame. Nothing here writes to the store.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa

from store.schema import METRIC_COLUMNS, TABLES, decode_heatmap, empty_table  # noqa: F401 (re-export)


class StoreError(ValueError):
    """The folder is not a vitlens store (or holds nothing yet); the message says how to fill it."""


FILL_HINT = ("fill it with: vitlens compute --voc-root <VOC folder> --out <store>  "
             "(offline: add --random-init --model vit_tiny_patch16_224, or run `make demo`)")


def has_results(store: str | Path) -> bool:
    return any(Path(store).glob("metrics/run_id=*/part-*.parquet"))


def connect(store: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per table (an empty, typed view for a table with no parts yet)."""
    root = Path(store).expanduser()
    if not root.is_dir():
        raise StoreError(f"store folder {str(root)!r} does not exist; {FILL_HINT}")
    con = duckdb.connect()
    for table in TABLES:
        files = sorted(str(p) for p in root.glob(f"{table}/run_id=*/part-*.parquet"))
        if files:
            rel = con.read_parquet(files, hive_partitioning=False, union_by_name=True)
        else:
            rel = con.from_arrow(empty_table(table))
        rel.create_view(table)
    con.from_arrow(_runs_table(root)).create_view("runs")
    return con


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


def method_summary(con: duckdb.DuckDBPyConnection, protocol: str | None = None, min_confidence: float | None = None,
                   run_id: str | None = None):
    """Per method: image count and mean of each localisation metric (the report's table, as fractions)."""
    means = ", ".join(f"avg({c}) AS {c}" for c in METRIC_COLUMNS)
    sql = (f"SELECT method, count(DISTINCT image_id) AS images, count(*) AS rows, {means} FROM metrics "
           "WHERE (? IS NULL OR protocol = ?) AND (? IS NULL OR confidence > ?) AND (? IS NULL OR run_id = ?) "
           "GROUP BY method ORDER BY method")
    return con.execute(sql, [protocol, protocol, min_confidence, min_confidence, run_id, run_id]).df()

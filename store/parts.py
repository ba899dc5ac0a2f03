"""Which part files of a store count: the one rule that both the writer (resume, clean-up, counts) and the
readers (:func:`store.query.connect`) follow, so that a rerun skips exactly the rows a query sees."""

from __future__ import annotations

from pathlib import Path

from store.schema import COMMIT_TABLE, STANDALONE_TABLES


def committed_parts(store: str | Path, table: str, run_id: str = "*") -> list[Path]:
    """The parts of ``table`` that count, for one run (``run_id``) or every run (``"*"``), in path order.

    A batch writes its parts one by one and its ``metrics`` part last, as its commit marker: a part of another
    table counts only beside a ``metrics`` part of the same name and run, so the leftovers of a batch
    interrupted halfway are never read (and its rows are written again by a rerun). ``metrics`` and ``skips``
    parts count as soon as they exist (:data:`store.schema.STANDALONE_TABLES`)."""
    root = Path(store)
    parts = sorted(root.glob(f"{table}/run_id={run_id}/part-*.parquet"), key=str)
    if table in STANDALONE_TABLES:
        return parts
    markers = {(p.parent.name, p.name) for p in root.glob(f"{COMMIT_TABLE}/run_id={run_id}/part-*.parquet")}
    return [p for p in parts if (p.parent.name, p.name) in markers]

"""Atomic, resumable writes of part files (used only by the batch job)."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from store.schema import COMMIT_TABLE, RESUME_KEY, SCHEMA_VERSION, TABLES, to_table


ORPHAN_AGE = 600.0  # seconds


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def manifest_lock(out: str | Path, run_id: str) -> Iterator[None]:
    """An exclusive lock on ``runs/.<run_id>.lock`` (POSIX record lock: honoured across the nodes of an NFS
    mount), held while a process merges its entry into the run manifest. Where the filesystem offers no
    locks the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = Path(out) / "runs" / f".{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


class StoreWriter:
    """Writes the parts of one run into ``out``; ``metrics`` last, as the commit marker of a batch.

    ``clean_orphans=False`` leaves the clean-up of stale leftovers to someone else (the driver of a Ray run
    does it once, before any actor starts).
    """

    def __init__(self, out: str | Path, run_id: str, clean_orphans: bool = True):
        self.out = Path(out)
        self.run_id = run_id
        for table in TABLES:
            self.part_dir(table).mkdir(parents=True, exist_ok=True)
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        self.removed_orphans = self._remove_orphans() if clean_orphans else 0

    def part_dir(self, table: str) -> Path:
        return self.out / table / f"run_id={self.run_id}"

    def _remove_orphans(self) -> int:
        """Drop leftovers of an interrupted batch: temp files, and parts whose metrics twin never landed.

        Only leftovers older than ``ORPHAN_AGE`` seconds go: another process of the same run (a shard, an
        actor) may be between writing a batch's heatmaps part and its metrics part right now. Readers ignore
        uncommitted parts anyway (:func:`store.query.connect`), so a young leftover is never seen."""
        committed = {p.name for p in self.part_dir(COMMIT_TABLE).glob("part-*.parquet")}
        cutoff = time.time() - ORPHAN_AGE
        removed = 0
        for table in TABLES:
            stale = [p for p in self.part_dir(table).glob(".*.tmp")]
            if table not in (COMMIT_TABLE, "skips"):
                stale += [p for p in self.part_dir(table).glob("part-*.parquet") if p.name not in committed]
            for p in stale:
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _read_column_sets(self, table: str, columns: tuple[str, ...]) -> set[tuple]:
        done: set[tuple] = set()
        for p in sorted(self.part_dir(table).glob("part-*.parquet")):
            t = pq.read_table(p, columns=list(columns))
            done.update(zip(*(t.column(c).to_pylist() for c in columns)))
        return done

    def done_keys(self) -> set[tuple]:
        """Committed ``(image_id, method, target_class, protocol)`` keys of this run."""
        return self._read_column_sets(COMMIT_TABLE, RESUME_KEY)

    def images_done(self) -> set[str]:
        return {k[0] for k in self._read_column_sets("images", ("image_id",))}

    def write_batch(self, key: str, tables: dict[str, list[dict]]) -> None:
        """Commit one batch: every non-empty table's part, then the metrics part (the commit marker)."""
        name = f"part-{key}.parquet"
        for table in sorted(tables, key=lambda t: t == COMMIT_TABLE):
            rows = tables[table]
            if not rows and table != COMMIT_TABLE:
                continue
            self._write(table, name, rows)

    def write_skips(self, key: str, rows: list[dict]) -> None:
        if rows:
            self._write("skips", f"part-{key}.parquet", rows)

    def _write(self, table: str, name: str, rows: list[dict]) -> None:
        for r in rows:
            r.setdefault("run_id", self.run_id)
        path = self.part_dir(table) / name
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        pq.write_table(to_table(table, rows), tmp, compression="zstd")
        os.replace(tmp, path)

    def write_shard_report(self, name: str, report: dict) -> Path:
        """Counts and timings of one shard: ``runs/<run_id>/<name>.json`` (shards never race on one file)."""
        folder = self.out / "runs" / self.run_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        _atomic_write_bytes(path, json.dumps({**report, "run_id": self.run_id}, indent=2, default=str).encode())
        return path

    def write_manifest(self, manifest: dict) -> Path:
        """Merge ``manifest`` into ``runs/<run_id>.json`` (its ``sessions`` are appended), under the run's
        lock, so that processes of one run (shards, actors) starting together lose no session entry."""
        path = self.out / "runs" / f"{self.run_id}.json"
        with manifest_lock(self.out, self.run_id):
            previous = json.loads(path.read_text()) if path.exists() else {}
            merged = {**previous, **manifest, "run_id": self.run_id, "schema_version": SCHEMA_VERSION}
            merged["sessions"] = previous.get("sessions", []) + manifest.get("sessions", [])
            _atomic_write_bytes(path, json.dumps(merged, indent=2, default=str).encode())
        return path

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

from store.parts import committed_parts
from store.schema import COMMIT_TABLE, RESUME_KEY, SCHEMA_VERSION, STANDALONE_TABLES, TABLES, to_table


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
        cutoff = time.time() - ORPHAN_AGE
        removed = 0
        for table in TABLES:
            stale = [p for p in self.part_dir(table).glob(".*.tmp")]
            if table not in STANDALONE_TABLES:
                kept = set(self._committed_parts(table))
                stale += [p for p in self.part_dir(table).glob("part-*.parquet") if p not in kept]
            for p in stale:
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _committed_parts(self, table: str) -> list[Path]:
        """This run's parts of ``table`` that count (:func:`store.parts.committed_parts`)."""
        return committed_parts(self.out, table, self.run_id)

    def _read_column_sets(self, table: str, columns: tuple[str, ...]) -> set[tuple]:
        done: set[tuple] = set()
        for p in self._committed_parts(table):
            t = pq.read_table(p, columns=list(columns))
            done.update(zip(*(t.column(c).to_pylist() for c in columns)))
        return done

    def done_keys(self) -> set[tuple]:
        """Committed ``(image_id, method, target_class, protocol)`` keys of this run."""
        return self._read_column_sets(COMMIT_TABLE, RESUME_KEY)

    def images_done(self) -> set[str]:
        """Images with a committed ``images`` row (a part whose batch never wrote its ``metrics`` part is
        ignored, as readers ignore it: its rows are written again)."""
        return {k[0] for k in self._read_column_sets("images", ("image_id",))}

    def committed_counts(self) -> dict:
        """What the store holds for this run now: ``images`` (committed ``images`` rows), ``rows`` (committed
        metric rows) and ``skipped`` (images with a skip row and no committed ``images`` row: never
        explained, e.g. unreadable or below ``--min-confidence``)."""
        images = self.images_done()
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self._committed_parts(COMMIT_TABLE))
        skipped = {k[0] for k in self._read_column_sets("skips", ("image_id",))} - images
        return {"images": len(images), "skipped": len(skipped), "rows": rows}

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
        """Merge ``manifest`` into ``runs/<run_id>.json``, under the run's lock, so that processes of one run
        (shards, actors) starting together lose no entry.

        The file describes the run across all its sessions: ``sessions`` and ``reports`` are appended;
        ``created`` stays the first session's; ``methods`` (and ``config.methods``) are every method any
        session asked for; the other ``config`` fields are the run's identity (equal in every session) and the
        latest session's choices (each session's own are in its ``sessions`` entry)."""
        path = self.out / "runs" / f"{self.run_id}.json"
        with manifest_lock(self.out, self.run_id):
            previous = json.loads(path.read_text()) if path.exists() else {}
            merged = {**previous, **manifest, "run_id": self.run_id, "schema_version": SCHEMA_VERSION}
            merged["sessions"] = previous.get("sessions", []) + manifest.get("sessions", [])
            if "created" in previous:
                merged["created"] = previous["created"]
            if "methods" in manifest:
                methods = list(dict.fromkeys([*previous.get("methods", []), *manifest["methods"]]))
                merged["methods"] = methods
                if isinstance(merged.get("config"), dict):
                    merged["config"] = {**merged["config"], "methods": ",".join(methods)}
            reports = _reports_of(previous) + manifest.get("reports", [])
            if reports:
                merged["reports"] = reports
            _atomic_write_bytes(path, json.dumps(merged, indent=2, default=str).encode())
        return path

    def write_report(self, report: dict) -> Path:
        """Record one finished session's ``report`` (``counts``: images, skipped, already_done, rows of that
        session; ``timings``) in the run manifest's ``reports``, and set the run-level ``counts`` and
        ``timings`` from the whole run, so that a rerun with nothing left to do leaves them as they were:

        - ``counts.images``, ``counts.rows``, ``counts.skipped``: what the store holds for the run now
          (:meth:`committed_counts`; whatever session, shard or backend wrote it);
        - ``counts.already_done``: the latest session's (what it found committed when it started);
        - ``timings``: the sums over the finished sessions (parallel shards add up: compute time, not wall
          time); ``images_per_second``: images explained over those seconds.
        """
        path = self.out / "runs" / f"{self.run_id}.json"
        with manifest_lock(self.out, self.run_id):
            previous = json.loads(path.read_text()) if path.exists() else {}
            reports = _reports_of(previous) + [report]
            counts = {**self.committed_counts(),
                      "already_done": report.get("counts", {}).get("already_done", 0)}
            merged = {**previous, "run_id": self.run_id, "schema_version": SCHEMA_VERSION, "reports": reports,
                      "counts": {k: counts[k] for k in ("images", "skipped", "already_done", "rows")},
                      "timings": _summed_timings(reports)}
            _atomic_write_bytes(path, json.dumps(merged, indent=2, default=str).encode())
        return path


def _reports_of(manifest: dict) -> list[dict]:
    """The finished sessions' reports of a manifest; one written before there were any (run-level ``counts``
    and ``timings`` of its latest session only) counts as one report."""
    if "reports" in manifest:
        return list(manifest["reports"])
    if "counts" in manifest or "timings" in manifest:
        return [{"counts": manifest.get("counts", {}), "timings": manifest.get("timings", {}), "legacy": True}]
    return []


def _summed_timings(reports: list[dict]) -> dict:
    totals: dict = {}
    stages: dict = {}
    images = 0
    for r in reports:
        images += int(r.get("counts", {}).get("images") or 0)
        for k, v in r.get("timings", {}).items():
            if k == "stages":
                for stage, sec in v.items():
                    stages[stage] = stages.get(stage, 0.0) + float(sec)
            elif k != "images_per_second" and isinstance(v, (int, float)):
                totals[k] = totals.get(k, 0.0) + float(v)
    timings = {k: round(v, 3) for k, v in totals.items()}
    seconds = totals.get("total_seconds", 0.0)
    timings["images_per_second"] = round(images / seconds, 3) if seconds > 0 else 0.0
    if stages:
        timings["stages"] = {k: round(v, 3) for k, v in stages.items()}
    return timings

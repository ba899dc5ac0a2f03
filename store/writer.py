"""Atomic, resumable writes of part files (used only by the batch job)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from store.commits import (Committed, Part, atomic_write, committed, describe, part_bytes, record_dir, uncommit,
                           write_record)
from store.locks import Claim, StoreBusy, claim, manifest_lock  # noqa: F401 (StoreBusy: re-export)
from store.schema import COMMIT_TABLE, RESUME_KEY, SCHEMA_VERSION, TABLES, to_table


ORPHAN_AGE = 600.0  # seconds
#: what identifies a skip row: a rerun that meets the same failure again does not record it twice
SKIP_KEY = ("image_id", "stage", "reason")


class StoreWriter:
    """Writes the parts of one run into ``out``, each batch committed by its record (:mod:`store.commits`).

    On opening, the writer checks every committed part of the run against its record (checksums included)
    and removes each damaged batch, so the keys it held are owed again and a rerun recomputes exactly them
    (``repaired`` lists what was removed); leftovers of interrupted writes go too. ``clean_orphans=False``
    leaves both to someone else (the driver of a Ray run does it once, before any actor starts).
    """

    def __init__(self, out: str | Path, run_id: str, clean_orphans: bool = True,
                 claim_shard: tuple[int, int] | None | bool = False):
        """``claim_shard``: False to write without a claim (a Ray actor: its driver holds it), else the shard
        this process writes (None: the whole run), claimed before anything is repaired — see
        :func:`store.locks.claim`; :class:`store.locks.StoreBusy` names the live process that already writes
        any of those images. Held until :meth:`close` or the end of the process."""
        self.out = Path(out)
        self.run_id = run_id
        for table in TABLES:
            self.part_dir(table).mkdir(parents=True, exist_ok=True)
        (self.out / "runs").mkdir(parents=True, exist_ok=True)
        self._claim: Claim | None = None if claim_shard is False else claim(self.out, run_id, claim_shard)
        self._adopt_unrecorded_run()
        self.repaired: list[str] = self._repair() if clean_orphans else []
        self.removed_orphans = self._remove_orphans() if clean_orphans else 0
        self._skips_seen = self._read_column_sets("skips", SKIP_KEY)

    def part_dir(self, table: str) -> Path:
        return self.out / table / f"run_id={self.run_id}"

    def close(self) -> None:
        if self._claim is not None:
            self._claim.release()
            self._claim = None

    def _counted(self, check: str = "footer") -> Committed:
        return committed(self.out, self.run_id, check)

    def _adopt_unrecorded_run(self) -> None:
        """A run written before commit records existed gets a record for each committed batch (as the older
        rule reads it), so that the batches this writer adds do not hide them."""
        if record_dir(self.out, self.run_id).is_dir() or not any(self.part_dir(COMMIT_TABLE).glob("part-*.parquet")):
            return
        by_key: dict[str, list[Part]] = {}
        for table, files in self._counted("size").files.items():
            for path in files:
                data = path.read_bytes()
                rows = pq.ParquetFile(path).metadata.num_rows
                key = path.stem[len("part-"):] + ("-skips" if table == "skips" else "")
                by_key.setdefault(key, []).append(describe(table, path.name, data, rows))
        for key, parts in by_key.items():
            write_record(self.out, self.run_id, key, parts)

    def _repair(self) -> list[str]:
        found = self._counted("checksum")
        for batch in found.damaged:
            uncommit(self.out, batch)
        for record in found.bad_records:
            record.unlink(missing_ok=True)
        return found.problems

    def _remove_orphans(self) -> int:
        """Drop leftovers of an interrupted batch: temp files, and parts that no commit record lists.

        Only leftovers older than ``ORPHAN_AGE`` seconds go: another process of the same run (a shard, an
        actor) may be between writing a batch's parts and its record right now. Readers ignore uncommitted
        parts anyway (:mod:`store.commits`), so a young leftover is never seen."""
        cutoff = time.time() - ORPHAN_AGE
        counted = {p for files in self._counted("size").files.values() for p in files}
        removed = 0
        for table in TABLES:
            stale = list(self.part_dir(table).glob(".*.tmp"))
            stale += [p for p in self.part_dir(table).glob("part-*.parquet") if p not in counted]
            for p in stale:
                try:
                    if p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    def _read_column_sets(self, table: str, columns: tuple[str, ...], counted: Committed | None = None) -> set[tuple]:
        done: set[tuple] = set()
        for p in (counted or self._counted()).files[table]:
            t = pq.read_table(p, columns=list(columns))
            done.update(zip(*(t.column(c).to_pylist() for c in columns)))
        return done

    def done_keys(self) -> set[tuple]:
        """Committed ``(image_id, method, target_class, protocol)`` keys of this run."""
        return self._read_column_sets(COMMIT_TABLE, RESUME_KEY)

    def images_done(self) -> set[str]:
        """Images with a committed ``images`` row (a part whose batch never committed is ignored, as readers
        ignore it: its rows are written again)."""
        return {k[0] for k in self._read_column_sets("images", ("image_id",))}

    def committed_counts(self) -> dict:
        """What the store holds for this run now: ``images`` (committed ``images`` rows), ``rows`` (committed
        metric rows) and ``skipped`` (images with a skip row and no committed ``images`` row: never
        explained, e.g. unreadable or below ``--min-confidence``)."""
        counted = self._counted()
        images = {k[0] for k in self._read_column_sets("images", ("image_id",), counted)}
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in counted.files[COMMIT_TABLE])
        skipped = {k[0] for k in self._read_column_sets("skips", ("image_id",), counted)} - images
        return {"images": len(images), "skipped": len(skipped), "rows": rows}

    def write_batch(self, key: str, tables: dict[str, list[dict]]) -> None:
        """Commit one batch: every non-empty table's part (``metrics`` always, even empty), then its record."""
        name = f"part-{key}.parquet"
        parts = [self._write(table, name, tables[table]) for table in sorted(tables, key=lambda t: t == COMMIT_TABLE)
                 if tables[table] or table == COMMIT_TABLE]
        write_record(self.out, self.run_id, key, parts)

    def write_skips(self, key: str, rows: list[dict]) -> None:
        """Record skips (each failure once: a row equal on ``SKIP_KEY`` to a committed one is not written)."""
        fresh, seen = [], set()
        for r in rows:
            k = tuple(r.get(c) for c in SKIP_KEY)
            if k not in self._skips_seen and k not in seen:
                seen.add(k)
                fresh.append(r)
        if fresh:  # named by content too: two calls for one batch never overwrite each other's part
            tag = hashlib.sha1(repr(sorted(seen, key=repr)).encode()).hexdigest()[:8]
            part = self._write("skips", f"part-{key}-{tag}.parquet", fresh)
            write_record(self.out, self.run_id, f"{key}-skips-{tag}", [part])
            self._skips_seen |= seen

    def _write(self, table: str, name: str, rows: list[dict]) -> Part:
        for r in rows:
            r.setdefault("run_id", self.run_id)
        data, n = part_bytes(to_table(table, rows))
        atomic_write(self.part_dir(table) / name, data)
        return describe(table, name, data, n)

    def write_shard_report(self, name: str, report: dict) -> Path:
        """Counts and timings of one shard: ``runs/<run_id>/<name>.json`` (shards never race on one file)."""
        folder = self.out / "runs" / self.run_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        atomic_write(path, json.dumps({**report, "run_id": self.run_id}, indent=2, default=str).encode())
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
            previous = _read_manifest(path)
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
            atomic_write(path, json.dumps(merged, indent=2, default=str).encode())
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
            previous = _read_manifest(path)
            reports = _reports_of(previous) + [report]
            counts = {**self.committed_counts(),
                      "already_done": report.get("counts", {}).get("already_done", 0)}
            merged = {**previous, "run_id": self.run_id, "schema_version": SCHEMA_VERSION, "reports": reports,
                      "counts": {k: counts[k] for k in ("images", "skipped", "already_done", "rows")},
                      "timings": _summed_timings(reports)}
            atomic_write(path, json.dumps(merged, indent=2, default=str).encode())
        return path


def _read_manifest(path: Path) -> dict:
    """A run manifest as a dict ({} where there is none yet); a damaged one is named, since the JSON error alone
    ("Expecting value: line 1 column 1") does not say which file to look at."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ValueError(f"cannot read run manifest {str(path)!r} ({type(exc).__name__}: {exc}); restore it, or "
                         "move it away to start the run's record afresh") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"run manifest {str(path)!r} holds a JSON {type(manifest).__name__}, not an object; "
                         "restore it, or move it away to start the run's record afresh")
    return manifest


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

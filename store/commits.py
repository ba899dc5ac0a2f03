"""Which part files of a store count, and whether they are intact — decided here and nowhere else.

A batch commits by writing its part files (one per table, atomically renamed into place) and then a **commit
record**, ``commits/run_id=<run_id>/<key>.json``, that lists each part with its row count, size and SHA-256.
The record is the commit marker: a part counts exactly when a record lists it, so an interrupted batch (parts
without a record) is never read, and a part that was deleted, truncated or overwritten after its commit is
found by comparing it with its record:

- every reader (:func:`store.query.connect`: the report and the dashboard) checks existence, size and the
  Parquet footer's row count — cheap, no data read — and leaves out each damaged batch *whole*, so the tables
  it reads stay consistent with one another, naming every damaged part;
- the batch job (:class:`store.writer.StoreWriter`) also checks the checksums, and removes each damaged
  batch's record and parts before it resumes, so a rerun of the same command recomputes exactly the lost work.

Runs written before commit records existed have no ``commits/run_id=<run_id>`` folder; for them the older
rule holds: a ``heatmaps``/``images`` part counts beside a ``metrics`` part of the same name, and every
``metrics`` and ``skips`` part counts (nothing to check them against).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from store.schema import COMMIT_TABLE, STANDALONE_TABLES, TABLES

COMMITS = "commits"
#: how much checking a reader does: ``size`` (stat), ``footer`` (+ Parquet footer and row count),
#: ``checksum`` (+ SHA-256 of the whole file)
CHECKS = ("size", "footer", "checksum")


@dataclass(frozen=True)
class Part:
    """One part file as its commit record describes it."""

    table: str
    file: str          # the file name inside ``<table>/run_id=<run_id>/``
    rows: int
    bytes: int
    sha256: str

    def path(self, root: Path, run_id: str) -> Path:
        return root / self.table / f"run_id={run_id}" / self.file


@dataclass(frozen=True)
class Batch:
    """A committed batch: its record's location and the parts it lists."""

    run_id: str
    key: str
    record: Path
    parts: tuple[Part, ...]


@dataclass
class Committed:
    """The parts that count, per table, and what was wrong with the ones that do not."""

    files: dict[str, list[Path]] = field(default_factory=lambda: {t: [] for t in TABLES})
    problems: list[str] = field(default_factory=list)   # one line per damaged part or record, naming it
    damaged: list[Batch] = field(default_factory=list)  # batches left out because a part of theirs is damaged
    bad_records: list[Path] = field(default_factory=list)


def part_bytes(table) -> tuple[bytes, int]:
    """A pyarrow table as the bytes of a zstd Parquet file, and its row count."""
    import io

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue(), table.num_rows


def describe(table_name: str, file: str, data: bytes, rows: int) -> Part:
    return Part(table_name, file, rows, len(data), hashlib.sha256(data).hexdigest())


def atomic_write(path: Path, data: bytes) -> None:
    """``data`` at ``path`` or nothing there (a temp file renamed into place; readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def record_dir(root: Path, run_id: str) -> Path:
    return Path(root) / COMMITS / f"run_id={run_id}"


def write_record(root: Path, run_id: str, key: str, parts: list[Part]) -> Path:
    """Commit: the record of ``parts`` (already in place) under ``key``. The rename makes it the marker."""
    path = record_dir(root, run_id) / f"{key}.json"
    body = {"key": key, "parts": [p.__dict__ for p in parts]}
    atomic_write(path, json.dumps(body, indent=1).encode())
    return path


def _read_record(path: Path, run_id: str) -> Batch:
    body = json.loads(path.read_text())
    parts = tuple(Part(**{k: p[k] for k in ("table", "file", "rows", "bytes", "sha256")}) for p in body["parts"])
    for p in parts:
        if p.table not in TABLES or Path(p.file).name != p.file or not p.file.endswith(".parquet"):
            raise ValueError(f"names {p.table}/{p.file}, which is not a part of this store's tables")
    return Batch(run_id, str(body["key"]), path, parts)


def _damage(part: Part, path: Path, check: str) -> str | None:
    """Why the file at ``path`` is not the part its record describes, or None if it is (to ``check``'s depth)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != part.bytes:
        return f"{size} bytes, its commit recorded {part.bytes}"
    if check in ("footer", "checksum"):
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - any unreadable footer is damage, whatever pyarrow raises
            return f"not a readable Parquet file ({type(exc).__name__})"
        if rows != part.rows:
            return f"{rows} rows, its commit recorded {part.rows}"
    if check == "checksum":
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != part.sha256:
            return "contents differ from what was committed (checksum)"
    return None


def run_ids(root: Path) -> list[str]:
    """Every run id with a part or a record in the store."""
    ids = {p.name.split("=", 1)[1] for t in (*TABLES, COMMITS) for p in (Path(root) / t).glob("run_id=*")
           if p.is_dir()}
    return sorted(ids)


def committed(root: str | Path, run_id: str | None = None, check: str = "footer") -> Committed:
    """The parts that count in the store at ``root`` (of one run, or of every run) after checking each to
    ``check``'s depth (see :data:`CHECKS`)."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, not {check!r}")
    root = Path(root)
    out = Committed()
    for rid in ([run_id] if run_id is not None else run_ids(root)):
        if record_dir(root, rid).is_dir():
            _recorded_run(root, rid, check, out)
        else:
            _legacy_run(root, rid, out)
    for files in out.files.values():
        files.sort()
    return out


def _recorded_run(root: Path, run_id: str, check: str, out: Committed) -> None:
    for path in sorted(record_dir(root, run_id).glob("*.json")):
        try:
            batch = _read_record(path, run_id)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.problems.append(f"{path.relative_to(root)}: unreadable commit record ({exc}); its batch is left out")
            out.bad_records.append(path)
            continue
        faults = [(p, why) for p in batch.parts if (why := _damage(p, p.path(root, run_id), check))]
        if faults:
            out.damaged.append(batch)
            for p, why in faults:
                out.problems.append(f"{p.path(root, run_id).relative_to(root)}: {why}; its batch "
                                    f"({len(batch.parts)} part(s), key {batch.key}) is left out")
            continue
        for p in batch.parts:
            out.files[p.table].append(p.path(root, run_id))


def _legacy_run(root: Path, run_id: str, out: Committed) -> None:
    def parts(table: str) -> list[Path]:
        return sorted((root / table / f"run_id={run_id}").glob("part-*.parquet"))

    marked = {p.name for p in parts(COMMIT_TABLE)}
    for table in TABLES:
        out.files[table] += [p for p in parts(table) if table in STANDALONE_TABLES or p.name in marked]


def uncommit(root: Path, batch: Batch) -> int:
    """Remove a damaged batch: its record first (from then on its parts do not count), then its parts.
    Returns the number of files removed."""
    removed = 0
    for path in (batch.record, *(p.path(root, batch.run_id) for p in batch.parts)):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


__all__ = ["CHECKS", "COMMITS", "Batch", "Committed", "Part", "atomic_write", "committed", "describe",
           "part_bytes", "record_dir", "run_ids", "uncommit", "write_record"]

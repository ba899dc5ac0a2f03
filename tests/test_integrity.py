"""A store cannot be silently wrong: every committed batch is checked against its commit record, damaged
batches are left out by readers (named) and recomputed by a rerun, two writers cannot store a row twice,
and a rerun records a skip once. Real processes, real Parquet, real DuckDB."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from store.commits import committed
from store.query import connect, store_problems
from store.writer import StoreWriter
from tests.test_resume import REPO, VITLENS, _rows

METHODS = "raw_attention,rollout,gradcam"


def _cmd(voc_mini, out, *extra):
    return [VITLENS, "compute", "--voc-root", str(voc_mini), "--out", str(out), "--random-init", "--model",
            "vit_tiny_patch16_224", "--img-size", "112", "--methods", METHODS, "--batch-size", "4",
            "--workers", "0", "--device", "cpu", *extra]


def _run(cmd, check=True):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def reference(voc_mini, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "reference"
    _run(_cmd(voc_mini, out))
    return out


def _copy(reference: Path, tmp_path: Path) -> Path:
    out = tmp_path / "store"
    shutil.copytree(reference, out)
    return out


def _report(out: Path):
    return _run([VITLENS, "report", "--store", str(out)], check=False)


def _metric_images(out: Path) -> dict[str, int]:
    return dict(connect(out).execute("SELECT method, count(DISTINCT image_id) FROM metrics GROUP BY ALL").fetchall())


@pytest.mark.slow
def test_a_deleted_metrics_part_is_named_and_recomputed_exactly(reference, voc_mini, tmp_path):
    # before: the report exited 0 counting 8 images for some methods and 10 for others, with no warning
    out = _copy(reference, tmp_path)
    victim = sorted(out.glob("metrics/run_id=*/part-*.parquet"))[0]
    lost = pq.read_table(victim).num_rows
    victim.unlink()

    report = _report(out)
    assert report.returncode == 0
    assert victim.name in report.stderr and "missing" in report.stderr
    counts = _metric_images(out)
    assert len(set(counts.values())) == 1, f"every method must lose the same images: {counts}"
    assert sum(1 for _ in connect(out).execute("FROM heatmaps").fetchall()) < \
        sum(1 for _ in connect(reference).execute("FROM heatmaps").fetchall()), "the batch is left out whole"

    again = _run(_cmd(voc_mini, out))
    assert "recomputed" in " ".join(again.stdout.split())
    assert _rows(out) == _rows(reference)
    assert not store_problems(connect(out))
    assert sum(connect(out).execute("SELECT count(*) FROM metrics").fetchone()) == \
        sum(connect(reference).execute("SELECT count(*) FROM metrics").fetchone())
    assert lost > 0


@pytest.mark.slow
def test_a_garbage_heatmaps_part_is_read_around_and_repaired(reference, voc_mini, tmp_path):
    # before: a DuckDB traceback from `vitlens report` (which does not even read heatmaps), and a rerun said
    # "10 already done" and left the damage in place
    out = _copy(reference, tmp_path)
    victim = sorted(out.glob("heatmaps/run_id=*/part-*.parquet"))[-1]
    victim.write_bytes(b"not a parquet file" * 100)

    report = _report(out)
    assert report.returncode == 0, report.stderr
    assert "Traceback" not in report.stderr and victim.name in report.stderr
    problems = store_problems(connect(out))
    assert len(problems) == 1 and victim.name in problems[0]
    connect(out).execute("SELECT count(*) FROM heatmaps").fetchone()  # the dashboard's reads work

    _run(_cmd(voc_mini, out))
    assert _rows(out) == _rows(reference)
    assert not store_problems(connect(out))


@pytest.mark.slow
def test_a_part_overwritten_with_other_rows_is_found_by_its_checksum(reference, voc_mini, tmp_path):
    out = _copy(reference, tmp_path)
    parts = sorted(out.glob("metrics/run_id=*/part-*.parquet"))
    table = pq.read_table(parts[0])
    i = table.schema.get_field_index("iou")
    changed = table.set_column(i, "iou", pc.subtract(pa.scalar(1.0, table.schema.field(i).type), table.column(i)))
    pq.write_table(changed, parts[0], compression="zstd")
    size_matches = parts[0].stat().st_size == next(
        p["bytes"] for r in out.glob("commits/run_id=*/*.json") for p in json.loads(r.read_text())["parts"]
        if p["file"] == parts[0].name and p["table"] == "metrics")
    found = committed(out, check="checksum")
    assert found.damaged and parts[0].name in " ".join(found.problems)
    if size_matches:  # same size and rows: only the checksum tells (the readers' cheap check does not)
        assert not committed(out, check="footer").damaged
    _run(_cmd(voc_mini, out))
    assert _rows(out) == _rows(reference)


_HOLD = """
import sys, time
from store.writer import StoreWriter
shard = None if sys.argv[3] == "all" else tuple(int(x) for x in sys.argv[3].split("/"))
StoreWriter(sys.argv[1], sys.argv[2], claim_shard=shard)
print("holding", flush=True)
time.sleep(600)
"""


def _hold(out: Path, run_id: str, scope: str) -> subprocess.Popen:
    """A real second process that holds a writer's claim on ``run_id`` (as a running compute does)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out), run_id, scope], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.mark.slow
def test_a_second_writer_on_the_same_run_is_refused_naming_the_first(reference, voc_mini, tmp_path):
    # before: two processes on one --out stored duplicate keys (50 rows, 40 unique)
    out = _copy(reference, tmp_path)
    run_id = json.loads(next((out / "runs").glob("*.json")).read_text())["run_id"]
    holder = _hold(out, run_id, "all")
    try:
        second = _run(_cmd(voc_mini, out), check=False)
        assert second.returncode == 2, second.stdout + second.stderr
        text = " ".join(second.stderr.split())
        assert f"pid {holder.pid}" in text and "--shard" in text and "Traceback" not in text
        sharded = _run(_cmd(voc_mini, out, "--shard", "0/2"), check=False)
        assert sharded.returncode == 2, "a shard overlaps the whole run"
    finally:
        holder.kill()
        holder.wait()
    after = _run(_cmd(voc_mini, out))  # the claim died with its process
    assert "10 already done" in " ".join(after.stdout.split())


@pytest.mark.slow
def test_shards_of_one_run_still_write_side_by_side(voc_mini, tmp_path):
    out = tmp_path / "store"
    first = subprocess.Popen(_cmd(voc_mini, out, "--shard", "0/2"), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = _run(_cmd(voc_mini, out, "--shard", "1/2"), check=False)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, stderr + second.stderr
    keys = connect(out).execute("SELECT image_id, method, protocol, target_class, count(*) AS n FROM metrics "
                                "GROUP BY ALL HAVING n > 1").fetchall()
    assert not keys
    assert connect(out).execute("SELECT count(DISTINCT image_id) FROM metrics").fetchone()[0] == 10


def test_claims_overlap_unless_they_are_different_shards_of_one_count(tmp_path):
    holder = _hold(tmp_path, "run0", "1/4")
    try:
        for shard in [None, (1, 4), (1, 2), (0, 3)]:
            with pytest.raises(ValueError, match=f"pid {holder.pid}"):
                StoreWriter(tmp_path, "run0", claim_shard=shard)
        for shard in [(0, 4), (2, 4), (3, 4)]:
            StoreWriter(tmp_path, "run0", claim_shard=shard).close()
        StoreWriter(tmp_path, "other-run", claim_shard=None).close()
    finally:
        holder.kill()
        holder.wait()
    StoreWriter(tmp_path, "run0", claim_shard=None).close()


def test_a_rerun_records_each_skip_once(tmp_path):
    # before: a rerun into a store with skips duplicated 7 of 19 skip rows
    rows = [{"image_id": "a", "stage": "load", "reason": "unreadable"},
            {"image_id": "b", "stage": "method:rollout", "reason": "start_layer beyond depth"}]
    StoreWriter(tmp_path, "run0").write_skips("k1", [dict(r) for r in rows])
    again = StoreWriter(tmp_path, "run0")
    again.write_skips("k2", [dict(r) for r in rows] + [{"image_id": "c", "stage": "load", "reason": "empty"}])
    again.write_skips("k2", [dict(rows[0])])
    got = connect(tmp_path).execute("SELECT image_id, stage, reason FROM skips ORDER BY ALL").fetchall()
    assert got == [("a", "load", "unreadable"), ("b", "method:rollout", "start_layer beyond depth"),
                   ("c", "load", "empty")]


def test_a_store_written_before_commit_records_still_reads_and_resumes(tmp_path):
    """Older stores mark a batch by its metrics part; opening one for writing records what it holds."""
    writer = StoreWriter(tmp_path, "old")
    writer.write_batch("k1", {"metrics": [{"image_id": "a", "method": "m", "protocol": "report"}],
                              "images": [{"image_id": "a"}]})
    shutil.rmtree(tmp_path / "commits")
    (tmp_path / "images" / "run_id=old" / "part-k2.parquet").write_bytes(
        (tmp_path / "images" / "run_id=old" / "part-k1.parquet").read_bytes())  # no metrics twin: uncommitted
    assert connect(tmp_path).execute("SELECT count(*) FROM images").fetchone()[0] == 1
    again = StoreWriter(tmp_path, "old", clean_orphans=False)
    again.write_batch("k3", {"metrics": [{"image_id": "b", "method": "m", "protocol": "report"}]})
    assert sorted(r[0] for r in connect(tmp_path).execute("SELECT image_id FROM metrics").fetchall()) == ["a", "b"]
    assert connect(tmp_path).execute("SELECT count(*) FROM images").fetchone()[0] == 1


CRAFTED = "zz\", (SELECT read_text('/etc/hostname')) AS \"leak"


def _crafted_store(root: Path) -> Path:
    """A store whose metrics part carries a column named like SQL (a store is data; anyone can write one)."""
    from store.schema import to_table

    table = to_table("metrics", [{"run_id": "r", "image_id": "a", "method": "m", "protocol": "report", "iou": 0.5}])
    table = table.append_column(CRAFTED, pa.array([0.25]))
    part = root / "metrics" / "run_id=r" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(table, part)
    return root


def test_a_crafted_column_name_never_becomes_sql(tmp_path):
    # before: the leaderboard built `AS "n_{c}"` from the column name and ran the SQL inside it
    from store import query as q

    con = connect(_crafted_store(tmp_path))
    assert CRAFTED in q.metrics_column_types(con)          # the column is there ...
    known = q.metric_columns(con)
    assert CRAFTED not in known and "iou" in known         # ... but is never offered as a metric
    f = q.RowFilter(run_id="r", protocol="report")
    board = q.leaderboard(con, f, known, known)
    assert "leak" not in board.columns and board["images"].tolist() == [1]
    facets = q.run_facets(con, "r")
    assert CRAFTED not in facets["stats"]
    with pytest.raises(q.QueryError):                       # asked for by name (a URL), it is refused
        q.leaderboard(con, f, [CRAFTED], [*known, CRAFTED])


def test_quoted_identifiers_stay_identifiers():
    from store.query import quote

    assert quote('a"b') == '"a""b"'
    import duckdb

    con = duckdb.connect()
    assert con.execute(f"SELECT 1 AS {quote(CRAFTED)}").df().columns.tolist() == [CRAFTED]

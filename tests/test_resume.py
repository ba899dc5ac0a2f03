"""Crash safety: a run killed with SIGKILL mid-way, then rerun, equals an uninterrupted run — nothing lost,
nothing duplicated."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.query import connect

REPO = Path(__file__).resolve().parents[1]
VITLENS = str(Path(sys.executable).with_name("vitlens"))
METHODS = "raw_attention,rollout,gradcam"


def _cmd(voc_mini, out, extra=()):
    return [VITLENS, "compute", "--voc-root", str(voc_mini), "--out", str(out), "--random-init", "--model",
            "vit_tiny_patch16_224", "--methods", METHODS, "--batch-size", "1", "--workers", "0", *extra]


def committed_batches(out: Path) -> int:
    """How many batches ``out`` holds committed: their commit records (skip records aside)."""
    return sum(1 for p in out.glob("commits/run_id=*/*.json") if "-skips-" not in p.name)


def kill_after_commits(cmd: list[str], out: Path, commits: int) -> int:
    """Start ``cmd``, SIGKILL it once ``out`` holds ``commits`` committed batches, and return how many were
    committed when it died."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline and committed_batches(out) < commits:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return committed_batches(out)


def _rows(out):
    con = connect(out)
    rows = con.execute("""SELECT image_id, method, protocol, target_class, iou, f1, pixel_accuracy
                          FROM metrics ORDER BY ALL""").fetchall()
    heat = con.execute("SELECT image_id, method, data FROM heatmaps ORDER BY ALL").fetchall()
    images = con.execute("SELECT image_id FROM images ORDER BY ALL").fetchall()
    return rows, heat, images


@pytest.mark.slow
def test_sigkill_midway_then_rerun_equals_an_uninterrupted_run(voc_mini, tmp_path):
    reference = tmp_path / "reference"
    subprocess.run(_cmd(voc_mini, reference), check=True, capture_output=True, timeout=600, cwd=REPO)

    crashed = tmp_path / "crashed"
    committed = kill_after_commits(_cmd(voc_mini, crashed), crashed, 3)
    assert 3 <= committed < 10, "the kill must land mid-run"

    again = subprocess.run(_cmd(voc_mini, crashed), check=True, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert f"{committed} already done" in " ".join(again.stdout.split())
    got, want = _rows(crashed), _rows(reference)
    assert got[0] == want[0]  # metrics: same keys, same values, no duplicates
    assert got[1] == want[1]  # heatmaps
    assert got[2] == want[2]  # images
    # a leftover of the killed batch may still lie on disk (cleaned once stale), but no reader sees it


def _small(voc_mini, out, **kw):
    from compute.runner import RunConfig

    return RunConfig(**{**dict(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                               methods="raw_attention", batch_size=4, num_workers=0, device="cpu", limit=4), **kw})


def test_images_part_of_a_batch_that_never_committed_is_written_again(voc_mini, tmp_path, monkeypatch):
    """A batch dies after its images part, before its metrics part (the commit marker); the rerun, with other
    batches (other part names), must still write those images rows: the orphan part does not count."""
    from compute.runner import run
    from store.writer import StoreWriter

    write = StoreWriter._write

    def no_space_for_metrics(self, table, name, rows):
        if table == "metrics":
            raise OSError(28, "No space left on device")
        return write(self, table, name, rows)

    monkeypatch.setattr(StoreWriter, "_write", no_space_for_metrics)
    with pytest.raises(OSError):
        run(_small(voc_mini, tmp_path))
    assert len(list(tmp_path.glob("images/run_id=*/part-*.parquet"))) == 1  # the orphan
    assert StoreWriter(tmp_path, _small(voc_mini, tmp_path).run_id(), clean_orphans=False).images_done() == set()
    monkeypatch.setattr(StoreWriter, "_write", write)

    again = run(_small(voc_mini, tmp_path, batch_size=2))
    assert again.images == 4
    con = connect(tmp_path)
    assert con.execute("SELECT count(*), count(DISTINCT image_id) FROM images").fetchone() == (4, 4)
    assert con.execute("SELECT count(DISTINCT image_id) FROM metrics "
                       "WHERE image_id NOT IN (SELECT image_id FROM images)").fetchone()[0] == 0


def test_run_manifest_describes_the_whole_run_across_sessions(voc_mini, tmp_path):
    """Run-level counts come from what the store holds, timings add up over sessions, methods are every
    session's; each session keeps its own report. A rerun with nothing to do leaves the run's counts as they
    were (it used to set them to 0 images)."""
    import json

    from compute.runner import run

    first = run(_small(voc_mini, tmp_path, limit=3))
    second = run(_small(voc_mini, tmp_path, limit=3, methods="raw_attention,rollout"))
    third = run(_small(voc_mini, tmp_path, limit=3, methods="rollout"))
    assert (first.rows, second.rows, third.rows, third.images, third.already_done) == (6, 6, 0, 0, 3)

    con = connect(tmp_path)
    assert con.execute("SELECT images, skipped FROM runs").fetchall() == [(3, 0)]
    (path,) = tmp_path.glob("runs/*.json")
    m = json.loads(path.read_text())
    assert m["counts"] == {"images": 3, "skipped": 0, "already_done": 3, "rows": 12}
    assert [r["counts"]["images"] for r in m["reports"]] == [3, 3, 0]
    assert [r["counts"]["rows"] for r in m["reports"]] == [6, 6, 0]
    assert m["timings"]["total_seconds"] == pytest.approx(sum(r["timings"]["total_seconds"] for r in m["reports"]),
                                                          abs=0.01)
    assert m["methods"] == ["raw_attention", "rollout"] and m["config"]["methods"] == "raw_attention,rollout"
    assert m["created"] == m["sessions"][0]["started"] and len(m["sessions"]) == 3
    assert [s["config"]["methods"] for s in m["sessions"]] == ["raw_attention", "raw_attention,rollout", "rollout"]
    assert con.execute("SELECT seconds FROM runs").fetchone()[0] == pytest.approx(m["timings"]["total_seconds"])

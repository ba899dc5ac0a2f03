"""Sharded runs: deterministic split, the union of n shards equals one unsharded run, torchrun/SLURM env."""

from __future__ import annotations

import pytest

from compute.runner import RunConfig, parse_shard, run
from store.query import connect

COLS = "image_id, method, protocol, target_class, iou, f1, pixel_accuracy, relevance_mass, roc_auc"


def _config(voc_mini, out, **kw):
    return RunConfig(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                     methods="raw_attention,gradcam", batch_size=3, num_workers=0, **kw)


def test_union_of_three_shards_equals_a_single_run(voc_mini, tmp_path):
    single = run(_config(voc_mini, tmp_path / "single"))
    counts = [run(_config(voc_mini, tmp_path / "sharded", shard=f"{i}/3")).images for i in range(3)]
    assert counts == [4, 3, 3] and single.images == 10
    a = connect(tmp_path / "single").execute(f"SELECT {COLS} FROM metrics ORDER BY ALL").fetchall()
    b = connect(tmp_path / "sharded").execute(f"SELECT {COLS} FROM metrics ORDER BY ALL").fetchall()
    assert a == b and len(a) == 40
    con = connect(tmp_path / "sharded")
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 10
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1  # one run, three shard reports
    assert len(list((tmp_path / "sharded" / "runs").glob("*/shard-*-of-3.json"))) == 3
    # the run's own counts are the whole run's, whichever shard finished last
    assert con.execute("SELECT images, skipped FROM runs").fetchone() == (10, 0)


def test_the_same_shard_always_gets_the_same_images(voc_mini, tmp_path):
    run(_config(voc_mini, tmp_path / "a", shard="1/4"))
    run(_config(voc_mini, tmp_path / "b", shard="1/4"))
    q = "SELECT DISTINCT image_id FROM metrics ORDER BY 1"
    assert connect(tmp_path / "a").execute(q).fetchall() == connect(tmp_path / "b").execute(q).fetchall()


def test_shard_spec_and_environment(monkeypatch):
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "a/b", "3"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(var, raising=False)
    assert parse_shard(None) is None
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")
    assert parse_shard(None) == (3, 8)  # no MIN/STEP in the environment: 0 and 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse_shard(None) == (1, 2)  # torchrun first
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT")
    assert parse_shard(None) is None


def _slurm(monkeypatch, task, count, low=None, high=None, step=None):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for var, value in (("ID", task), ("COUNT", count), ("MIN", low), ("MAX", high), ("STEP", step)):
        if value is None:
            monkeypatch.delenv(f"SLURM_ARRAY_TASK_{var}", raising=False)
        else:
            monkeypatch.setenv(f"SLURM_ARRAY_TASK_{var}", str(value))
    return parse_shard(None)


@pytest.mark.parametrize("ids, step", [
    (range(0, 4), None),    # --array=0-3
    (range(1, 5), None),    # --array=1-4: ids 1..4
    (range(1, 5), 1),
    (range(0, 7, 2), 2),    # --array=0-6:2: ids 0, 2, 4, 6, COUNT 4
    (range(5, 14, 4), 4),   # --array=5-13:4
    (range(0, 16), None),   # --array=0-15%4 (the throttle changes nothing)
])
def test_slurm_array_ids_map_to_their_position(monkeypatch, ids, step):
    ids = list(ids)
    got = [_slurm(monkeypatch, t, len(ids), ids[0], ids[-1], step) for t in ids]
    assert got == [(i, len(ids)) for i in range(len(ids))]


@pytest.mark.parametrize("task, count, low, high, step", [
    (5, 3, 1, 7, None),   # --array=1,5,7
    (7, 3, 1, 7, 1),
    (5, 3, 1, 7, 3),      # a step that does not reach MAX in COUNT ids
    (3, 2, 3, 7, None),   # a resubmission of tasks 3 and 7
    (4, 4, 1, 4, 2),      # not on the step's grid
    (9, 4, 0, None, 1),   # beyond COUNT ids
    (3, 4, 0, 3, 0),      # no step
])
def test_slurm_array_without_a_derivable_position_asks_for_shard(monkeypatch, task, count, low, high, step):
    with pytest.raises(ValueError, match="--shard i/n"):
        _slurm(monkeypatch, task, count, low, high, step)


def test_slurm_array_of_one_task_and_torchrun_first(monkeypatch):
    assert _slurm(monkeypatch, 5, 1, 5, 5) is None  # a single task: no sharding
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    _slurm_env = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
                  "SLURM_ARRAY_TASK_MAX": "7"}  # an irregular array does not matter under torchrun
    for k, v in _slurm_env.items():
        monkeypatch.setenv(k, v)
    assert parse_shard(None) == (1, 2)
    assert parse_shard("0/3") == (0, 3)  # nor with an explicit --shard


def test_bf16_precision_is_its_own_run_and_stays_close_to_fp32(voc_mini, tmp_path):
    fp32 = run(_config(voc_mini, tmp_path / "s", limit=4))
    bf16 = run(_config(voc_mini, tmp_path / "s", limit=4, precision="bf16"))
    assert fp32.run_id != bf16.run_id and bf16.images == 4
    con = connect(tmp_path / "s")
    drift = con.execute("""SELECT avg(abs(a.target_value - b.target_value) / abs(a.target_value)) FROM metrics a
                           JOIN metrics b USING (image_id, method, protocol) WHERE a.run_id = ? AND b.run_id = ?""",
                        [fp32.run_id, bf16.run_id]).fetchone()[0]
    assert 0 < drift < 0.05  # bf16 logits move a little, not a lot
    with pytest.raises(ValueError, match="precision"):
        run(_config(voc_mini, tmp_path / "t", precision="fp8"))


def _write_sessions(args) -> None:
    from store.writer import StoreWriter

    out, worker = args
    writer = StoreWriter(out, "run0", clean_orphans=False)
    for k in range(15):
        writer.write_manifest({"sessions": [{"worker": worker, "k": k}]})


def test_concurrent_processes_lose_no_manifest_session(tmp_path):
    """Shards (and Ray actors) of one run start together and each merge a session entry into the same run
    manifest: the run's lock keeps every entry."""
    import json
    import multiprocessing as mp

    with mp.get_context("fork").Pool(6) as pool:
        pool.map(_write_sessions, [(str(tmp_path), w) for w in range(6)])
    sessions = json.loads((tmp_path / "runs" / "run0.json").read_text())["sessions"]
    assert sorted((s["worker"], s["k"]) for s in sessions) == [(w, k) for w in range(6) for k in range(15)]

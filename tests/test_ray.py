"""The Ray backend: a pool of actors writes the very store a single local run writes, reruns add nothing,
runs resume across backends, and a worker's input error reaches the caller as the project's own error."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own, on copy

import torch  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from compute.cli import app  # noqa: E402
from compute.distributed import _plan, run_ray  # noqa: E402
from compute.models import ModelError  # noqa: E402
from compute.runner import RunConfig, run  # noqa: E402
from store.query import connect  # noqa: E402
from store.schema import TABLES  # noqa: E402

METHODS = "raw_attention,gradcam"
KEY = "image_id, method, protocol, target_class"
VALUES = "iou, f1, pixel_accuracy, relevance_mass, roc_auc, target_value, confidence"
cli = CliRunner()


def _config(voc_mini, out, **kw) -> RunConfig:
    return RunConfig(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                     methods=METHODS, batch_size=3, device="cpu", num_workers=0, **kw)


def _parts(out: Path) -> dict[str, list[str]]:
    return {t: sorted(p.name for p in out.glob(f"{t}/run_id=*/part-*.parquet")) for t in TABLES}


def _tables(out: Path) -> tuple[list, list, list]:
    """Every metric column but the timing, the heatmaps and the image rows, in a fixed order."""
    con = connect(out)
    metrics = con.execute("SELECT * EXCLUDE (seconds) FROM metrics ORDER BY image_id, method, protocol").fetchall()
    heatmaps = con.execute("SELECT image_id, method, target_class, data FROM heatmaps ORDER BY ALL").fetchall()
    images = con.execute("SELECT * FROM images ORDER BY image_id").fetchall()
    return metrics, heatmaps, images


@pytest.fixture(scope="module")
def local_ray():
    """A small private Ray instance: 2 CPUs (one per actor), no dashboard, a small object store."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=150 * 2**20,
             logging_level="WARNING")
    yield
    ray.shutdown()


@contextlib.contextmanager
def _one_thread():
    """Local runs on one thread, as each actor here (2 CPUs, 2 actors): the thread count changes the order of
    float sums, and the comparisons below are exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single(voc_mini, tmp_path_factory) -> Path:
    """The reference: one local run."""
    out = tmp_path_factory.mktemp("single")
    with _one_thread():
        assert run(_config(voc_mini, out)).images == 10
    return out


@pytest.mark.slow
def test_two_actors_write_the_store_of_a_single_run_and_a_rerun_adds_nothing(voc_mini, single, local_ray, tmp_path):
    out = tmp_path / "ray"
    seen = []
    summary = run_ray(_config(voc_mini, out), num_workers=2, progress=lambda done, total: seen.append((done, total)))
    assert (summary.images, summary.rows, summary.skipped, summary.already_done) == (10, 40, 0, 0)
    assert seen[-1] == (10, 10) and len(seen) == 4  # one report per batch of 3, 3, 3, 1

    assert _parts(out) == _parts(single)  # the very part files of the local run: same batches, same names
    got, want = _tables(out), _tables(single)
    assert got[0] == want[0] and len(got[0]) == 40  # metrics: same keys, same values
    assert got[1] == want[1] and len(got[1]) == 20  # heatmaps
    assert got[2] == want[2] and len(got[2]) == 10  # images
    con = connect(out)
    assert con.execute("SELECT count(*) FROM (SELECT DISTINCT image_id, method, protocol FROM metrics)").fetchone()[0] == 40
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1

    manifest = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert len(manifest["sessions"]) == 2  # one per actor, none lost to a concurrent write
    assert manifest["counts"] == {"images": 10, "skipped": 0, "already_done": 0, "rows": 40}
    details = json.loads(next((out / "runs" / summary.run_id).glob("ray-*.json")).read_text())
    assert details["plan"]["workers"] == 2 and sum(a["images"] for a in details["actors"].values()) == 10

    before = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    again = run_ray(_config(voc_mini, out), num_workers=2)
    assert (again.images, again.rows, again.already_done) == (0, 0, 10)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == before  # nothing rewritten
    assert _tables(out) == want
    assert json.loads(next((out / "runs").glob("*.json")).read_text())["counts"]["already_done"] == 10


@pytest.mark.slow
def test_the_ray_command_resumes_a_partial_local_run(voc_mini, single, local_ray, tmp_path, capsys):
    out = tmp_path / "mixed"
    with _one_thread():
        assert run(_config(voc_mini, out, shard="0/2")).images == 5  # half the images, committed locally
    capsys.readouterr()
    # in this process (not CliRunner's short-lived streams, which Ray's loggers would keep writing to)
    app(["compute", "--voc-root", str(voc_mini), "--out", str(out), "--random-init", "--model", "vit_tiny_patch16_224",
         "--methods", METHODS, "--batch-size", "3", "--device", "cpu", "--backend", "ray", "--ray-workers", "2"],
        standalone_mode=False)
    line = " ".join(capsys.readouterr().out.split())
    assert "5 images × 2 methods" in line and "5 already done" in line  # committed work is not redone
    # Every row once. Images explained in other batches than in the single run: equal up to float rounding.
    q = f"SELECT {KEY}, {VALUES} FROM metrics ORDER BY ALL"
    got, want = connect(out).execute(q).fetchall(), connect(single).execute(q).fetchall()
    assert [r[:4] for r in got] == [r[:4] for r in want] and len(got) == 40
    assert [r[4:] for r in got] == [pytest.approx(r[4:], abs=1e-6) for r in want]
    assert connect(out).execute("SELECT image_id FROM images ORDER BY 1").fetchall() == \
        connect(single).execute("SELECT image_id FROM images ORDER BY 1").fetchall()


@pytest.mark.slow
def test_an_input_error_in_a_worker_is_raised_as_the_projects_error(voc_mini, local_ray, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read weights file"):
        run_ray(replace(_config(voc_mini, tmp_path / "out", weights=str(bad)), random_init=False), num_workers=1)


class _FakeRay:
    def __init__(self, cpus, gpus, nodes=1):
        self.res = {"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}
        self.nodes_ = [{"Alive": True, "Resources": {k: v / nodes for k, v in self.res.items()}}] * nodes

    def cluster_resources(self):
        return self.res

    def nodes(self):
        return self.nodes_


def test_the_pool_takes_one_gpu_per_actor_or_a_share_of_the_cpus(tmp_path):
    cfg = RunConfig(out=str(tmp_path))
    gpu = _plan(_FakeRay(cpus=64, gpus=8), cfg, None, local=True)
    assert (gpu["device"], gpu["workers"], gpu["num_gpus"], gpu["num_cpus"], gpu["threads"]) == ("cuda", 8, 1, 1, 7)
    cpu = _plan(_FakeRay(cpus=64, gpus=8), RunConfig(out=str(tmp_path), device="cpu"), 4, local=True)
    assert (cpu["device"], cpu["num_gpus"], cpu["num_cpus"]) == ("cpu", 0, 16)
    assert _plan(_FakeRay(cpus=32, gpus=0, nodes=4), cfg, 2, local=False)["num_cpus"] == 8  # never above a node
    with pytest.raises(ValueError, match="no GPU"):
        _plan(_FakeRay(cpus=8, gpus=0), RunConfig(out=str(tmp_path), device="cuda"), 2, local=True)
    with pytest.raises(ValueError, match="one worker per GPU"):
        _plan(_FakeRay(cpus=8, gpus=2), cfg, 3, local=True)
    with pytest.raises(ValueError, match="CPU"):
        _plan(_FakeRay(cpus=2, gpus=0), cfg, 3, local=True)


def test_the_command_refuses_an_unknown_backend_and_ray_options_without_ray(voc_mini, tmp_path):
    base = ["compute", "--voc-root", str(voc_mini), "--out", str(tmp_path), "--random-init"]
    result = cli.invoke(app, [*base, "--backend", "spark"])
    assert result.exit_code == 2 and "unknown --backend" in result.output
    result = cli.invoke(app, [*base, "--ray-workers", "2"])
    assert result.exit_code == 2 and "--ray-workers applies to --backend ray" in result.output

"""Deferred methods (attention flow's max-flows) finish in the background while the main loop explains the next
batches: the store ends up exactly as with everything run in line; a failure there is a skip; a kill loses
only what was not committed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compute.methods import REGISTRY, Method
from compute.runner import Job, RunConfig, collate, run
from store.query import connect
from tests.test_resume import kill_after_commits

REPO = Path(__file__).resolve().parents[1]
COLS = ("image_id, method, protocol, target_class, target_value, pred_class, iou, f1, pixel_accuracy, threshold, "
        "relevance_mass, relevance_rank, pointing_game, roc_auc")


def _config(voc_mini, out, methods="raw_attention,attention_flow,gradcam", **kw):
    return RunConfig(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                     methods=methods, batch_size=4, num_workers=0, **kw)


def _store(out):
    con = connect(out)
    return (con.execute(f"SELECT {COLS} FROM metrics ORDER BY ALL").fetchall(),
            con.execute("SELECT image_id, method, data FROM heatmaps ORDER BY ALL").fetchall(),
            con.execute("SELECT image_id, top_classes FROM images ORDER BY ALL").fetchall())


def _in_line(config) -> None:
    """The same job with no background: every method finishes inside its batch."""
    job = Job(config)
    assert job.ctx.background is None
    job.write_manifest()
    idx = job.indices
    for i in range(0, len(idx), config.batch_size):
        job.process(collate([job.decoded[k] for k in idx[i:i + config.batch_size]]))
    job.finish()


def test_background_run_equals_the_in_line_run(voc_mini, tmp_path):
    summary = run(_config(voc_mini, tmp_path / "background"))
    _in_line(_config(voc_mini, tmp_path / "in_line"))
    got, want = _store(tmp_path / "background"), _store(tmp_path / "in_line")
    assert got == want
    assert len(got[0]) == 10 * 3 * 2 and summary.rows == 60
    assert summary.stages["in the background"] > 0  # attention flow did run there
    parts = {p.name for p in (tmp_path / "background" / "metrics").glob("run_id=*/part-*.parquet")}
    assert len(parts) == 3 + 3  # per batch: the main commit and attention flow's own


def test_rerun_after_background_run_adds_nothing(voc_mini, tmp_path):
    run(_config(voc_mini, tmp_path / "s"))
    again = run(_config(voc_mini, tmp_path / "s"))
    assert again.images == 0 and again.already_done == 10 and again.rows == 0


class _LateFailure(Method):
    """A method whose background part fails (the way a solver could)."""

    name = "late_failure"
    requires = frozenset({"attn"})
    summary = "fails in the background"

    def deferred(self, cap):
        n = cap.attn[0].shape[0]

        def solve():
            raise RuntimeError(f"solver broke on {n} images")

        return solve

    def __call__(self, cap):
        return self.deferred(cap)()


def test_background_failure_is_recorded_as_skips_and_loses_nothing_else(voc_mini, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "late_failure", _LateFailure)
    summary = run(_config(voc_mini, tmp_path / "s", methods="raw_attention,late_failure"))
    con = connect(tmp_path / "s")
    assert con.execute("SELECT count(*) FROM metrics WHERE method = 'raw_attention'").fetchone()[0] == 20
    assert con.execute("SELECT count(*) FROM metrics WHERE method = 'late_failure'").fetchone()[0] == 0
    skips = con.execute("SELECT DISTINCT image_id, stage, reason FROM skips").fetchall()
    assert len(skips) == 10
    assert all(s == "method:late_failure" and "RuntimeError: solver broke" in r for _, s, r in skips)
    assert summary.rows == 20


@pytest.mark.slow
def test_sigkill_with_background_work_pending_then_rerun_equals_an_uninterrupted_run(voc_mini, tmp_path):
    def cmd(out):
        return [str(Path(sys.executable).with_name("vitlens")), "compute", "--voc-root", str(voc_mini), "--out",
                str(out), "--random-init", "--model", "vit_tiny_patch16_224", "--methods",
                "raw_attention,attention_flow", "--batch-size", "1", "--workers", "0"]

    subprocess.run(cmd(tmp_path / "reference"), check=True, capture_output=True, timeout=600, cwd=REPO)
    crashed = tmp_path / "crashed"
    assert kill_after_commits(cmd(crashed), crashed, 4) < 20, "the kill must land mid-run"
    subprocess.run(cmd(crashed), check=True, capture_output=True, timeout=600, cwd=REPO)
    assert _store(crashed) == _store(tmp_path / "reference")


def test_attention_flow_deferred_part_equals_the_method(tiny_vit, images):
    from compute.capture import capture
    from compute.methods import get_method

    m = get_method("attention_flow")
    cap = capture(tiny_vit, images, m.requires)
    later = m.deferred(cap)
    assert callable(later)
    torch.testing.assert_close(later(), m(cap).cpu(), rtol=0, atol=0)
    assert get_method("rollout").deferred(cap) is None  # methods run in line unless they say otherwise


class _Flaky(Method):
    """Fails while ``broken`` (a transient error, e.g. out of memory), then works: raw attention of block 0."""

    name = "flaky"
    requires = frozenset({"attn"})
    summary = "fails once"
    broken = True

    def __call__(self, cap):
        if _Flaky.broken:
            raise RuntimeError("out of memory")
        return cap.to_grid(cap.attn[0].mean(dim=1)[:, 0])


def test_rerun_that_completes_a_batch_keeps_the_rows_committed_before(voc_mini, tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "flaky", _Flaky)
    monkeypatch.setattr(_Flaky, "broken", True)
    first = run(_config(voc_mini, tmp_path / "s", methods="raw_attention,flaky"))
    assert first.rows == 20
    monkeypatch.setattr(_Flaky, "broken", False)
    second = run(_config(voc_mini, tmp_path / "s", methods="raw_attention,flaky"))
    assert second.rows == 20
    con = connect(tmp_path / "s")
    counts = dict(con.execute("SELECT method, count(*) FROM metrics GROUP BY method").fetchall())
    assert counts == {"raw_attention": 20, "flaky": 20}
    assert con.execute("SELECT count(*) FROM heatmaps").fetchone()[0] == 20


class _Stuck(Method):
    """A deferred method whose background part takes a minute: in this thread (``pool=False``) or, as attention
    flow's max-flows do, in :mod:`compute.layers.flow_pool`'s process pool (``pool=True``)."""

    name = "stuck"
    requires = frozenset({"attn"})
    summary = "a long background part"
    pool = False

    def deferred(self, cap):
        import time

        def solve():
            if _Stuck.pool:
                from compute.layers import flow_pool

                flow_pool._pool(2).submit(time.sleep, 60).result()
            else:
                time.sleep(60)
            return torch.zeros(cap.attn[0].shape[0], *cap.grid)

        return solve

    def __call__(self, cap):
        return self.deferred(cap)()


def _interrupted(voc_mini: str, out: str, pool: str) -> None:
    """Entry point of the child process of the test below: a run interrupted after its first batch, while the
    background part of that batch still runs."""
    import time

    REGISTRY["stuck"] = _Stuck
    _Stuck.pool = pool == "pool"

    def interrupt(done, total):
        time.sleep(1.0)  # the background part has started (and, with the pool, its worker process)
        raise KeyboardInterrupt

    try:
        run(_config(voc_mini, out, methods="raw_attention,stuck", limit=2, device="cpu"), progress=interrupt)
    except KeyboardInterrupt:
        print("interrupted", flush=True)


@pytest.mark.parametrize("where", ["thread", "pool"])
def test_an_interrupted_run_exits_without_waiting_for_the_background(voc_mini, tmp_path, where):
    """Ctrl-C (or any error) while a deferred method runs: the process exits at once, not when that work ends
    (the interpreter used to join the background thread, and wait for the max-flow worker processes), and the
    batch's committed rows stay."""
    import time

    code = "import sys; from tests.test_background import _interrupted; _interrupted(*sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(voc_mini), str(tmp_path), where], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        t0 = time.monotonic()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        waited = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert line.strip() == "interrupted"
    assert waited < 15, f"the process took {waited:.0f} s to exit after the interrupt"
    con = connect(tmp_path)
    assert con.execute("SELECT method, count(*) FROM metrics GROUP BY ALL").fetchall() == [("raw_attention", 4)]

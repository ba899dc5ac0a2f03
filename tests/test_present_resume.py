"""Resuming an ``--explain present`` run: done-ness is per (image, method, target, protocol), so a rerun computes
exactly the rows that are missing — a failed pass of one class, a failed top-1 pass, a deferred method's part
lost between two commits — and never a row that is already committed."""

from __future__ import annotations

import sys
import time

import pytest

from compute.data.voc import VOCSegmentation
from compute.methods import REGISTRY, Method
from compute.runner import RunConfig, run
from compute.runner import job as job_module
from store.query import connect

# one single-class image, two with two classes: per batch the passes are top-1 (3 images), the first present
# class (3 images) and the second present class (2 images)
IDS = ["2012_s00023", "2012_s00294", "2012_s00582"]
METHODS = "flaky_present,late_present"
COLS = ("image_id, method, protocol, target_kind, target_class, target_label, target_value, pred_class, confidence, "
        "gt_target, iou, f1, pixel_accuracy, relevance_mass, roc_auc")


class _Flaky(Method):
    """Raw attention of block 0 that fails (a transient error) on the calls listed in ``fail_calls``."""

    name = "flaky_present"
    requires = frozenset({"attn"})
    summary = "fails on chosen calls"
    fail_calls: frozenset = frozenset()
    calls = 0

    def __call__(self, cap):
        type(self).calls += 1
        if type(self).calls in type(self).fail_calls:
            raise RuntimeError("CUDA out of memory")
        return cap.to_grid(cap.attn[0].mean(dim=1)[:, 0])


class _Late(Method):
    """A deferred method (finished in the background, committed as a part of its own per pass): the class
    token's attention in the last block. Every pass after the first (the top-1 pass of a one-batch run: the
    present classes' passes) waits ``delay`` seconds first."""

    name = "late_present"
    requires = frozenset({"attn"})
    summary = "finishes in the background"
    delay = 0.0
    passes = 0

    def deferred(self, cap):  # called on the main thread, pass by pass
        a = cap.attn[-1].detach().float().cpu().mean(dim=1)[:, 0]
        type(self).passes += 1
        wait = type(self).delay if type(self).passes > 1 else 0.0

        def solve():
            time.sleep(wait)
            return cap.to_grid(a)

        return solve

    def __call__(self, cap):
        return self.deferred(cap)()


def _config(voc_mini, out) -> RunConfig:
    return RunConfig(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                     methods=METHODS, batch_size=3, num_workers=0, device="cpu", explain="present")


def _run(voc_mini, out):
    return run(_config(voc_mini, out), dataset=VOCSegmentation(voc_mini, ids=IDS))


def _rounded(rows: list[tuple]) -> list[tuple]:
    """Floats to 5 decimals: a rerun explains the images left in batches of another size, and CPU kernels
    may then differ in the last bits of a float32 (1e-7), which is not a resume error."""
    return [tuple(round(v, 5) if isinstance(v, float) else v for v in r) for r in rows]


def _store(out, methods=METHODS):
    con = connect(out)
    ms = methods.split(",")
    return (_rounded(con.execute(f"SELECT {COLS} FROM metrics WHERE list_contains(?, method) ORDER BY ALL",
                                 [ms]).fetchall()),
            con.execute("SELECT image_id, method, target_kind, target_class, data FROM heatmaps "
                        "WHERE list_contains(?, method) ORDER BY ALL", [ms]).fetchall(),
            con.execute("SELECT image_id, top_classes FROM images ORDER BY ALL").fetchall())


def _duplicates(out) -> list:
    con = connect(out)
    return (con.execute("SELECT image_id, method, target_class, protocol, count(*) FROM metrics "
                        "GROUP BY ALL HAVING count(*) > 1").fetchall()
            + con.execute("SELECT image_id, method, target_class, count(*) FROM heatmaps "
                          "GROUP BY ALL HAVING count(*) > 1").fetchall()
            + con.execute("SELECT image_id, count(*) FROM images GROUP BY ALL HAVING count(*) > 1").fetchall())


@pytest.fixture(autouse=True)
def _methods(monkeypatch):
    monkeypatch.setitem(REGISTRY, "flaky_present", _Flaky)
    monkeypatch.setitem(REGISTRY, "late_present", _Late)
    monkeypatch.setattr(_Flaky, "calls", 0)
    monkeypatch.setattr(_Flaky, "fail_calls", frozenset())
    monkeypatch.setattr(_Late, "delay", 0.0)
    monkeypatch.setattr(_Late, "passes", 0)


@pytest.fixture(scope="module")
def reference(voc_mini, tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(REGISTRY, "flaky_present", _Flaky)
        mp.setitem(REGISTRY, "late_present", _Late)
        summary = _run(voc_mini, out)
    assert summary.rows == 2 * (3 + 5)  # per method: 3 report rows (top-1), 5 clean rows (one per class)
    assert _duplicates(out) == []
    return _store(out)


@pytest.mark.parametrize("fail_calls", [{1}, {3}], ids=["top-1 pass", "second class pass"])
def test_rerun_after_a_failed_pass_computes_exactly_the_missing_rows(voc_mini, tmp_path, reference, monkeypatch,
                                                                    fail_calls):
    """Call 1 of the in-line method is the top-1 pass (report rows), call 3 the second present class's pass.
    Before the fix, a lost report pass made the rerun redo (and duplicate) every clean row, and a lost second
    class was never computed (its image counted as done for clean once the first class was committed)."""
    out = tmp_path / "s"
    monkeypatch.setattr(_Flaky, "fail_calls", frozenset(fail_calls))
    first = _run(voc_mini, out)
    missing = (3 if 1 in fail_calls else 0) + (2 if 3 in fail_calls else 0)  # flaky_present rows lost
    assert first.rows == 16 - missing
    con = connect(out)
    skips = con.execute("SELECT image_id, stage, reason FROM skips ORDER BY ALL").fetchall()
    assert len(skips) == missing and all(s == "method:flaky_present" for _, s, _ in skips)
    if 3 in fail_calls:  # the skip of a present class's pass names the class
        assert sum("(explaining person)" in r for _, _, r in skips) == 2

    monkeypatch.setattr(_Flaky, "fail_calls", frozenset())
    second = _run(voc_mini, out)
    assert second.rows == missing  # exactly the missing (image, method, target, protocol) rows
    assert second.images == (3 if 1 in fail_calls else 2) and second.already_done == 3 - second.images
    assert _duplicates(out) == []
    assert _store(out) == reference  # same keys, same values, same heatmaps and images as uninterrupted

    third = _run(voc_mini, out)
    assert (third.rows, third.images, third.already_done) == (0, 0, 3)


def test_crash_between_two_deferred_parts_then_rerun_equals_an_uninterrupted_run(voc_mini, tmp_path, reference,
                                                                                 monkeypatch):
    """A deferred method commits one part per pass; the run dies after the top-1 pass's part (its report rows)
    and before the present classes' parts. The rerun adds only the clean rows of that method."""
    out = tmp_path / "s"
    commit, calls = job_module.commit_deferred, []

    def dies_on_second(deferred, finished, ctx):
        calls.append(deferred.key)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return commit(deferred, finished, ctx)

    monkeypatch.setattr(job_module, "commit_deferred", dies_on_second)
    with pytest.raises(OSError):
        _run(voc_mini, out)
    monkeypatch.setattr(job_module, "commit_deferred", commit)
    con = connect(out)
    assert con.execute("SELECT protocol, count(*) FROM metrics WHERE method = 'late_present' "
                       "GROUP BY ALL").fetchall() == [("report", 3)]

    again = _run(voc_mini, out)
    assert again.rows == 5 and again.images == 3
    assert _duplicates(out) == []
    assert _store(out) == reference


def _killable(voc_mini: str, out: str) -> None:
    """Entry point of the SIGKILL test's child process: the run of :func:`_run`, the deferred method slow on
    the present classes' passes (so that the kill lands between two of its parts)."""
    REGISTRY["flaky_present"] = _Flaky
    REGISTRY["late_present"] = _Late
    _Late.delay = 60.0
    _run(voc_mini, out)


@pytest.mark.slow
def test_sigkill_between_two_deferred_parts_then_rerun_equals_an_uninterrupted_run(voc_mini, tmp_path, reference):
    from tests.test_resume import kill_after_commits

    out = tmp_path / "killed"
    code = "import sys; from tests.test_present_resume import _killable; _killable(*sys.argv[1:])"
    cmd = [sys.executable, "-c", code, str(voc_mini), str(out)]
    # commits: the batch's main part, then the deferred method's top-1 part; the next one waits 60 s
    assert kill_after_commits(cmd, out, 2) == 2
    con = connect(out)
    assert con.execute("SELECT method, protocol, count(*) FROM metrics GROUP BY ALL ORDER BY ALL").fetchall() == [
        ("flaky_present", "clean", 5), ("flaky_present", "report", 3), ("late_present", "report", 3)]

    again = _run(voc_mini, out)
    assert again.rows == 5
    assert _duplicates(out) == []
    assert _store(out) == reference

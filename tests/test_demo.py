"""`vitlens demo --no-dashboard --small` end to end in a subprocess, checked through the store's DuckDB views."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compute.data.synthetic import CLASSES

pytestmark = pytest.mark.slow

# of the 24 conflict images, those the model classifies as their cue's class (measured: 23)
FOLLOWED_AT_LEAST = 20


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    # The same folder as the other slow tests' prepare(): whichever runs first generates and trains.
    out = tmp_path_factory.getbasetemp() / "demo-small"
    proc = subprocess.run([sys.executable, "-m", "compute.cli", "demo", "--no-dashboard", "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_demo_prints_the_store_and_the_accuracies(demo_run):
    out, proc = demo_run
    assert f"store: {(out / 'store').resolve()}" in proc.stdout
    assert "vitlens dashboard --store" in proc.stdout
    assert "accuracy:" in proc.stderr and "conflict" in proc.stderr
    assert "median cue-mass ratio" in proc.stdout


def test_demo_store_holds_every_method_on_every_group(demo_run):
    from compute.methods import parse_methods
    from store.query import connect

    out, _ = demo_run
    con = connect(out / "store")
    methods = {m.key for m in parse_methods("all")}
    got = con.execute("SELECT method, image_group, count(DISTINCT image_id) AS n FROM metrics "
                      "WHERE protocol = 'clean' GROUP BY ALL").fetchall()
    assert {m for m, _, _ in got} == methods
    assert {(g, n) for _, g, n in got} == {("aligned", 24), ("conflict", 24), ("no_cue", 24)}
    assert con.execute("SELECT count(*) FROM skips").fetchone()[0] == 0
    # cue columns: present on images with a cue, NULL mass (area 0) on those without
    rows = con.execute("SELECT image_group, count(*) FILTER (WHERE cue_mass IS NULL), "
                       "count(*) FILTER (WHERE object_mass IS NULL), max(cue_area) FROM metrics "
                       "WHERE method = 'rollout' GROUP BY ALL").fetchall()
    by = {g: (nul, onul, area) for g, nul, onul, area in rows}
    assert by["aligned"][0] == 0 and by["conflict"][0] == 0 and 0 < by["conflict"][2] < 0.05
    assert by["no_cue"][2] == 0 and by["no_cue"][0] == 48
    # class names are the synthetic ones, on both the ground-truth and the prediction side
    names = {r[0] for r in con.execute("SELECT DISTINCT gt_classes FROM metrics").fetchall()}
    assert names == set(CLASSES)
    preds = {r[0] for r in con.execute("SELECT DISTINCT pred_label FROM metrics").fetchall()}
    assert preds <= set(CLASSES)
    # images carry the cue mask and the meta the dashboard can outline and filter by
    img = con.execute("SELECT count(*), count(cue_png), count(meta) FROM images").fetchone()
    assert img == (72, 72, 72)
    meta = json.loads(con.execute("SELECT meta FROM images WHERE image_id = 'conflict_0000'").fetchone()[0])
    assert meta["group"] == "conflict" and meta["cue_class"] in CLASSES and meta["cue_class"] != meta["object_class"]
    run = con.execute("SELECT model, weights, split FROM runs").fetchall()
    assert len(run) == 1 and run[0][0] == "test_vit" and run[0][2] == "val"


def test_demo_rerun_reuses_data_model_and_store(demo_run):
    out, _ = demo_run
    weights = out / "model" / "demo_vit.safetensors"
    before = weights.stat().st_mtime_ns
    proc = subprocess.run([sys.executable, "-m", "compute.cli", "demo", "--no-dashboard", "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing the trained model" in proc.stderr
    assert "0 images" in proc.stdout and "already done" in proc.stdout
    assert weights.stat().st_mtime_ns == before


def test_vitlens_compute_explains_the_demo_data_with_the_demo_checkpoint(demo_run, tmp_path):
    from typer.testing import CliRunner

    from compute.cli import app
    from store.query import connect

    out, _ = demo_run
    res = CliRunner().invoke(app, [
        "compute", "--voc-root", str(out / "data"), "--split", "val", "--model", "test_vit", "--img-size", "96",
        "--weights", str(out / "model" / "demo_vit.safetensors"), "--methods", "rollout", "--limit", "4",
        "--workers", "0", "--out", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output
    con = connect(tmp_path / "store")
    labels = {r[0] for r in con.execute("SELECT DISTINCT pred_label FROM metrics").fetchall()}
    assert labels <= set(CLASSES)
    assert con.execute("SELECT count(*) FROM metrics WHERE cue_mass IS NOT NULL").fetchone()[0] == 8


def test_demo_prints_the_shortcut_tables(demo_run):
    from compute.report import SHORTCUT_TITLES

    _, proc = demo_run
    text = " ".join(proc.stdout.split())
    for name in ("context_share", "bg_gap", "method_trust", "cue_trust"):
        assert SHORTCUT_TITLES[name] in text


def test_removing_the_cue_takes_away_the_decisions_it_made(demo_run):
    """The ground truth the demo plants, measured by the ``no_cue`` variant: on conflict images the model
    classified by their cue, removing the cue takes the decision away. The demo model has learnt the shapes as
    well as the cue, so without its cue a conflict image falls back on its shape, whose class is never the cue's:
    the top-1 changes on (nearly) every one and the cue class's probability falls on every one. ``no_cue`` images
    have no cue to remove: their variant is not made, and says why."""
    from store.query import connect

    out, _ = demo_run
    con = connect(out / "store")
    rows = con.execute("""
        SELECT json_extract_string(i.meta, '$.group') AS grp, c.same_top1, c.score, c.orig_score, c.reason,
               m.pred_label = json_extract_string(i.meta, '$.cue_class') AS by_cue
        FROM counterfactuals c JOIN images i USING (run_id, image_id)
        JOIN (SELECT DISTINCT run_id, image_id, protocol, pred_label FROM metrics) m USING (run_id, image_id, protocol)
        WHERE c.variant = 'no_cue' AND c.protocol = 'clean'""").df()
    followed = rows[(rows.grp == "conflict") & rows.by_cue.fillna(False).astype(bool)]
    assert len(followed) >= FOLLOWED_AT_LEAST  # the shortcut stays: the cue wins over the shape
    assert (~followed.same_top1.astype(bool)).mean() >= 0.9
    assert (followed.score < followed.orig_score).all()
    assert (followed.score / followed.orig_score).median() < 0.25
    no_cue = rows[rows.grp == "no_cue"]
    assert len(no_cue) == 24 and no_cue.score.isna().all() and (no_cue.reason == "cue mask is empty").all()

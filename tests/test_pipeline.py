"""End to end on real VOC images: CLI → runner → Parquet store → DuckDB, bad input, resume without duplicates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from compute.cli import app
from compute.methods import REGISTRY
from compute.runner import RunConfig, run
from store.query import connect, method_summary
from tests.test_voc import make_broken_tree

REPO = Path(__file__).resolve().parents[1]
cli = CliRunner()
FAST = ["--random-init", "--model", "vit_tiny_patch16_224", "--workers", "0"]


@pytest.fixture(scope="module")
def store(voc_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("vitlens")), "compute", "--voc-root", str(voc_mini), "--methods",
         "raw_attention,rollout,gradcam,agcam", "--out", str(out), "--batch-size", "4", *FAST],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "10 images × 4 methods" in result.stdout
    return out


def test_store_holds_ten_images_times_four_methods_with_metrics_in_unit_range(store):
    con = connect(store)
    n, images, methods = con.execute(
        "SELECT count(*), count(DISTINCT image_id), count(DISTINCT method) FROM metrics WHERE protocol = ?",
        ["report"]).fetchone()
    assert (n, images, methods) == (40, 10, 4)
    for col in ("iou", "f1", "pixel_accuracy", "precision", "recall"):
        lo, hi, nulls = con.execute(f"SELECT min({col}), max({col}), count(*) - count({col}) FROM metrics "
                                    "WHERE protocol = 'report'").fetchone()
        assert 0.0 <= lo <= hi <= 1.0 and nulls == 0, col
    # clean scores a row only when the explained class maps to a VOC class present in the image
    assert con.execute("SELECT count(*) FROM metrics WHERE protocol = 'clean' "
                       "AND (iou IS NULL) <> (gt_target IS NULL)").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM heatmaps").fetchone()[0] == 40
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 10
    h, w = con.execute("SELECT DISTINCT height, width FROM heatmaps").fetchone()
    assert (h, w) == (14, 14)
    row = con.execute("SELECT model, pred_label, confidence, target_class = pred_class FROM metrics LIMIT 1").fetchone()
    assert row[0] == "vit_tiny_patch16_224" and row[1] and 0 < row[2] <= 1 and row[3]
    assert len(method_summary(con, protocol="clean")) == 4
    (run_json,) = list((store / "runs").glob("*.json"))
    assert '"timm"' in run_json.read_text()


def test_report_and_clean_protocols_differ_only_where_void_matters(store):
    con = connect(store)
    diff, scored = con.execute("""
        SELECT count(*) FILTER (WHERE r.gt_area <> c.gt_area), count(c.gt_area)
        FROM metrics r JOIN metrics c USING (image_id, method)
        WHERE r.protocol = 'report' AND c.protocol = 'clean'""").fetchone()
    assert diff == scored  # every VOC mask has void pixels: counting them as object changes the object area


def test_stored_scores_are_the_reference_scores_of_the_stored_maps(store):
    """The batch job scores every map of an image at once; each row must still be what the one-map reference
    ``score`` gives for that row's own map, mask and ground truth (maps are stored as float16, hence the
    tolerance on what depends on the map)."""
    import io

    import numpy as np
    from PIL import Image

    from compute.data.voc import VOC_CLASSES
    from compute.metrics import score
    from store.schema import decode_heatmap

    con = connect(store)
    rows = con.execute("""
        SELECT m.method, m.protocol, m.gt_target, m.iou, m.pred_area, m.gt_area, m.roc_auc, m.relevance_mass,
               h.data, h.height, h.width, i.mask_png
        FROM metrics m JOIN heatmaps h USING (image_id, method) JOIN images i USING (image_id)
        WHERE m.iou IS NOT NULL""").fetchall()
    assert len(rows) >= 40  # every report row, and the clean rows whose class is in the image
    for method, protocol, gt_target, iou, pred_area, gt_area, auc, mass, data, h, w, png in rows:
        mask = np.asarray(Image.open(io.BytesIO(png)))
        classes = None if protocol == "report" else [VOC_CLASSES.index(c) for c in gt_target.split(",")]
        want = score(decode_heatmap(data, h, w), mask, protocol, gt_classes=classes)
        where = f"{method} {protocol} {gt_target}"
        assert gt_area == pytest.approx(want["gt_area"], rel=1e-6), where  # stored as float32
        assert iou == pytest.approx(want["iou"], abs=0.03), where
        assert pred_area == pytest.approx(want["pred_area"], abs=0.03), where
        assert auc == pytest.approx(want["roc_auc"], abs=0.01), where
        assert (mass is None) == (want["relevance_mass"] is None), where
        if mass is not None:
            assert mass == pytest.approx(want["relevance_mass"], abs=0.01), where


def test_rerun_into_the_same_store_adds_no_rows(store, voc_mini):
    before = connect(store).execute("SELECT count(*) FROM metrics").fetchone()[0]
    result = cli.invoke(app, ["compute", "--voc-root", str(voc_mini), "--methods", "raw_attention,rollout,gradcam,agcam",
                              "--out", str(store), *FAST])
    assert result.exit_code == 0, result.output
    assert "10 already done" in " ".join(result.output.split())
    con = connect(store)
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == before
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 10


def test_adding_a_method_later_computes_only_that_method(store, voc_mini):
    summary = run(RunConfig(out=str(store), voc_root=str(voc_mini), model="vit_tiny_patch16_224",
                            random_init=True, methods="raw_attention,rollout(head_fusion=max)", num_workers=0))
    assert summary.images == 10 and summary.rows == 20  # 10 images × 1 new method × 2 protocols
    con = connect(store)
    assert con.execute("SELECT count(DISTINCT method) FROM metrics").fetchone()[0] == 5
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 10


def test_corrupt_image_and_missing_mask_are_skipped_with_reasons(voc_mini, tmp_path):
    root, good = make_broken_tree(voc_mini, tmp_path / "voc")
    out = tmp_path / "store"
    result = cli.invoke(app, ["compute", "--voc-root", str(root), "--methods", "raw_attention", "--out", str(out),
                              "--batch-size", "2", *FAST])
    assert result.exit_code == 0, result.output
    con = connect(out)
    skipped = dict(con.execute("SELECT image_id, reason FROM skips").fetchall())
    assert set(skipped) == {"corrupt", "nomask", "badsize"}
    assert "mask file missing" in skipped["nomask"]
    assert sorted(r[0] for r in con.execute("SELECT DISTINCT image_id FROM metrics").fetchall()) == sorted(good)


@pytest.mark.parametrize("args,expected", [
    (["--methods", "nonsense"], "unknown method 'nonsense'; valid: agcam"),
    (["--model", "vit_nonexistent_patch16"], "unknown model 'vit_nonexistent_patch16'"),
    (["--model", "resnet50"], "not supported"),
    (["--protocol", "strict"], "unknown protocol 'strict'"),
])
def test_bad_names_exit_nonzero_with_the_valid_choices(voc_mini, tmp_path, args, expected):
    base = ["compute", "--voc-root", str(voc_mini), "--out", str(tmp_path), "--random-init", "--workers", "0"]
    if "--model" not in args:
        base += ["--model", "vit_tiny_patch16_224"]
    result = cli.invoke(app, base + args)
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_missing_voc_root_names_the_expected_layout(tmp_path):
    result = cli.invoke(app, ["compute", "--voc-root", str(tmp_path / "absent"), "--out", str(tmp_path), *FAST])
    assert result.exit_code == 2
    assert "VOCdevkit/VOC2012" in " ".join(result.output.split())


def test_weights_and_random_init_together_are_refused(voc_mini, tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"")
    result = cli.invoke(app, ["compute", "--voc-root", str(voc_mini), "--out", str(tmp_path), "--weights", str(f), *FAST])
    assert result.exit_code == 2 and "not both" in result.output


def test_methods_command_lists_every_registered_method():
    result = cli.invoke(app, ["methods"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in REGISTRY:
        assert name in result.output


def test_part_files_are_plain_parquet_with_the_schema(store):
    from store.schema import METRICS

    part = next((store / "metrics").glob("run_id=*/part-*.parquet"))
    assert pq.read_schema(part).names == METRICS.names
    assert not list(store.rglob("*.tmp"))




def test_heatmap_codec_keeps_three_digits_at_any_magnitude():
    import numpy as np

    from store.schema import decode_heatmap, encode_heatmap

    rng = np.random.default_rng(0)
    for magnitude in (1e-9, 1e-3, 1.0, 1e4):
        m = (rng.standard_normal((14, 14)) * magnitude).astype(np.float32)
        back = decode_heatmap(encode_heatmap(m), 14, 14)
        assert np.allclose(back, m, rtol=1e-3, atol=1e-3 * np.abs(m).max())
    zeros = np.zeros((3, 4), np.float32)
    assert (decode_heatmap(encode_heatmap(zeros), 3, 4) == 0).all()
    legacy = np.arange(6, dtype="<f2").tobytes()  # unscaled float16 payload
    assert decode_heatmap(legacy, 2, 3).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_heatmaps_encoded_together_are_the_stored_format_byte_for_byte():
    """A float32 scale (the largest magnitude; 1 for an all-zero or non-finite map), then the map divided by it
    as little-endian float16: written out here per map, against the batch job's encoding of a whole stack."""
    import numpy as np

    from store.schema import encode_heatmaps

    rng = np.random.default_rng(1)
    maps = (rng.standard_normal((6, 5, 7)) * np.array([1e-8, 1e-3, 1, 1e3, 0, 1])[:, None, None]).astype(np.float32)
    maps[5, 0, 0] = np.nan
    for m, got in zip(maps, encode_heatmaps(maps)):
        peak = float(np.max(np.abs(m)))
        scale = peak if np.isfinite(peak) and peak > 0 else 1.0
        assert got == np.float32(scale).astype("<f4").tobytes() + (m / np.float32(scale)).astype("<f2").tobytes()
    assert encode_heatmaps(np.zeros((2, 0, 3), np.float32)) == [np.float32(1).tobytes()] * 2


def test_uncommitted_parts_are_invisible_and_removed_only_once_stale(store, tmp_path):
    import os
    import shutil
    import time

    import store.writer as writer_mod
    from store.writer import StoreWriter

    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    run_dir = next((copy / "heatmaps").glob("run_id=*"))
    part = next(run_dir.glob("part-*.parquet"))
    orphan = run_dir / "part-orphan.parquet"
    shutil.copy(part, orphan)  # a heatmaps part whose metrics twin never landed
    before = connect(store).execute("SELECT count(*) FROM heatmaps").fetchone()[0]
    assert connect(copy).execute("SELECT count(*) FROM heatmaps").fetchone()[0] == before
    run_id = run_dir.name.split("=", 1)[1]
    StoreWriter(copy, run_id)
    assert orphan.exists()  # young: another process of the run may be mid-batch
    old = time.time() - writer_mod.ORPHAN_AGE - 5
    os.utime(orphan, (old, old))
    assert StoreWriter(copy, run_id).removed_orphans == 1 and not orphan.exists()

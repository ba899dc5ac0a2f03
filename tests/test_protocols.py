"""The two scoring protocols: the report's reading (void counted as object, all objects as ground truth) and
the clean one (void excluded, the explained class's own mask), on hand-made masks and end to end."""

from __future__ import annotations

import numpy as np
import pytest

from compute.data.classmap import load_classmap
from compute.data.voc import VOC_CLASSES, VOCSegmentation
from compute.metrics import score
from compute.models import LoadedModel
from compute.runner import RunConfig, run
from compute.runner.rows import ground_truth
from store.query import connect
from tests.conftest import make_vit

VOC = {n: i for i, n in enumerate(VOC_CLASSES)}
FAST = dict(model="vit_tiny_patch16_224", random_init=True, methods="raw_attention", batch_size=5, num_workers=0,
            device="cpu")


def object_with_void_band():
    """A 40x40 mask: a dog square 10..29, wrapped in a 2-pixel void band (as VOC draws object outlines)."""
    mask = np.zeros((40, 40), np.uint8)
    mask[8:32, 8:32] = 255
    mask[10:30, 10:30] = VOC["dog"]
    return mask


def test_void_band_counts_against_the_map_under_report_only():
    mask = object_with_void_band()
    heat = np.zeros((40, 40), np.float32)
    heat[10:30, 10:30] = 1.0                                    # exactly the object's interior
    rep, clean = score(heat, mask, "report"), score(heat, mask, "clean")
    assert clean["iou"] == 1.0 and clean["pixel_accuracy"] == 1.0 and clean["roc_auc"] == 1.0
    assert rep["iou"] == pytest.approx(400 / 576)               # the band is "object" the map missed
    assert rep["pixel_accuracy"] == pytest.approx(1 - 176 / 1600)
    assert rep["recall"] < clean["recall"] and rep["roc_auc"] < 1.0 and rep["relevance_rank"] < 1.0
    assert rep["gt_area"] == pytest.approx(576 / 1600) and clean["gt_area"] == pytest.approx(400 / 1424)
    assert rep["relevance_mass"] == clean["relevance_mass"] == 1.0


def test_a_map_on_the_void_band_is_rewarded_by_report_and_ignored_by_clean():
    mask = object_with_void_band()
    heat = np.zeros((40, 40), np.float32)
    heat[8:32, 8:32] = 1.0                                      # object plus its band
    rep, clean = score(heat, mask, "report"), score(heat, mask, "clean")
    assert rep["iou"] == 1.0 and clean["iou"] == 1.0            # band pixels are not scored under clean
    heat[:] = 0.0
    heat[8:10, 8:32] = 1.0                                      # only a strip of band
    assert score(heat, mask, "report")["precision"] == 1.0      # "found the object" by finding void
    assert score(heat, mask, "clean")["precision"] == 0.0       # nothing left on valid pixels


def test_clean_scores_against_the_explained_class_report_against_all_objects():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:20, 5:20] = VOC["dog"]
    mask[22:38, 22:38] = VOC["person"]
    heat = np.zeros((40, 40), np.float32)
    heat[5:20, 5:20] = 1.0                                      # the map is on the dog
    clean = score(heat, mask, "clean", gt_classes=[VOC["dog"]])
    everything = score(heat, mask, "clean")
    rep = score(heat, mask, "report", gt_classes=[VOC["dog"]])  # report ignores the class
    assert clean["iou"] == 1.0 and clean["roc_auc"] == 1.0 and clean["pointing_game"] == 1.0
    assert everything["iou"] == rep["iou"] == pytest.approx(225 / (225 + 256))
    assert score(heat, mask, "clean", gt_classes=[VOC["person"]])["iou"] == 0.0
    nothing = score(heat, mask, "clean", gt_classes=[])         # the explained class is not in the image
    assert all(v is None for v in nothing.values())


def test_ground_truth_rule_per_row():
    cmap = load_classmap()
    present = [VOC["dog"], VOC["person"]]
    golden, tabby, suit = 207, 281, 834
    assert ground_truth("report", present, golden, None, cmap, VOC_CLASSES) == (None, "dog,person")
    assert ground_truth("clean", present, golden, None, cmap, VOC_CLASSES) == ([VOC["dog"]], "dog")
    assert ground_truth("clean", present, tabby, None, cmap, VOC_CLASSES) == ([], None)   # absent class
    assert ground_truth("clean", present, suit, None, cmap, VOC_CLASSES) == ([], None)    # maps to nothing
    assert ground_truth("clean", present, None, VOC["person"], cmap, VOC_CLASSES) == ([VOC["person"]], "person")
    assert ground_truth("clean", present, golden, None, None, VOC_CLASSES) == (None, "dog,person")  # no map


@pytest.fixture(scope="module")
def present_store(voc_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocols")
    summary = run(RunConfig(out=str(out), voc_root=str(voc_mini), explain="present", **FAST))
    return out, summary


@pytest.mark.slow
def test_explain_present_gives_one_clean_row_per_present_class(present_store, voc_mini):
    out, summary = present_store
    con = connect(out)
    cmap = load_classmap()
    ds = VOCSegmentation(voc_mini)
    want = {ds.ids[i]: [VOC_CLASSES[c] for c in cmap.explainable(ds[i].classes_present)] for i in range(len(ds))}
    rows = con.execute("SELECT image_id, list(target_label ORDER BY target_label), list(DISTINCT target_kind), "
                       "bool_and(target_label = gt_target), bool_and(target_class BETWEEN 1 AND 20), count(iou) "
                       "FROM metrics WHERE protocol = 'clean' GROUP BY image_id").fetchall()
    assert {r[0]: r[1] for r in rows} == {k: sorted(v) for k, v in want.items()}
    assert any(len(v) > 1 for v in want.values())               # the sample has multi-object images
    for _, labels, kinds, label_is_gt, voc_index, scored in rows:
        assert kinds == ["voc_lse"] and label_is_gt and voc_index and scored == len(labels)
    report = con.execute("SELECT count(*), count(DISTINCT image_id), min(target_kind), max(target_kind), "
                         "count(gt_target) FROM metrics WHERE protocol = 'report'").fetchone()
    assert report == (10, 10, "logit", "logit", 10)
    assert summary.rows == 10 + sum(len(v) for v in want.values())
    # correct is the image's top-1 judged by the map: NULL when it maps to no VOC class
    for pred, classes, correct in con.execute("SELECT pred_class, gt_classes, correct FROM metrics").fetchall():
        voc = cmap.voc_of(pred)
        assert correct == (None if voc is None else VOC_CLASSES[voc] in classes.split(","))


@pytest.mark.slow
def test_explain_present_rerun_adds_nothing(present_store, voc_mini):
    out, _ = present_store
    again = run(RunConfig(out=str(out), voc_root=str(voc_mini), explain="present", **FAST))
    assert again.rows == 0 and again.already_done == 10


@pytest.mark.slow
def test_top1_clean_rows_use_the_mapped_class_mask_or_stay_unscored(voc_mini, tmp_path):
    # class 404 (airliner) maps to aeroplane: images with an aeroplane get its mask, the others no score
    run(RunConfig(out=str(tmp_path), voc_root=str(voc_mini), target="class:404", **FAST))
    con = connect(tmp_path)
    rows = con.execute("SELECT gt_classes, gt_target, iou, roc_auc FROM metrics WHERE protocol = 'clean'").fetchall()
    assert len(rows) == 10
    with_plane = [r for r in rows if "aeroplane" in r[0].split(",")]
    assert with_plane and all(r[1] == "aeroplane" and r[2] is not None for r in with_plane)
    assert all(r[1] is None and r[2] is None and r[3] is None for r in rows if r not in with_plane)


@pytest.mark.slow
def test_confidence_filter_at_compute_time_skips_with_a_reason(voc_mini, tmp_path):
    probe = tmp_path / "probe"
    run(RunConfig(out=str(probe), voc_root=str(voc_mini), protocols=("report",), **FAST))
    conf = sorted(r[0] for r in connect(probe).execute("SELECT confidence FROM metrics").fetchall())
    cut = (conf[4] + conf[5]) / 2
    out = tmp_path / "filtered"
    summary = run(RunConfig(out=str(out), voc_root=str(voc_mini), protocols=("report",), min_confidence=cut,
                            **FAST))
    con = connect(out)
    kept = con.execute("SELECT count(*), min(confidence) FROM metrics").fetchone()
    assert kept[0] == 5 and kept[1] > cut and summary.images == 5 and summary.skipped == 5
    reasons = con.execute("SELECT stage, reason FROM skips").fetchall()
    assert len(reasons) == 5 and all(s == "confidence" and "--min-confidence" in r for s, r in reasons)
    assert con.execute("SELECT count(*) FROM images").fetchone()[0] == 5
    assert RunConfig(out="x", min_confidence=cut).run_id() == RunConfig(out="x").run_id()


@pytest.mark.slow
def test_class_aware_options_are_refused_with_the_reason(voc_mini, tmp_path):
    model = make_vit(img_size=224, num_classes=10).float()
    loaded = LoadedModel(model=model, name="tiny10", weights="random", mean=(0.5,) * 3, std=(0.5,) * 3,
                         input_size=(224, 224), interpolation="bicubic", labels=None)
    ds = VOCSegmentation(voc_mini, limit=1)
    with pytest.raises(ValueError, match="10 classes.*unsupported"):
        run(RunConfig(out=str(tmp_path / "a"), explain="present", **{**FAST, "random_init": False}),
            dataset=ds, loaded=loaded)
    with pytest.raises(ValueError, match="add clean"):
        run(RunConfig(out=str(tmp_path / "b"), explain="present", protocols=("report",), **FAST), dataset=ds)
    # without --explain present, a 10-class head still runs: correct stays NULL, clean uses all objects
    summary = run(RunConfig(out=str(tmp_path / "c"), **{**FAST, "random_init": False}), dataset=ds, loaded=loaded)
    assert any("unsupported" in n for n in summary.notes)
    con = connect(tmp_path / "c")
    rows = con.execute("SELECT protocol, correct, gt_target, iou FROM metrics ORDER BY protocol").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("clean", None), ("report", None)]
    assert rows[0][2] == rows[1][2] == ",".join(VOC_CLASSES[c] for c in ds[0].classes_present)
    assert rows[0][3] is not None


def test_run_ids_of_default_runs_are_unchanged_and_new_options_get_their_own():
    base = RunConfig(out="x")
    assert "explain" not in base.identity() and "faithfulness" not in base.identity()
    assert RunConfig(out="x", explain="present").run_id() != base.run_id()
    assert RunConfig(out="x", faithfulness=True).run_id() != base.run_id()

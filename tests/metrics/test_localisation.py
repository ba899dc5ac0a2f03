"""The Otsu pipeline's scores on hand-made cases and against scikit-learn / scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import threshold_otsu
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

from compute.metrics import PreparedMap, localisation_scores, score


@pytest.mark.parametrize("value", [0.0, 1.0, 7.5])
def test_constant_maps_mark_nothing(value):
    mask = np.zeros((10, 10), np.uint8)
    mask[:5] = 8
    out = score(np.full((5, 5), value, np.float32), mask, "clean")
    assert out["threshold"] is None and out["pred_area"] == 0.0
    assert out["iou"] == 0.0 and out["f1"] == 0.0 and out["precision"] == 0.0 and out["recall"] == 0.0
    assert out["pixel_accuracy"] == pytest.approx(0.5)        # the background half is right


def test_empty_map_and_empty_mask_is_undefined_not_perfect():
    out = localisation_scores(np.zeros((4, 4), bool), np.zeros((4, 4), bool))
    assert out["iou"] is None and out["f1"] is None and out["recall"] is None
    assert out["pixel_accuracy"] == 1.0 and out["precision"] == 0.0


def test_all_void_mask_scores_nothing_under_clean():
    out = score(np.eye(4, dtype=np.float32), np.full((8, 8), 255, np.uint8), "clean")
    assert out["iou"] is None and out["pixel_accuracy"] is None and out["gt_area"] is None


@pytest.mark.parametrize("seed", range(3))
def test_scores_equal_sklearn_over_valid_pixels(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((20, 30)) < 0.4
    gt = rng.random((20, 30)) < 0.3
    valid = rng.random((20, 30)) < 0.85
    out = localisation_scores(pred, gt, valid)
    assert out["iou"] == pytest.approx(jaccard_score(gt[valid], pred[valid]))
    assert out["f1"] == pytest.approx(f1_score(gt[valid], pred[valid]))
    assert out["pixel_accuracy"] == pytest.approx(accuracy_score(gt[valid], pred[valid]))


def test_otsu_threshold_is_skimages_on_the_normalised_upsampled_map():
    rng = np.random.default_rng(4)
    heat = rng.random((6, 6)).astype(np.float32) * 3 - 1
    prep = PreparedMap(heat, (48, 48))
    assert prep.threshold == pytest.approx(threshold_otsu(prep.normalised, nbins=256))
    assert np.array_equal(prep.binary, prep.normalised > prep.threshold)
    assert prep.normalised.min() == 0.0 and prep.normalised.max() == 1.0

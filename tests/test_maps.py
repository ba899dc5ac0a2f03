"""store.maps (NumPy only) reads a map as compute does: upsampling, normalisation, Otsu and ground truth equal
to the compute functions (torch, scikit-image) that score the maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from compute.metrics import localisation
from compute.metrics.batched import score_image
from store import maps

SHAPES = [((14, 14), (375, 500)), ((7, 9), (33, 20)), ((16, 16), (16, 16)), ((224, 224), (100, 150)),
          ((1, 5), (4, 9))]


@pytest.mark.parametrize("src,size", SHAPES)
def test_upsample_equals_torch_bilinear(src, size):
    m = np.random.default_rng(sum(src)).normal(size=src).astype(np.float32)
    m[0, 0] = np.nan
    scale = max(1.0, float(np.nanmax(np.abs(m))))
    assert np.abs(maps.upsample(m, size) - localisation.upsample(m, size)).max() <= 1e-6 * scale


@pytest.mark.parametrize("seed", range(6))
def test_normalised_map_and_otsu_equal_the_metrics(seed):
    rng = np.random.default_rng(seed)
    m = rng.gamma(1.0 + seed, size=(14, 14)).astype(np.float32)
    ours = maps.minmax_normalise(maps.upsample(m, (120, 90)))
    theirs = localisation.minmax_normalise(localisation.upsample(m, (120, 90)))
    assert np.abs(ours - theirs).max() <= 1e-6
    binary, t = maps.otsu_binarise(theirs)
    assert t == pytest.approx(float(threshold_otsu(theirs, nbins=256)), abs=1e-6)
    want, want_t = localisation.otsu_binarise(theirs)
    assert t == want_t and np.array_equal(binary, want)


def test_constant_map_has_no_threshold():
    binary, t = maps.otsu_binarise(maps.minmax_normalise(np.full((5, 5), 3.0)))
    assert t is None and not binary.any()


def test_ground_truth_is_the_one_compute_scores_with():
    mask = np.array([[0, 1, 255], [12, 12, 0], [255, 1, 15]], dtype=np.uint8)
    gt, valid = maps.ground_truth(mask, "report")
    assert gt.sum() == 7 and valid.all()                        # void counts as object under report
    gt, valid = maps.ground_truth(mask, "clean", [12])
    assert gt.tolist() == [[False] * 3, [True, True, False], [False] * 3] and (~valid).sum() == 2
    assert maps.ground_truth(mask, "clean")[0].sum() == 5
    with pytest.raises(ValueError):
        maps.ground_truth(mask, "other")
    assert localisation.ground_truth is maps.ground_truth


def test_batched_scores_follow_the_shared_ground_truth():
    rng = np.random.default_rng(1)
    mask = rng.choice(np.array([0, 3, 7, 255], dtype=np.uint8), size=(40, 30))
    heat = torch.from_numpy(rng.random((7, 7), dtype=np.float32))
    requests = [("report", None), ("clean", [3]), ("clean", None)]
    rows = score_image([heat], mask, requests)[0]
    prep = localisation.PreparedMap(heat, mask.shape)
    for (protocol, classes), row in zip(requests, rows):
        gt, valid = maps.ground_truth(mask, protocol, classes)
        want = localisation.localisation_scores(prep.binary, gt, valid)
        assert row["gt_area"] == pytest.approx(want["gt_area"]) and row["iou"] == pytest.approx(want["iou"])

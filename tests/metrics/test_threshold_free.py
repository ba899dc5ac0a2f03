"""Threshold-free localisation metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from compute.metrics import PreparedMap, score
from compute.metrics.threshold_free import THRESHOLD_FREE_COLUMNS, threshold_free_scores


def naive_rank_accuracy(values, gt, valid, draws=4000, seed=0):
    """Mean over random tie-breaks of |top-K ∩ mask| / K (K = |mask|), by brute force."""
    v, g = values[valid], gt[valid]
    k = int(g.sum())
    rng = np.random.default_rng(seed)
    hits = []
    for _ in range(draws):
        order = np.lexsort((rng.random(v.size), -v))  # by value descending, ties in random order
        hits.append(g[order[:k]].mean())
    return float(np.mean(hits))


def test_hand_computed_small_case():
    values = np.array([[1.0, 2.0], [3.0, -4.0]])
    gt = np.array([[True, False], [False, False]])
    out = threshold_free_scores(values, gt)
    assert out["relevance_mass"] == pytest.approx(1 / 6)      # positives 1+2+3, inside 1
    assert out["relevance_rank"] == 0.0                        # top-1 pixel (3) is not the object
    assert out["pointing_game"] == 0.0
    assert out["roc_auc"] == pytest.approx(1 / 3)             # 1 beats -4 only, of 3 negatives
    out = threshold_free_scores(values, ~gt)
    assert out["relevance_mass"] == pytest.approx(5 / 6)
    assert out["relevance_rank"] == pytest.approx(2 / 3)      # top-3 = {3, 2, 1}: 3 and 2 inside
    assert out["pointing_game"] == 1.0


def test_all_zero_and_constant_maps_score_chance_and_no_mass():
    gt = np.zeros((4, 5), bool)
    gt[:2, :2] = True                                          # K = 4 of n = 20
    for c in (0.0, 1.0, -2.5):
        out = threshold_free_scores(np.full((4, 5), c), gt)
        assert out["relevance_rank"] == pytest.approx(4 / 20)
        assert out["pointing_game"] == pytest.approx(4 / 20)
        assert out["roc_auc"] == pytest.approx(0.5)
        assert out["relevance_mass"] == (pytest.approx(4 / 20) if c > 0 else None)


def test_all_one_mask_and_empty_mask():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(6, 6))
    full = threshold_free_scores(values, np.ones((6, 6), bool))
    assert full["roc_auc"] is None                              # no background to separate from
    assert full["relevance_rank"] == 1.0 and full["pointing_game"] == 1.0 and full["relevance_mass"] == 1.0
    empty = threshold_free_scores(values, np.zeros((6, 6), bool))
    assert empty == {c: None for c in THRESHOLD_FREE_COLUMNS}


def test_a_mask_of_all_void_is_undefined_under_clean_and_all_object_under_report():
    mask = np.full((8, 8), 255, np.uint8)
    heat = np.arange(16, dtype=np.float32).reshape(4, 4)
    clean = score(heat, mask, "clean")
    assert all(clean[c] is None for c in THRESHOLD_FREE_COLUMNS + ("iou", "f1", "pixel_accuracy"))
    report = score(heat, mask, "report")                       # void counts as object: everything is object
    assert report["roc_auc"] is None and report["relevance_rank"] == 1.0 and report["pointing_game"] == 1.0


def test_pointing_game_ties_count_the_share_of_maxima_inside():
    values = np.array([[5.0, 5.0, 1.0], [5.0, 5.0, 0.0]])
    gt = np.array([[True, False, False], [False, False, True]])
    assert threshold_free_scores(values, gt)["pointing_game"] == pytest.approx(1 / 4)
    values[0, 0] = 6.0
    assert threshold_free_scores(values, gt)["pointing_game"] == 1.0
    values[0, 0], values[1, 2] = 0.0, 9.0
    assert threshold_free_scores(values, gt)["pointing_game"] == 1.0
    values[1, 2] = -1.0
    assert threshold_free_scores(values, gt)["pointing_game"] == 0.0


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_equals_sklearn_with_ties_and_void(seed):
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=(30, 40)), 1)             # rounding makes many ties
    gt = rng.random((30, 40)) < 0.3
    valid = rng.random((30, 40)) < 0.8
    out = threshold_free_scores(values, gt, valid)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(gt[valid], values[valid]), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_rank_accuracy_equals_the_expectation_over_tie_breaks(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, size=(6, 7)).astype(float)      # heavy ties
    gt = rng.random((6, 7)) < 0.4
    valid = rng.random((6, 7)) < 0.9
    got = threshold_free_scores(values, gt, valid)["relevance_rank"]
    assert got == pytest.approx(naive_rank_accuracy(values, gt & valid, valid), abs=0.02)


def test_rank_accuracy_without_ties_is_the_plain_top_k_share():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(20, 20))
    gt = rng.random((20, 20)) < 0.25
    k = int(gt.sum())
    top = np.argsort(-values.ravel())[:k]
    assert threshold_free_scores(values, gt)["relevance_rank"] == pytest.approx(gt.ravel()[top].mean())


def test_mass_uses_positive_values_on_valid_pixels_only():
    values = np.array([[2.0, 1.0], [-3.0, 7.0]])
    gt = np.array([[True, False], [True, False]])
    valid = np.array([[True, True], [True, False]])             # the 7 is void
    assert threshold_free_scores(values, gt, valid)["relevance_mass"] == pytest.approx(2 / 3)


def test_non_finite_values_count_as_zero_and_a_shared_sort_changes_nothing():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(10, 10)).astype(np.float32)
    gt = rng.random((10, 10)) < 0.3
    valid = rng.random((10, 10)) < 0.9
    a = threshold_free_scores(values, gt, valid)
    b = threshold_free_scores(values, gt, valid, order=np.argsort(values.ravel()))
    assert a == b
    bad = values.copy()
    bad[0, 0], bad[1, 1] = np.nan, np.inf
    fixed = values.copy()
    fixed[0, 0] = fixed[1, 1] = 0.0
    assert threshold_free_scores(bad, gt, valid) == threshold_free_scores(fixed, gt, valid)


def test_score_reads_the_bilinearly_upsampled_map_once_for_every_protocol():
    rng = np.random.default_rng(1)
    heat = rng.random((4, 4)).astype(np.float32)
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 6:24] = 12
    mask[3, 6:24] = 255
    prep = PreparedMap(heat, mask.shape)
    for protocol in ("report", "clean"):
        shared = score(heat, mask, protocol, prepared=prep)
        alone = score(heat, mask, protocol)
        assert shared == alone
        valid = mask != 255 if protocol == "clean" else np.ones_like(mask, bool)
        gt = (mask != 0) & valid
        assert alone["roc_auc"] == pytest.approx(roc_auc_score(gt[valid], prep.upsampled[valid]))

"""Scoring at the edges: finite maps whose range exceeds float32, non-finite cells, and randomized batched-vs-reference checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from compute.metrics import score
from compute.metrics.batched import score_image
from compute.metrics.localisation import minmax_normalise

REQUESTS = [("report", None), ("clean", None), ("clean", [8]), ("clean", [])]


def _huge_map() -> np.ndarray:
    # every value finite, but max - min (6e38) is beyond float32's largest value (3.4e38)
    return np.array([[-3e38, 0.0, 1e38], [3e38, 2e38, -1e38]], np.float32)


def test_minmax_of_a_finite_map_wider_than_float32_stays_in_unit_range():
    out = minmax_normalise(_huge_map())
    assert np.all(np.isfinite(out))
    assert out.min() == 0.0 and out.max() == 1.0
    np.testing.assert_allclose(out, [[0.0, 0.5, 4 / 6], [1.0, 5 / 6, 2 / 6]], rtol=1e-6)


@pytest.mark.parametrize("with_cue", [False, True])
def test_score_and_batched_agree_on_a_map_wider_than_float32(with_cue):
    """(No void pixel: the cue family's sums are read back from the sorted keys and normalised halved.)"""
    mask = np.array([[0, 8, 8], [8, 8, 0]], np.uint8)
    cue = np.array([[1, 1, 0], [0, 0, 1]], bool) if with_cue else None
    m = _huge_map()
    got = score_image([torch.from_numpy(m)], mask, REQUESTS, cue=cue)
    for r, (protocol, classes) in enumerate(REQUESTS):
        want = score(m, mask, protocol, gt_classes=classes, extra_masks={"cue": cue} if with_cue else None)
        if classes == []:
            continue
        assert want["threshold"] is not None and math.isfinite(want["threshold"])
        for col, v in want.items():
            g = got[0][r][col]
            assert (v is None) == (g is None), col
            if v is not None:
                assert g == pytest.approx(v, rel=1e-9, abs=1e-12), col


def _random_case(rng):
    h, w = (int(v) for v in rng.integers(1, 40, 2))
    mask = rng.choice([0, 3, 8, 15, 255], size=(h, w), p=rng.dirichlet(np.ones(5))).astype(np.uint8)
    maps = []
    for _ in range(4):
        mh, mw = (int(v) for v in rng.integers(1, 30, 2))              # any aspect ratio, incl. 1-pixel maps
        kind = int(rng.integers(0, 5))
        if kind == 0:
            m = rng.standard_normal((mh, mw))
        elif kind == 1:
            m = np.round(rng.random((mh, mw)), 1)                      # ties
        elif kind == 2:
            m = rng.standard_normal((mh, mw)) * 10.0 ** rng.choice([-44, -20, 20, 38])
        elif kind == 3:
            m = rng.random((mh, mw))
            m[rng.random((mh, mw)) < 0.2] = rng.choice([np.nan, np.inf, -np.inf])
        else:
            m = rng.random((h, w))                                     # already at the mask's size
        with np.errstate(over="ignore"):
            maps.append(m.astype(np.float32))
    cue = rng.random((h, w)) < 0.2 if rng.random() < 0.5 else None
    return mask, maps, cue


@pytest.mark.parametrize("seed", range(3))
def test_batched_equals_reference_on_random_sizes_and_maps(seed):
    rng = np.random.default_rng(1000 + seed)
    for _ in range(25):
        mask, maps, cue = _random_case(rng)
        got = score_image([torch.from_numpy(m) for m in maps], mask, REQUESTS, cue=cue)
        extra = {"cue": cue} if cue is not None else None
        for k, m in enumerate(maps):
            for r, (protocol, classes) in enumerate(REQUESTS):
                want = score(m, mask, protocol, gt_classes=classes, extra_masks=extra)
                for col, v in want.items():
                    g = got[k][r][col]
                    where = f"{mask.shape} map {m.shape} {protocol} {classes} {col}"
                    assert (v is None) == (g is None), where
                    if v is None:
                        continue
                    if col == "threshold":
                        assert g == v, where
                    else:
                        assert g == pytest.approx(v, rel=1e-9, abs=1e-12), where


def test_a_non_finite_cell_counts_as_zero_before_upsampling_not_around_it():
    from compute.metrics.localisation import PreparedMap, upsample

    heat = np.arange(1.0, 17.0, dtype=np.float32).reshape(4, 4)
    for bad in (np.nan, np.inf, -np.inf):
        m = heat.copy()
        m[1, 1] = bad
        zero = heat.copy()
        zero[1, 1] = 0.0
        want = upsample(zero, (32, 32))
        np.testing.assert_array_equal(upsample(m, (32, 32)), want)
        np.testing.assert_array_equal(upsample(torch.from_numpy(m), (32, 32)), want)
        np.testing.assert_array_equal(PreparedMap(m, (32, 32)).upsampled, want)
        # the batched scorer reads the map the same way
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 4:20] = 8
        got = score_image([torch.from_numpy(m)], mask, [("clean", None)])[0][0]
        ref = score(zero, mask, "clean")
        assert got["threshold"] == ref["threshold"]
        for col in ("iou", "relevance_mass", "relevance_rank", "roc_auc", "pointing_game"):
            assert got[col] == pytest.approx(ref[col], rel=1e-9, abs=1e-12), col

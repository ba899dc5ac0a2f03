"""The one-sort CPU path: thresholds found in the sorted pixels equal what a pass over the normalised maps
gives, and the scorer falls back to the tensor path where the sorted keys cannot serve."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.metrics import sorted_maps
from compute.metrics.sorted_maps import SortedMaps, first_value_where
from store.maps import OTSU_BINS, SPAN_LIMIT


def _rows(rng) -> np.ndarray:
    """Maps of every awkward kind, one per row, 300 pixels each."""
    n = 300
    rows = [
        rng.random(n),                                                   # plain
        rng.standard_normal(n) * 5,                                      # signed
        np.round(rng.random(n) * 6),                                     # few values, many ties
        1e6 + rng.random(n) * 1e-1,                                      # tiny span on a large offset
        -1e-3 - rng.random(n) * 1e-4,                                    # negative, tiny span
        rng.random(n) * 1e-40,                                           # subnormal
        np.where(rng.random(n) < 0.5, -3e38, 3e38) * rng.random(n),       # wider than float32: halved
        np.full(n, 2.5),                                                 # constant
        np.where(rng.random(n) < 0.5, -0.0, 0.0) + (rng.random(n) < 0.1),   # signed zeros
    ]
    return np.stack(rows).astype(np.float32)


def _normalisation(values: np.ndarray):
    """(min, max, h, lo, span) per row, ``[M, 1]`` float32, as the scorer derives them."""
    v_min, v_max = values.min(axis=1, keepdims=True), values.max(axis=1, keepdims=True)
    h = np.where(v_max.astype(np.float64) - v_min > SPAN_LIMIT, 0.5, 1.0).astype(np.float32)
    lo, hi = v_min * h, v_max * h
    span = hi - lo
    return v_min, v_max, h, lo, np.where(span > 0, span, np.float32(1.0))


def _normalised(values, h, lo, span) -> np.ndarray:
    return (values * h - lo) / span


@pytest.mark.parametrize("strict", [False, True])
def test_the_threshold_found_is_the_smallest_value_that_qualifies(strict):
    rng = np.random.default_rng(1)
    values = _rows(rng)
    v_min, v_max, h, lo, span = _normalisation(values)
    targets = np.concatenate([[0.0, 1.0, 1.5], rng.random(40)]).astype(np.float32)[None, :]
    x = first_value_where(v_min, v_max, h, lo, span, targets, strict=strict)
    assert x is not None and x.dtype == np.float32
    norm = _normalised(values, h, lo, span)
    for m in range(values.shape[0]):
        for e in range(targets.shape[1]):
            t = targets[0, e]
            qualifies = norm[m] > t if strict else norm[m] >= t
            # exactly the values at or above x qualify (x itself may lie between the map's values)
            assert np.array_equal(qualifies, values[m] >= x[m, e]), (m, e, t, x[m, e])
            if np.isfinite(x[m, e]):
                one = _normalised(np.float32(x[m, e]), h[m], lo[m], span[m])
                below = _normalised(np.nextafter(x[m, e], np.float32(-np.inf)), h[m], lo[m], span[m])
                assert (one > t if strict else one >= t) and not (below > t if strict else below >= t)


def test_otsu_counts_and_the_binary_maps_first_pixel_equal_a_pass_over_the_normalised_maps():
    rng = np.random.default_rng(2)
    values = np.concatenate([_rows(rng), _rows(rng)])                    # two images of nine maps
    labels = rng.integers(0, 4, size=(2, values.shape[1])).astype(np.uint8)
    v_min, v_max, h, lo, span = _normalisation(values)
    order = SortedMaps(values, labels, 2, non_negative=False)
    counts = order.otsu_counts(v_min, v_max, h, lo, span, OTSU_BINS)
    norm = _normalised(values, h, lo, span)
    bins = np.minimum((norm * np.float32(OTSU_BINS)).astype(np.int64), OTSU_BINS - 1)
    want = np.stack([np.bincount(b, minlength=OTSU_BINS) for b in bins])
    assert np.array_equal(counts, want)
    cut = rng.random(values.shape[0]).astype(np.float32)
    cut[0] = np.inf
    first = order.first_above(v_min, v_max, h, lo, span, cut)
    assert np.array_equal(order.row_start + values.shape[1] - first, (norm > cut[:, None]).sum(axis=1))


def test_the_sorted_keys_carry_each_pixels_labels_and_are_sorted_across_rows():
    rng = np.random.default_rng(3)
    values = _rows(rng)
    labels = rng.integers(0, 16, size=(1, values.shape[1])).astype(np.uint8)
    order = SortedMaps(values, labels, 4)
    assert np.all(np.diff(order.flat) >= 0)
    for m in range(values.shape[0]):
        row = order.flat[m * values.shape[1]:(m + 1) * values.shape[1]]
        assert np.array_equal(np.sort(row & 15), np.sort(labels[0]))     # every pixel's label, once
        assert np.array_equal((row - order._base[m]) >> 4 >= 0, np.sort(values[m]) >= 0)   # the values' order


@pytest.mark.parametrize("non_negative", [False, True])
def test_a_masks_pixels_counts_and_sums_read_from_the_sorted_keys_equal_a_pass_over_the_maps(non_negative):
    """Per row: a label's pixels (``where``, and ``subset`` within them), how many there are, how many lie at or
    after a position, and the float64 sum of a function of their values read back from the keys (-0.0 as
    +0.0) — against the same computed from the unsorted maps and labels. Rows without any such pixel (first,
    middle, last) sum to 0."""
    rng = np.random.default_rng(5)
    values = np.abs(_rows(rng)) if non_negative else _rows(rng)         # (halved rows' values stay finite)
    M, N = values.shape
    labels = rng.integers(0, 8, size=(1, N)).astype(np.uint8)
    labels[0, :40] = 0
    order = SortedMaps(values, labels, 3, non_negative=non_negative)
    inside = (labels[0] & 2 != 0) & (labels[0] & 4 == 0)
    pos = order.subset(order.where(2), 0, 4)
    assert np.array_equal(pos, order.where(2, 4))
    assert np.array_equal(order.per_row(pos), np.full(M, inside.sum()))

    first = order.row_start + rng.integers(0, N + 1, size=M)             # a position within each row, or its end
    first[0], first[-1] = order.row_start[0], order.row_start[-1] + N
    after = order.from_each(pos, first)
    assert after[0] == inside.sum() and after[-1] == 0
    for m in range(M):
        assert after[m] == np.count_nonzero((pos >= first[m]) & (pos < (m + 1) * N)), m

    def squared(x, counts):
        assert counts.sum() == len(x)
        return x.astype(np.float64) ** 2

    want = [np.sum((values[m][inside] + np.float32(0.0)).astype(np.float64) ** 2) for m in range(M)]
    np.testing.assert_allclose(order.sums_at(pos, squared), want, rtol=1e-12)
    assert np.array_equal(np.sort(order.values_at(pos[:inside.sum()])), np.sort(values[0][inside] + np.float32(0.0)))
    empty = order.subset(pos, 1, 0)[:0]
    assert np.array_equal(order.sums_at(empty, squared), np.zeros(M))
    only_middle = pos[(pos >= 4 * N) & (pos < 5 * N)]
    sums = order.sums_at(only_middle, squared)
    assert sums[4] == pytest.approx(want[4], rel=1e-12) and not np.any(np.delete(sums, 4))


def _score(monkeypatch=None):
    from compute.metrics.batched import score_images

    from tests.metrics.test_batched import REQUESTS, _maps, _mask
    rng = np.random.default_rng(4)
    masks = [_mask(rng, (33, 41)), _mask(rng, (33, 41), "objects")]
    cue = np.zeros((33, 41), bool)
    cue[3:9, 20:35] = True
    maps = [[torch.from_numpy(m) for m in _maps(rng, (33, 41))] for _ in range(2)]
    return score_images([(maps[b], masks[b], REQUESTS, cue) for b in range(2)])


def _assert_same(got, want):
    from tests.metrics.test_batched import _assert_rows_equal
    for b in range(len(want)):
        for k in range(len(want[b])):
            for r in range(len(want[b][k])):
                _assert_rows_equal(got[b][k][r], want[b][k][r], f"image {b} map {k} request {r}")


def test_chunks_whose_keys_would_not_fit_take_the_tensor_path(monkeypatch):
    import compute.metrics.batched as batched

    want = _score()
    made = []
    monkeypatch.setattr(batched, "fits", lambda rows, bits: made.append(rows) or False)
    _assert_same(_score(), want)
    assert made                                                          # the check was asked

"""The batched scorer gives, for every map and request, what the one-map NumPy reference ``score`` gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.metrics import score
from compute.metrics.batched import score_image, score_images

REQUESTS = [("report", None), ("clean", None), ("clean", [8]), ("clean", [3, 8]), ("clean", []), ("clean", [15])]


def _mask(rng, shape, kind="mixed") -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    if kind in ("mixed", "objects"):
        mask[h // 5: h // 2, w // 4: 3 * w // 4] = 8
        mask[h // 2: 4 * h // 5, w // 6: w // 2] = 3
        mask[h // 2, :] = 255                                            # void band between the objects
        mask[rng.random(shape) < 0.02] = 255
    if kind == "objects":
        mask[mask == 0] = 8                                              # no background at all
    if kind == "void":
        mask[:] = 255
    return mask


def _maps(rng, size) -> list[np.ndarray]:
    h, w = size
    noisy = rng.standard_normal((14, 14)).astype(np.float32)
    ties = np.round(rng.random((14, 14)), 1).astype(np.float32)         # many equal values
    with_nan = rng.random((7, 9)).astype(np.float32)
    with_nan[0, 0], with_nan[3, 4], with_nan[5, 1] = np.nan, np.inf, -np.inf
    return [
        noisy, ties, with_nan,
        rng.random((32, 32)).astype(np.float32),                        # another resolution
        rng.random((h, w)).astype(np.float32),                          # already at the mask's size
        np.round(rng.random((h, w)) * 4).astype(np.float32),            # pixel resolution with ties
        -rng.random((14, 14)).astype(np.float32),                        # no positive mass
        np.full((14, 14), 7.5, np.float32),                              # constant
        np.zeros((14, 14), np.float32),
        np.eye(14, dtype=np.float32),
        _signed_zeros(rng, size),
    ]


def _signed_zeros(rng, size) -> np.ndarray:
    """-1, 0 and 1 at pixel resolution, half of the zeros negative: -0.0 and +0.0 are one tie group."""
    m = np.round(rng.random(size) * 2).astype(np.float32) - np.float32(1.0)
    m[(m == 0) & (rng.random(size) < 0.5)] = np.float32(-0.0)
    return m


def _assert_rows_equal(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), where
    for col, v in want.items():
        g = got[col]
        if v is None:
            assert g is None, f"{where} {col}: {g} should be None"
        elif col == "threshold":
            assert g == v, f"{where} threshold {g} != {v}"
        else:
            assert g is not None and g == pytest.approx(v, rel=1e-9, abs=1e-12), f"{where} {col}: {g} != {v}"


@pytest.mark.parametrize("kind", ["mixed", "objects", "void", "background"])
@pytest.mark.parametrize("shape", [(47, 61), (120, 90)])
def test_every_map_and_request_equals_the_reference(kind, shape):
    rng = np.random.default_rng(hash((kind, shape)) % 2**32)
    mask = _mask(rng, shape, kind)
    maps = _maps(rng, shape)
    got = score_image([torch.from_numpy(m) for m in maps], mask, REQUESTS)
    assert len(got) == len(maps) and all(len(g) == len(REQUESTS) for g in got)
    for k, m in enumerate(maps):
        for r, (protocol, classes) in enumerate(REQUESTS):
            want = score(m, mask, protocol, gt_classes=classes)
            _assert_rows_equal(got[k][r], want, f"map {k} {protocol} {classes}")


@pytest.mark.parametrize("kind", ["mixed", "objects", "void", "background"])
@pytest.mark.parametrize("request_", [("report", None), ("clean", None), ("clean", [8]), ("clean", [3])])
def test_a_single_request_equals_the_reference(kind, request_):
    """One request per image: its one slot takes the sort's own path (no tie runs: a run's object pixels come
    last in it). Every map kind (ties, signed zeros, constant, non-finite, pixel resolution), with and without
    void pixels, several images at once and one at a time."""
    rng = np.random.default_rng(17)
    masks = [_mask(rng, (37, 53), kind) for _ in range(3)]
    if kind == "background":
        masks[0][3:20, 5:30] = 8
    maps = [[torch.from_numpy(m) for m in _maps(rng, (37, 53))] for _ in range(3)]
    got = score_images([(maps[b], masks[b], [request_], None) for b in range(3)])
    for b in range(3):
        assert got[b] == score_images([(maps[b], masks[b], [request_], None)], max_pixels=37 * 53)[0]
        for k, m in enumerate(maps[b]):
            want = score(m.numpy(), masks[b], request_[0], gt_classes=request_[1])
            _assert_rows_equal(got[b][k][0], want, f"image {b} map {k} {request_} {kind}")


@pytest.mark.parametrize("cue_kind", ["strip", "empty"])
def test_cue_columns_equal_the_reference(cue_kind):
    rng = np.random.default_rng(7)
    shape = (64, 80)
    mask = _mask(rng, shape)
    cue = np.zeros(shape, bool)
    if cue_kind == "strip":
        cue[5:15, 50:75] = True
    maps = _maps(rng, shape)
    got = score_image([torch.from_numpy(m) for m in maps], mask, REQUESTS, cue=cue)
    for k, m in enumerate(maps):
        for r, (protocol, classes) in enumerate(REQUESTS):
            want = score(m, mask, protocol, gt_classes=classes, extra_masks={"cue": cue})
            _assert_rows_equal(got[k][r], want, f"map {k} {protocol} {classes}")


def _no_void_images(rng, shape):
    """Four images without void pixels: one class (its ``clean [8]`` mask is ``report``'s), two classes, a cue on
    part of the object, an empty cue, and a last image without the class ``clean`` asks for."""
    masks, cues = [], []
    for b in range(4):
        mask = np.zeros(shape, np.uint8)
        mask[4 + b: 20, 6: 28 - b] = 8 if b < 3 else 3
        if b in (1, 2):
            mask[22:30, 2:12] = 3
        cue = np.zeros(shape, bool)
        if b != 2:
            cue[14:30, 20 + b: 38] = True                               # over the object's corner and beside it
        masks.append(mask)
        cues.append(cue)
    return masks, cues


@pytest.mark.parametrize("with_cue", [True, False])
@pytest.mark.parametrize("non_negative", [False, True])
def test_images_without_void_pixels_equal_the_reference(monkeypatch, with_cue, non_negative):
    """Where every pixel is valid under every request (the planted-cue images), the masks' pixel counts and sums
    come from the sort's positions, not from a pass over the pixels: several images in one chunk or one image
    a chunk, requests that share a mask (a spare slot), rows without object pixels at the chunk's end, an empty
    cue, signed maps (with -0.0, non-finite values, a constant) or only non-negative ones."""
    import compute.metrics.batched as batched

    def per_pixel(*args, **kwargs):
        raise AssertionError("every pixel is valid: the sums come from the sort")

    monkeypatch.setattr(batched, "_mask_sums", per_pixel)
    rng = np.random.default_rng(23)
    shape = (36, 44)
    masks, cues = _no_void_images(rng, shape)
    maps = [[m for m in _maps(rng, shape) if not non_negative or not (m < 0).any()] for _ in masks]
    requests = [("report", None), ("clean", [8])]
    items = [([torch.from_numpy(m) for m in maps[b]], masks[b], requests, cues[b] if with_cue else None)
             for b in range(4)]
    for max_pixels in (None, 36 * 44):
        got = score_images(items, max_pixels=max_pixels)
        for b in range(4):
            for k, m in enumerate(maps[b]):
                for r, (protocol, classes) in enumerate(requests):
                    want = score(m, masks[b], protocol, gt_classes=classes,
                                 extra_masks={"cue": cues[b]} if with_cue else None)
                    _assert_rows_equal(got[b][k][r], want, f"image {b} map {k} {protocol} {max_pixels}")


def test_otsu_threshold_is_skimages_bit_for_bit_on_many_maps():
    from skimage.filters import threshold_otsu

    from compute.metrics import PreparedMap

    rng = np.random.default_rng(11)
    mask = np.zeros((150, 200), np.uint8)
    maps = [rng.gamma(rng.uniform(0.2, 3), size=(14, 14)).astype(np.float32) for _ in range(60)]
    got = score_image([torch.from_numpy(m) for m in maps], mask, [("report", None)])
    for k, m in enumerate(maps):
        prep = PreparedMap(m, mask.shape)
        assert got[k][0]["threshold"] == float(threshold_otsu(prep.normalised, nbins=256))


def test_one_map_at_a_time_equals_all_together():
    rng = np.random.default_rng(3)
    mask = _mask(rng, (50, 70))
    maps = [torch.from_numpy(m) for m in _maps(rng, (50, 70))]
    together = score_image(maps, mask, REQUESTS)
    for k, m in enumerate(maps):
        assert score_image([m], mask, REQUESTS)[0] == together[k]


def test_images_with_different_numbers_of_maps_and_chunk_sizes_score_alike():
    """Chunks hold whole images (maps of one image are one block) or one image's maps in ranges; images with
    different numbers of maps in one call, and any chunk size, give the rows of scoring each image alone."""
    rng = np.random.default_rng(21)
    masks = [_mask(rng, (30, 40)), _mask(rng, (30, 40), "objects"), _mask(rng, (30, 40))]
    maps = [[torch.from_numpy(m) for m in _maps(rng, (30, 40))[:n]] for n in (11, 3, 7)]
    items = [(maps[b], masks[b], REQUESTS, None) for b in range(3)]
    alone = [score_image(*items[b][:3]) for b in range(3)]
    for max_pixels in (1200 * 2, 1200 * 5, 1200 * 40, None):
        assert score_images(items, max_pixels=max_pixels) == alone, max_pixels


def test_images_whose_requests_share_masks_or_not_are_scored_together():
    """``clean`` without classes and ``report`` give the same masks on an image without void pixels (scored
    once, rows copied) but not on one with a void band; both kinds of image in one call."""
    rng = np.random.default_rng(9)
    plain = _mask(rng, (40, 52), "background")
    plain[5:20, 10:30] = 8
    voided = _mask(rng, (40, 52))
    requests = [("report", None), ("clean", None), ("clean", [8]), ("clean", [])]
    maps = [[torch.from_numpy(m) for m in _maps(rng, (40, 52))] for _ in range(2)]
    got = score_images([(maps[0], plain, requests, None), (maps[1], voided, requests, None)], max_pixels=1 << 13)
    for image, mask in enumerate((plain, voided)):
        for k, m in enumerate(maps[image]):
            for r, (protocol, classes) in enumerate(requests):
                want = score(m.numpy(), mask, protocol, gt_classes=classes)
                _assert_rows_equal(got[image][k][r], want, f"image {image} map {k} {protocol} {classes}")
    assert got[0][0][0] is not got[0][0][1]  # a copy: a caller may change one row


def test_the_device_path_run_on_a_cpu_gives_the_same_rows(monkeypatch):
    """The GPU code path (torch's sort, histogram and tie runs) and the CPU one (one NumPy sort, thresholds
    found in it) agree: thresholds exactly, every score to float64 rounding (sums in another order)."""
    import compute.metrics.batched as batched

    rng = np.random.default_rng(13)
    mask = _mask(rng, (60, 45))
    cue = np.zeros((60, 45), bool)
    cue[2:9, 30:40] = True
    maps = [torch.from_numpy(m) for m in _maps(rng, (60, 45))]
    numpy_rows = score_image(maps, mask, REQUESTS, cue=cue)
    monkeypatch.setattr(batched, "NUMPY_ON_CPU", False)
    torch_rows = score_image(maps, mask, REQUESTS, cue=cue)
    for k in range(len(maps)):
        for r in range(len(REQUESTS)):
            _assert_rows_equal(torch_rows[k][r], numpy_rows[k][r], f"map {k} request {r}")


def test_bad_input_is_named():
    mask = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="unknown protocol"):
        score_image([torch.zeros(4, 4)], mask, [("loose", None)])
    with pytest.raises(ValueError, match="cue mask"):
        score_image([torch.zeros(4, 4)], mask, [("clean", None)], cue=np.zeros((5, 5), bool))
    assert score_image([], mask, [("clean", None)]) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_scores_equal_cpu_scores():
    rng = np.random.default_rng(5)
    mask = _mask(rng, (90, 120))
    maps = _maps(rng, (90, 120))
    cpu = score_image([torch.from_numpy(m) for m in maps], mask, REQUESTS)
    gpu = score_image([torch.from_numpy(m).cuda() for m in maps], mask, REQUESTS)
    for k in range(len(maps)):
        for r in range(len(REQUESTS)):
            for col, v in cpu[k][r].items():
                g = gpu[k][r][col]
                assert (g is None) == (v is None)
                if v is not None:  # the upsampling kernel may round differently on the GPU
                    assert g == pytest.approx(v, abs=1e-4), (k, r, col)

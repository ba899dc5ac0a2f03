"""store.variants: the counterfactual variants redrawn for display in NumPy — exactly which pixels each variant
changes, and fills that agree with the batch job's own (compute.counterfactuals, torch)."""

from __future__ import annotations

import numpy as np
import pytest

from store import variants as v

H, W = 12, 16


def _picture(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _square() -> np.ndarray:
    region = np.zeros((H, W), bool)
    region[3:8, 4:10] = True
    return region


@pytest.mark.parametrize("fill", v.FILLS)
def test_only_fg_and_no_fg_change_exactly_their_pixels(fill):
    rgb, region = _picture(), _square()
    only_fg = v.variant_image("only_fg", rgb, region, fill)
    no_fg = v.variant_image("no_fg", rgb, region, fill)
    assert (only_fg[region] == rgb[region]).all()
    assert (no_fg[~region] == rgb[~region]).all()
    assert (only_fg[~region] != rgb[~region]).any(axis=-1).mean() > 0.9
    assert (no_fg[region] != rgb[region]).any(axis=-1).mean() > 0.9


def test_gray_and_mean_fills_are_the_documented_values():
    rgb, region = _picture(), _square()
    gray = v.variant_image("no_fg", rgb, region, "gray")
    assert set(np.unique(gray[region])) <= {127, 128}
    mean = v.variant_image("no_fg", rgb, region, "mean")
    expected = np.rint(rgb.reshape(-1, 3).astype(float).mean(axis=0))
    assert (mean[region] == expected).all()


def test_mixed_rand_pastes_the_object_onto_the_partner_with_its_objects_filled():
    rgb, region = _picture(0), _square()
    partner = _picture(1)
    partner_objects = np.zeros((H, W), bool)
    partner_objects[8:12, 0:5] = True
    out = v.variant_image("mixed_rand", rgb, region, "gray", partner_rgb=partner, partner_objects=partner_objects)
    assert (out[region] == rgb[region]).all()
    background = ~region & ~partner_objects
    assert (out[background] == partner[background]).all()
    assert set(np.unique(out[partner_objects & ~region])) <= {127, 128}


def test_no_cue_fills_only_the_cue():
    rgb = _picture()
    cue = np.zeros((H, W), bool)
    cue[0:2, 12:16] = True
    out = v.variant_image("no_cue", rgb, None, "mean", cue=cue)
    assert (out[~cue] == rgb[~cue]).all() and (out[cue] != rgb[cue]).any()
    with pytest.raises(ValueError):
        v.variant_image("no_cue", rgb, None, "mean")


def test_clean_region_takes_the_void_band_near_the_explained_class_only():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:15, 5:15] = 12
    mask[4, 5:15] = 255                 # void outlining the dog
    mask[30:35, 30:35] = 15
    mask[29, 30:35] = 255               # void outlining the person, far from the dog
    clean = v.object_region(mask, "clean", [12])
    assert clean[5:15, 5:15].all() and clean[4, 5:15].all()
    assert not clean[29:35, 30:35].any()
    report = v.object_region(mask, "report", None)
    assert (report == (mask != 0)).all()


def test_resize_mask_samples_pixel_centres():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    assert (v.resize_mask(mask, (2, 2)) == np.array([[True, False], [False, False]])).all()
    assert v.resize_mask(mask, (8, 8))[:4, :4].all() and not v.resize_mask(mask, (8, 8))[4:, :].any()


@pytest.mark.parametrize("fill", v.FILLS)
def test_fills_agree_with_the_batch_job(fill):
    torch = pytest.importorskip("torch")
    from compute import counterfactuals as cf

    assert (v.BLUR_SIGMA, v.VOID_REACH) == (cf.BLUR_SIGMA, cf.VOID_REACH)
    rgb, region = _picture().astype(np.float64), _square()
    x = torch.tensor(rgb / 255.0, dtype=torch.float64).permute(2, 0, 1)[None]
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)        # pixel space
    theirs = cf.replace_region(x, torch.tensor(region)[None], fill, mean, std)[0].permute(1, 2, 0).numpy() * 255
    ours = v.replace_region(rgb, region, fill)
    assert np.abs(ours - theirs).max() < 1e-3   # pixel values 0..255: far below one step


@pytest.mark.parametrize("shape,sigma", [((224, 168, 3), 14.0), ((37, 50), 3.1), ((10, 300, 3), 18.75), ((5, 5), 0.3)])
def test_blur_is_scipys_zero_padded_gaussian(shape, sigma):
    """The matrix-product blur equals scipy.ndimage's Gaussian filter (zero padding, truncated at 3 sigma),
    the kernel the batch job's blur mirrors, to float32 rounding."""
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(4).random(shape) * 255
    want = gaussian_filter(x.astype(np.float32), (sigma, sigma, 0)[:x.ndim], mode="constant", cval=0.0, truncate=3.0)
    assert np.abs(v._blur(x, sigma) - want).max() < 1e-3

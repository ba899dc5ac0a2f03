"""Planted-cue metrics: exact values on hand-made maps, and what the methods show on a model that took the cue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compute.metrics import score
from compute.metrics.cue import CUE_COLUMNS, cue_scores


def _scene(size: int = 40):
    mask = np.zeros((size, size), np.uint8)
    mask[10:30, 10:30] = 2                       # object: 400 px of class 2
    cue = np.zeros((size, size), bool)
    cue[2:6, 32:38] = True                       # cue: 24 px, away from the object
    return mask, cue


def test_a_map_on_the_cue_puts_all_its_mass_there():
    mask, cue = _scene()
    r = cue_scores(cue.astype(np.float32), mask, cue)
    assert r["cue_mass"] == pytest.approx(1.0)
    assert r["object_mass"] == pytest.approx(0.0)
    assert r["cue_iou"] == pytest.approx(1.0)
    assert r["object_iou"] == pytest.approx(0.0)
    assert r["cue_area"] == pytest.approx(24 / 1600)


def test_mass_shares_follow_the_map_values():
    mask, cue = _scene()
    heat = np.full(mask.shape, 5.0, np.float32)  # minimum 5 -> 0 after min-max normalisation
    heat[mask == 2] = 6.0                        # -> 0.5
    heat[cue] = 7.0                              # -> 1.0
    r = cue_scores(heat, mask, cue)
    total = 400 * 0.5 + 24 * 1.0
    assert r["cue_mass"] == pytest.approx(24 / total)
    assert r["object_mass"] == pytest.approx(200 / total)
    # Otsu separates the background from object and cue together
    assert r["cue_iou"] == pytest.approx(24 / 424)
    assert r["object_iou"] == pytest.approx(400 / 424)


def test_patch_resolution_maps_are_upsampled_like_the_localisation_family():
    mask, cue = _scene(48)
    patch = np.zeros((6, 6), np.float32)
    patch[0, 4] = 1.0                            # the 8x8 cell holding most of the cue
    c = np.zeros((48, 48), bool)
    c[1:7, 33:39] = True
    r = cue_scores(patch, mask, c)
    assert r["cue_mass"] > 0.3 and r["object_mass"] < 0.01
    assert r["cue_mass"] / r["cue_area"] > 10


def test_no_cue_and_constant_maps_give_none_not_numbers():
    mask, cue = _scene()
    none = np.zeros_like(cue)
    r = cue_scores(np.random.default_rng(0).random(mask.shape), mask, none)
    assert r["cue_mass"] is None and r["cue_iou"] is None and r["cue_area"] == 0.0
    assert r["object_mass"] is not None
    flat = cue_scores(np.ones(mask.shape), mask, cue)
    assert flat["cue_mass"] is None and flat["object_mass"] is None
    assert flat["cue_iou"] == 0.0 and flat["cue_area"] == pytest.approx(24 / 1600)


def test_void_pixels_are_not_scored_under_clean():
    mask, cue = _scene()
    mask[0:8, :] = 255                           # a void band over the cue's upper rows (rows 2..5)
    r = cue_scores(cue.astype(np.float32), mask, cue, protocol="clean")
    assert r["cue_area"] == 0.0 and r["cue_mass"] is None
    r = cue_scores(cue.astype(np.float32), mask, cue, protocol="report")
    assert r["cue_mass"] == pytest.approx(1.0)


def test_score_adds_the_cue_columns_only_when_a_cue_mask_is_given():
    mask, cue = _scene()
    heat = np.random.default_rng(1).random((5, 5)).astype(np.float32)
    with_cue = score(heat, mask, "clean", extra_masks={"cue": cue})
    without = score(heat, mask, "clean")
    assert set(CUE_COLUMNS) <= set(with_cue)
    assert not set(CUE_COLUMNS) & set(without)
    assert with_cue["iou"] == without["iou"]
    assert with_cue["cue_mass"] == pytest.approx(cue_scores(heat, mask, cue)["cue_mass"])


# ------------------------------------------------------------------ the methods on a model that took the shortcut

# Median over the conflict images the model classified as their cue's class of cue_mass / cue_area: how many
# times more map mass per pixel the cue gets than an evenly spread map would give it. Measured (clean protocol,
# seed 0) on the demo model over the small demo's conflict images (23 of 24 followed) and the full demo's (97 of
# 100 followed):
#                 small  full                     small  full
#   chefer_lrp    11.5   12.4       raw_attention  14.6   13.6  (last block only: depends on the model)
#   chefer_grad    8.6    8.4       gradcam_attn   15.3   13.5  (last block only: depends on the model)
#   saliency       4.2    4.1       agcam           4.0    3.4  (depends on the model)
#   saw            6.2    3.6       gradcam         2.7    2.6  (below FACTOR)
#   rollout        3.3    3.2       attention_flow  1.8    1.7  (below FACTOR)
# The methods on the left single the cue out by more than FACTOR on every model trained while tuning the demo;
# the others are reported by `vitlens demo`, not tested.
FACTOR = 3.0
CUE_REVEALING = ("chefer_grad", "chefer_lrp", "rollout", "saliency", "saw")


@pytest.fixture(scope="module")
def cue_ratios(tmp_path_factory):
    from compute.capture import capture
    from compute.data.voc import VOCSegmentation
    from compute.demo import prepare
    from compute.methods import parse_methods
    from compute.models import load_model
    from compute.targets import parse_target
    from compute.train import deterministic

    p = prepare(tmp_path_factory.getbasetemp() / "demo-small", small=True, log=lambda m: None)
    loaded = load_model(p.config.train.model, weights=p.weights, img_size=p.config.train.img_size)
    ds = VOCSegmentation(p.data_root, split="val")
    samples = [ds[i] for i in range(len(ds)) if ds.meta[ds.ids[i]]["group"] == "conflict"]
    pre = loaded.preprocess()
    x = torch.stack([pre(s.image) for s in samples])
    methods = parse_methods("all")
    with deterministic(2):
        cap = capture(loaded.model, x, set().union(*(m.requires for m in methods)),
                      target=parse_target(None, loaded.headless))
        maps = {m.key: m(cap).float().numpy() for m in methods}
    pred = cap.outputs.argmax(-1).tolist()
    followed = [i for i, s in enumerate(samples) if loaded.labels[pred[i]] == s.meta["cue_class"]]
    ratios = {}
    for key, mp in maps.items():
        rows = [cue_scores(mp[i], samples[i].mask, samples[i].extra_masks["cue"]) for i in followed]
        ratios[key] = float(np.median([r["cue_mass"] / r["cue_area"] if r["cue_mass"] is not None else 0.0
                                       for r in rows]))
    return {"followed": len(followed), "of": len(samples), "ratios": ratios}


@pytest.mark.slow
def test_the_model_followed_the_cue_on_most_conflict_images(cue_ratios):
    assert cue_ratios["followed"] >= 0.8 * cue_ratios["of"]


@pytest.mark.slow
@pytest.mark.parametrize("method", CUE_REVEALING)
def test_methods_put_the_map_on_the_cue_the_model_used(cue_ratios, method):
    ratio = cue_ratios["ratios"][method]
    assert ratio > FACTOR, f"{method}: median cue-mass ratio {ratio:.2f} (all: {cue_ratios['ratios']})"

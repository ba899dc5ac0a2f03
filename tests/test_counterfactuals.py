"""Counterfactual inputs (compute.counterfactuals): exactly which pixels each variant changes, with what, for
every fill; the partner rule; the rows a classifier and a headless model give; variants that cannot be made."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from compute.counterfactuals import (FILLS, Explained, ImageInput, Partner, at_input_size, choose_partner, evaluate,
                                     fill_values, object_region, partner_from_dataset, partner_order, replace_region)
from compute.targets import parse_target
from store.schema import to_table

H = W = 8
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _image(seed: int) -> torch.Tensor:
    return torch.randn(3, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _square(y0, y1, x0, x1) -> torch.Tensor:
    m = torch.zeros(H, W, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


class Recorder(torch.nn.Module):
    """A linear classifier (or, with ``classes=0``, a feature extractor) that keeps every batch it is fed."""

    def __init__(self, classes: int = 5):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.weight = torch.randn(max(classes, 4), 3 * H * W, generator=g, dtype=torch.float64)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x.flatten(1) @ self.weight.T


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """bool [H, W]: pixels where any channel differs."""
    return (a != b).any(dim=0)


@pytest.mark.parametrize("fill", FILLS)
def test_replace_region_changes_exactly_the_region_with_the_fill(fill):
    x = _image(0)[None]
    region = _square(2, 5, 3, 7)[None]
    out = replace_region(x, region, fill, MEAN, STD)
    assert torch.equal(_changed(out[0], x[0]), region[0])
    want = fill_values(x, ~region, fill, MEAN, STD)
    assert torch.equal(out[0][:, region[0]], want[0][:, region[0]])


def test_fills_mean_what_they_say():
    x = _image(0)[None]
    region = _square(2, 5, 3, 7)[None]
    gray = replace_region(x, region, "gray", MEAN, STD)[0]
    pixels = gray * torch.tensor(STD, dtype=x.dtype).view(3, 1, 1) + torch.tensor(MEAN, dtype=x.dtype).view(3, 1, 1)
    assert torch.allclose(pixels[:, region[0]], torch.full_like(pixels[:, region[0]], 0.5))
    mean = replace_region(x, region, "mean", MEAN, STD)[0]
    assert torch.allclose(mean[:, region[0]], x[0].mean(dim=(1, 2))[:, None].expand(3, int(region.sum())))


def test_blur_fill_carries_nothing_of_the_removed_pixels():
    """The removed object leaves no trace: changing its pixels does not change the filled image at all."""
    x = _image(0)[None]
    region = _square(2, 5, 3, 7)[None]
    other = x.clone()
    other[:, :, region[0]] += 100.0
    a, b = replace_region(x, region, "blur", MEAN, STD), replace_region(other, region, "blur", MEAN, STD)
    assert torch.equal(a, b)
    kept_shift = x.clone()
    kept_shift[:, :, 0, 0] += 100.0
    assert not torch.equal(replace_region(kept_shift, region, "blur")[:, :, region[0]], a[:, :, region[0]])


def _batch(cue: bool = True):
    """Two images: 'a' (object: a square; cue: a corner) with partner 'b' (object: another square)."""
    xa, xb = _image(0), _image(1)
    obj_a, obj_b, cue_a = _square(2, 5, 3, 7), _square(0, 3, 0, 3), _square(6, 8, 0, 2)
    partner = Partner("b", xb, obj_b, "cat")
    images = [ImageInput("a", cue_a if cue else None, partner), ImageInput("b", None, None)]
    requests = [Explained(0, "clean", "logit", 2, obj_a, "dog", (2,))]
    return torch.stack([xa, xb]), images, requests, obj_a, obj_b, cue_a


@pytest.mark.parametrize("fill", FILLS)
def test_variants_change_exactly_their_pixels(fill):
    x, images, requests, obj_a, obj_b, cue_a = _batch()
    model = Recorder()
    rows = evaluate(model, x, images, requests, fill=fill, mean=MEAN, std=STD, original_outputs=model(x))
    fed = model.seen[1]  # the variants (the first call above is the original)
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"only_fg", "no_fg", "mixed_rand", "no_cue"} and len(fed) == 4
    only_fg, no_fg, mixed, no_cue = (fed[i] for i in range(4))  # built in VARIANTS order
    xa, xb = x[0], x[1]
    assert torch.equal(_changed(only_fg, xa), ~obj_a)
    assert torch.equal(_changed(no_fg, xa), obj_a)
    assert torch.equal(_changed(no_cue, xa), cue_a)
    # mixed_rand: our object where it is, the partner's background elsewhere, the partner's own object filled
    assert torch.equal(mixed[:, obj_a], xa[:, obj_a])
    assert torch.equal(_changed(mixed, xb), obj_a | obj_b)
    partner_filled = replace_region(xb[None], obj_b[None], fill, MEAN, STD)[0]
    assert torch.equal(mixed[:, obj_b & ~obj_a], partner_filled[:, obj_b & ~obj_a])


def test_rows_score_the_explained_class_on_each_variant():
    x, images, requests, *_ = _batch()
    model = Recorder()
    rows = evaluate(model, x, images, requests, mean=MEAN, std=STD, label=lambda c: f"c{c}",
                    voc_name=lambda c: "cat" if c == 1 else None)
    originals, fed = model.seen[1], model.seen[0]  # no original outputs given: one more forward, after the variants
    p_orig = torch.softmax(originals[0].flatten() @ model.weight.T, dim=-1)
    for i, r in enumerate(rows):
        logits = fed[i].flatten() @ model.weight.T
        p = torch.softmax(logits, dim=-1)
        assert r["score"] == pytest.approx(float(p[2]))
        assert r["orig_score"] == pytest.approx(float(p_orig[2]))
        assert r["pred_class"] == int(logits.argmax()) and r["pred_label"] == f"c{int(logits.argmax())}"
        assert r["same_top1"] == (int(logits.argmax()) == int(p_orig.argmax()))
        assert r["pred_voc"] == ("cat" if r["pred_class"] == 1 else None)
        assert r["reason"] is None and r["score_kind"] == "probability"
        assert (r.get("partner_id"), r.get("partner_classes")) == (("b", "cat") if r["variant"] == "mixed_rand"
                                                                   else (None, None))
    to_table("counterfactuals", rows)  # the schema takes them as they are


def test_summed_probability_for_a_voc_class_of_several_head_classes():
    x, images, _, obj_a, *_ = _batch(cue=False)
    model = Recorder()
    out = model(x)
    rows = evaluate(model, x, images, [Explained(0, "clean", "voc_lse", 7, obj_a, "dog", (1, 3))],
                    original_outputs=out)
    p = torch.softmax(out[0], dim=-1)
    assert rows[0]["orig_score"] == pytest.approx(float(p[1] + p[3]))


def test_headless_model_scores_the_target_value():
    x, images, requests, obj_a, *_ = _batch(cue=False)
    model = Recorder(classes=0)
    target = parse_target("cls_norm", headless=True)
    req = [Explained(0, "report", "cls_norm", None, obj_a, "dog")]
    rows = evaluate(model, x, images, req, headless=True, target=target, original_outputs=model(x))
    fed = model.seen[1]
    assert [r["variant"] for r in rows] == ["only_fg", "no_fg", "mixed_rand"]
    for i, r in enumerate(rows):
        assert r["score"] == pytest.approx(float((fed[i].flatten() @ model.weight.T).norm()))
        assert r["pred_class"] is None and r.get("same_top1") is None and r["score_kind"] == "value"
        assert r["orig_pred_class"] is None


@pytest.mark.parametrize("region, reason", [
    (torch.zeros(H, W, dtype=torch.bool), "object region is empty"),
    (torch.ones(H, W, dtype=torch.bool), "object region covers the whole image"),
])
def test_empty_or_full_region_gives_null_rows_and_no_forward(region, reason):
    x, images, _, *_ = _batch(cue=False)
    model = Recorder()
    rows = evaluate(model, x, images, [Explained(0, "clean", "logit", 2, region, None, (2,))],
                    original_outputs=model(x))
    assert len(model.seen) == 1  # only the original above: nothing to feed
    assert [r["variant"] for r in rows] == ["only_fg", "no_fg", "mixed_rand"]
    for r in rows:
        assert r["reason"] == reason and r.get("score") is None and r.get("pred_class") is None
    to_table("counterfactuals", rows)


def test_no_partner_and_empty_cue_are_null_rows():
    x, _, requests, *_ = _batch()
    images = [ImageInput("a", torch.zeros(H, W, dtype=torch.bool), None), ImageInput("b")]
    model = Recorder()
    rows = {r["variant"]: r for r in evaluate(model, x, images, requests, original_outputs=model(x))}
    assert rows["mixed_rand"]["reason"] == "no other image of the split has background"
    assert rows["no_cue"]["reason"] == "cue mask is empty"
    assert rows["only_fg"]["reason"] is None and len(model.seen[1]) == 2


def test_equal_regions_share_their_forwards():
    """report and clean on a single-class image: one set of variants, at most 4 inputs for the image."""
    x, images, requests, obj_a, *_ = _batch()
    both = requests + [Explained(0, "report", "logit", 2, obj_a.clone(), "dog", (2,))]
    model = Recorder()
    rows = evaluate(model, x, images, both, original_outputs=model(x))
    assert len(model.seen[1]) == 4 and len(rows) == 8
    clean = {r["variant"]: r["score"] for r in rows if r["protocol"] == "clean"}
    report = {r["variant"]: r["score"] for r in rows if r["protocol"] == "report"}
    assert clean == report


def test_object_region_protocols_void_and_resize():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[1:3, 1:3] = 5       # explained class
    mask[0, 0:4] = 255       # void next to it
    mask[6:8, 6:8] = 9       # another object
    report = object_region(mask, "report", None, (8, 8))
    assert torch.equal(report, torch.from_numpy(mask != 0))
    clean = object_region(mask, "clean", [5], (8, 8))
    assert bool(clean[1, 1]) and bool(clean[0, 0]) and not bool(clean[6, 6])
    assert not object_region(mask, "clean", [], (8, 8)).any()
    big = np.zeros((40, 40), dtype=np.uint8)
    big[2:4, 2:4] = 5
    big[1, 2] = 255          # void touching class 5
    big[30, 30] = 9
    big[31, 30] = 255        # void far from class 5: another object's outline
    clean = object_region(big, "clean", [5], (40, 40))
    assert bool(clean[1, 2]) and not bool(clean[31, 30]) and not bool(clean[30, 30])
    small = object_region(big, "report", None, (20, 20))
    assert small.shape == (20, 20) and small.dtype == torch.bool
    assert torch.equal(small, torch.from_numpy(big != 0)[::2, ::2])  # nearest: every other pixel


def test_partner_rule_is_deterministic_and_independent_of_order_and_shard():
    ids = [f"img{i:03d}" for i in range(50)]
    shuffled = ids[:]
    random.Random(3).shuffle(shuffled)
    has_bg = {i: int(i[3:]) % 3 != 0 for i in ids}
    picks = {i: choose_partner(i, ids, has_bg.__getitem__, seed=7) for i in ids}
    assert picks == {i: choose_partner(i, shuffled, has_bg.__getitem__, seed=7) for i in reversed(ids)}
    for i, p in picks.items():
        assert p != i and has_bg[p]
        order = partner_order(i, ids, seed=7)
        assert p == next(o for o in order if has_bg[o])     # the first one with background
    assert len(set(picks.values())) > 10                    # spread over the split, not one image
    other_seed = {i: choose_partner(i, ids, has_bg.__getitem__, seed=8) for i in ids}
    assert other_seed != picks
    assert choose_partner("img001", ids, lambda _: False) is None


def test_on_synthetic_data_as_the_job_feeds_it(tmp_path):
    """The pieces together on the planted-cue data through the VOC loader and a small ViT: regions and cue
    masks at the input size, partners from the split, rows for every variant."""
    from compute.data.synthetic import SyntheticConfig, class_names, generate
    from compute.data.voc import VOCSegmentation
    from compute.models import Preprocess
    from tests.conftest import make_vit

    generate(tmp_path, SyntheticConfig(n_train=3, n_eval=2, seed=0))
    data = VOCSegmentation(tmp_path, split="val")
    names = class_names()
    preprocess = Preprocess((64, 64), MEAN, STD)
    model = make_vit(img_size=64, num_classes=6).float()
    samples = [data[i] for i in range(len(data))]
    x = torch.stack([preprocess(s.image) for s in samples])
    images, requests = [], []
    for row, s in enumerate(samples):
        cue = s.extra_masks.get("cue")
        cue_t = at_input_size(cue, (64, 64)) if cue is not None else None
        images.append(ImageInput(s.image_id, cue_t, partner_from_dataset(data, s.image_id, preprocess, names)))
        (cls,) = s.classes_present
        requests.append(Explained(row, "clean", "logit", 3, object_region(s.mask, "clean", [cls], (64, 64)),
                                  names[cls], (3,)))
    rows = evaluate(model, x, images, requests, mean=MEAN, std=STD)
    to_table("counterfactuals", rows)
    made = [r for r in rows if r["reason"] is None]
    assert {r["variant"] for r in made} == {"only_fg", "no_fg", "mixed_rand", "no_cue"}
    for r in made:
        assert 0 <= r["score"] <= 1 and r["pred_class"] is not None
    for img, r in zip(images, (r for r in rows if r["variant"] == "mixed_rand")):
        assert r["partner_id"] != img.image_id and r["partner_id"] in data.ids
        assert r["partner_classes"] in names
    again = partner_from_dataset(data, samples[0].image_id, preprocess, names, ids=list(reversed(data.ids)))
    assert again.image_id == images[0].partner.image_id

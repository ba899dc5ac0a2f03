"""The planted-cue image set: masks are the drawn pixels, proportions as configured, files a function of the seed."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from compute.data.synthetic import (
    CLASSES, CUE_COLOURS, GROUPS, SyntheticConfig, background_layer, class_names, generate, object_layer, plan,
    read_manifest, render,
)
from compute.data.voc import VOCSegmentation

SMALL = SyntheticConfig(n_train=200, n_eval=12, seed=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate(out, SMALL)


def _hashes(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_masks_are_exactly_the_drawn_pixels():
    specs = plan(SMALL)
    for spec in specs["train"][:40] + specs["val"]:
        flat = render(spec, SMALL.size, flat=True)
        obj = flat.mask == spec.object_class + 1
        assert set(np.unique(flat.mask).tolist()) <= {0, spec.object_class + 1}
        assert obj.sum() > 0.02 * SMALL.size ** 2
        # flat rendering: white object, black ground, the cue in its colour; masks say which is which
        assert (flat.image[obj] == 255).all()
        assert (flat.image[~obj & ~flat.cue] == 0).all()
        if spec.cue_class is None:
            assert not flat.cue.any()
        else:
            assert (flat.image[flat.cue] == CUE_COLOURS[spec.cue_class]).all()
            assert flat.cue.sum() == SMALL.cue_size ** 2
            assert not (flat.cue & obj).any(), "the cue never covers the object"
        # textured rendering: same masks; each pixel comes from exactly the layer its mask names
        r = render(spec, SMALL.size)
        np.testing.assert_array_equal(r.mask, flat.mask)
        np.testing.assert_array_equal(r.cue, flat.cue)
        bg, fg = background_layer(spec, SMALL.size), object_layer(spec, SMALL.size)
        np.testing.assert_array_equal(r.image[obj], fg[obj])
        np.testing.assert_array_equal(r.image[~obj & ~r.cue], bg[~obj & ~r.cue])


def test_files_read_back_through_the_voc_reader(written):
    out, s = written
    specs = {sp.image_id: sp for split in plan(SMALL).values() for sp in split}
    ds = VOCSegmentation(out, split="val")
    assert ds.ids == s.splits["val"]
    for i in range(len(ds)):
        sample = ds[i]
        spec = specs[sample.image_id]
        r = render(spec, SMALL.size)
        np.testing.assert_array_equal(sample.mask, r.mask)              # PNG: lossless
        np.testing.assert_array_equal(sample.extra_masks["cue"], r.cue)
        assert sample.classes_present == [spec.object_class + 1]
        assert sample.meta["group"] == spec.group
        assert sample.meta["object_class"] == CLASSES[spec.object_class]
        jpeg = np.asarray(sample.image, dtype=np.float32)
        assert np.abs(jpeg - r.image).mean() < 4.0                        # JPEG q95, no chroma subsampling
        if spec.cue_class is not None:
            assert sample.meta["cue_class"] == CLASSES[spec.cue_class]
            inner = np.zeros_like(r.cue)
            x0, y0, x1, y1 = spec.cue_box
            inner[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = True
            assert np.abs(jpeg[inner].mean(0) - CUE_COLOURS[spec.cue_class]).max() < 6
        else:
            assert sample.meta["cue_class"] is None
    with Image.open(ds.mask_path(ds.ids[0])) as m:
        assert m.mode == "P"


def test_split_proportions_are_as_configured(written):
    out, s = written
    counts = SMALL.train_counts()
    assert counts == {"aligned": 180, "conflict": 10, "no_cue": 10}
    train_groups = [s.meta[i]["group"] for i in s.splits["train"]]
    assert {g: train_groups.count(g) for g in GROUPS} == counts
    assert len(s.splits["val"]) == 3 * SMALL.n_eval
    for g in GROUPS:
        ids = s.ids("val", g)
        assert len(ids) == SMALL.n_eval
        assert sorted(s.meta[i]["object_class"] for i in ids) == sorted(CLASSES[j % 4] for j in range(SMALL.n_eval))
    for i in s.splits["train"] + s.splits["val"]:
        m = s.meta[i]
        if m["group"] == "aligned":
            assert m["cue_class"] == m["object_class"]
        elif m["group"] == "conflict":
            assert m["cue_class"] not in (None, m["object_class"])
        else:
            assert m["cue_class"] is None
    per_class = [s.meta[i]["object_class"] for i in s.splits["train"]]
    assert {c: per_class.count(c) for c in CLASSES} == {c: 50 for c in CLASSES}
    manifest = read_manifest(out)
    assert manifest["class_names"] == list(class_names()) == ["background", *CLASSES]
    assert manifest["counts"]["train"] == counts
    lists = s.root / "ImageSets" / "Segmentation"
    assert (lists / "trainval.txt").read_text().split() == s.splits["train"] + s.splits["val"]
    assert json.loads((lists / "val_meta.json").read_text()).keys() == set(s.splits["val"])


@pytest.mark.parametrize("agreement,absent,expected", [
    (0.95, 0.5, {"aligned": 95, "conflict": 3, "no_cue": 2}),
    (0.9, 1.0, {"aligned": 90, "conflict": 0, "no_cue": 10}),
    (0.9, 0.0, {"aligned": 90, "conflict": 10, "no_cue": 0}),
])
def test_training_groups_follow_the_configuration(agreement, absent, expected):
    cfg = SyntheticConfig(n_train=100, n_eval=1, cue_agreement=agreement, off_cue_absent=absent)
    groups = [sp.group for sp in plan(cfg)["train"]]
    assert {g: groups.count(g) for g in GROUPS} == expected == cfg.train_counts()


def test_same_seed_same_files_other_seed_other_files(tmp_path, written):
    out, _ = written
    again = tmp_path / "again"
    generate(again, SMALL)
    first, second = _hashes(out), _hashes(again)
    assert first == second and len(first) == 3 * (200 + 36) + 3 * 2 + 1
    other = tmp_path / "other"
    generate(other, SyntheticConfig(n_train=200, n_eval=12, seed=4))
    differing = [k for k, v in _hashes(other).items() if first.get(k) != v]
    assert len(differing) > 0.9 * len(first)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="share"):
        SyntheticConfig(cue_agreement=1.5)
    with pytest.raises(ValueError, match="cue_size"):
        SyntheticConfig(size=64, cue_size=20)

"""The VOC 2012 reader on the real sample in ../shared/voc-mini, and on broken trees made in tmp."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from compute.data.voc import (
    VOC_CLASSES, DatasetError, SampleError, VOCSegmentation, load_voc_sample, resolve_voc_root,
)


def test_reads_the_real_sample(voc_mini):
    ds = VOCSegmentation(voc_mini, split="val")
    assert len(ds) == 10
    present = set()
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.mode == "RGB"
        assert s.mask.shape == (s.image.height, s.image.width)
        assert s.mask.dtype == np.uint8
        values = set(np.unique(s.mask).tolist())
        assert values <= set(range(21)) | {255}
        assert 255 in values, "VOC masks carry a void boundary band"
        present |= set(s.classes_present)
    names = {VOC_CLASSES[c] for c in present}
    assert names == {"aeroplane", "bird", "car", "motorbike", "person", "sheep"}


@pytest.mark.parametrize("level", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_root_may_be_any_of_three_levels(voc_mini, level):
    assert resolve_voc_root(voc_mini / level) == (voc_mini / "VOCdevkit" / "VOC2012")


def test_missing_root_names_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match="VOCdevkit/VOC2012"):
        resolve_voc_root(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="JPEGImages"):
        resolve_voc_root(tmp_path)


def test_limit_and_unknown_split(voc_mini):
    assert len(VOCSegmentation(voc_mini, limit=3)) == 3
    with pytest.raises(DatasetError, match="unknown split"):
        VOCSegmentation(voc_mini, split="test")
    with pytest.raises(DatasetError, match="train.txt"):
        VOCSegmentation(voc_mini, split="train")  # the sample ships val only


def make_broken_tree(voc_mini, tmp_path):
    """A copy (in tmp) of three real images plus a corrupt JPEG, a missing mask and a wrong-size mask."""
    src = voc_mini / "VOCdevkit" / "VOC2012"
    dst = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (dst / sub).mkdir(parents=True)
    ids = (src / "ImageSets/Segmentation/val.txt").read_text().split()[:3]
    for i in ids:
        shutil.copy(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages")
        shutil.copy(src / "SegmentationClass" / f"{i}.png", dst / "SegmentationClass")
    (dst / "JPEGImages" / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    shutil.copy(src / "SegmentationClass" / f"{ids[0]}.png", dst / "SegmentationClass" / "corrupt.png")
    shutil.copy(src / "JPEGImages" / f"{ids[1]}.jpg", dst / "JPEGImages" / "nomask.jpg")
    shutil.copy(src / "JPEGImages" / f"{ids[2]}.jpg", dst / "JPEGImages" / "badsize.jpg")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(dst / "SegmentationClass" / "badsize.png")
    all_ids = [ids[0], "corrupt", ids[1], "nomask", "badsize", ids[2]]
    (dst / "ImageSets/Segmentation/val.txt").write_text("\n".join(all_ids) + "\n")
    return tmp_path, ids


def test_bad_samples_raise_sample_errors_naming_the_problem(voc_mini, tmp_path):
    root, good = make_broken_tree(voc_mini, tmp_path)
    ds = VOCSegmentation(root)
    reasons = {}
    for i, image_id in enumerate(ds.ids):
        try:
            ds[i]
        except SampleError as exc:
            reasons[image_id] = str(exc)
    assert set(reasons) == {"corrupt", "nomask", "badsize"}
    assert "cannot decode image" in reasons["corrupt"]
    assert "mask file missing" in reasons["nomask"]
    assert "10x10" in reasons["badsize"]


def test_mask_values_outside_voc_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.full((8, 8), 42, np.uint8), mode="L").save(tmp_path / "a.png")
    with pytest.raises(SampleError, match="42"):
        load_voc_sample(tmp_path / "a.jpg", tmp_path / "a.png", "a")


def _tree_with_list(voc_mini, tmp_path, listed: str):
    """A copy of the real sample whose val.txt holds ``listed``."""
    src = voc_mini / "VOCdevkit" / "VOC2012"
    dst = tmp_path / "VOCdevkit" / "VOC2012"
    shutil.copytree(src / "JPEGImages", dst / "JPEGImages")
    shutil.copytree(src / "SegmentationClass", dst / "SegmentationClass")
    (dst / "ImageSets" / "Segmentation").mkdir(parents=True)
    (dst / "ImageSets" / "Segmentation" / "val.txt").write_text(listed)
    return tmp_path


def test_an_empty_split_list_is_refused(voc_mini, tmp_path):
    # before: an empty val.txt gave a run of 0 images that exited 0 as if it had worked
    root = _tree_with_list(voc_mini, tmp_path, "\n\n")
    with pytest.raises(DatasetError, match="lists no image ids"):
        VOCSegmentation(root)


def test_a_split_list_naming_only_missing_images_is_refused(voc_mini, tmp_path):
    # before: every image became a skip and the run exited 0 with nothing scored
    root = _tree_with_list(voc_mini, tmp_path, "2099_000001\n2099_000002\n")
    with pytest.raises(DatasetError, match=r"none of the 2 image\(s\) listed in .*val.txt.* exist in .*JPEGImages"):
        VOCSegmentation(root)
    # one real image among missing ones: a usable split, the missing ones become per-image skips
    real = (voc_mini / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()[0]
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text(f"2099_000001\n{real}\n")
    ds = VOCSegmentation(root)
    with pytest.raises(SampleError, match="image file missing"):
        ds[0]
    assert ds[1].image_id == real


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(voc_mini, limit):
    # before: limit=0 silently meant every image and limit=-1 dropped the last one
    with pytest.raises(DatasetError, match="limit must be a positive number"):
        VOCSegmentation(voc_mini, limit=limit)


@pytest.mark.parametrize("name,content", [("val_meta.json", "{not json"), ("synthetic.json", "[1, 2]")])
def test_a_broken_side_file_is_named(voc_mini, tmp_path, name, content):
    # before: json's bare "Expecting property name ..." (or AttributeError on a list), naming no file
    root = _tree_with_list(voc_mini, tmp_path, (voc_mini / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt")
                           .read_text())
    side = root / "VOCdevkit/VOC2012" / ("ImageSets/Segmentation/" + name if name.endswith("_meta.json") else name)
    side.write_text(content)
    with pytest.raises(DatasetError, match=name):
        VOCSegmentation(root)

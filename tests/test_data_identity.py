"""The images are part of a run's identity: the same command over other images is another run (before: it
said "10 already done", stored nothing, and the manifest named the new folder for the old folder's rows)."""

from __future__ import annotations

import shutil

from PIL import Image, ImageOps

from compute.data.voc import data_fingerprint
from compute.runner import RunConfig, run
from store.query import connect


def _config(root, out):
    return RunConfig(out=str(out), voc_root=str(root), model="vit_tiny_patch16_224", random_init=True, img_size=112,
                     methods="rollout", batch_size=5, device="cpu", num_workers=0, limit=2)


def _copy(voc_mini, tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(voc_mini, dst)
    return dst


def test_the_same_images_elsewhere_are_the_same_run_and_other_images_another(voc_mini, tmp_path):
    same = _copy(voc_mini, tmp_path, "same")
    flipped = _copy(voc_mini, tmp_path, "flipped")
    for jpg in (flipped / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"):
        ImageOps.mirror(Image.open(jpg)).save(jpg, quality=95)

    assert data_fingerprint(same, "val") == data_fingerprint(voc_mini, "val")
    assert data_fingerprint(flipped, "val") != data_fingerprint(voc_mini, "val")
    assert _config(same, tmp_path).run_id() == _config(voc_mini, tmp_path).run_id()
    assert _config(flipped, tmp_path).run_id() != _config(voc_mini, tmp_path).run_id()

    out = tmp_path / "store"
    first = run(_config(voc_mini, out))
    again = run(_config(same, out))
    other = run(_config(flipped, out))
    assert first.images == 2 and again.already_done == 2 and again.images == 0
    assert other.images == 2 and other.already_done == 0
    runs = connect(out).execute("SELECT count(DISTINCT run_id) FROM metrics").fetchone()[0]
    assert runs == 2


def test_a_relabelled_mask_changes_the_fingerprint(voc_mini, tmp_path):
    relabelled = _copy(voc_mini, tmp_path, "relabelled")
    mask = next((relabelled / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))
    im = Image.open(mask)
    im.putpixel((0, 0), (im.getpixel((0, 0)) + 1) % 20)
    im.save(mask)
    assert data_fingerprint(relabelled, "val") != data_fingerprint(voc_mini, "val")

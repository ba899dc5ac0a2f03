"""A small synthetic store written through the project's own writer (:class:`store.writer.StoreWriter`): real
Parquet parts and run manifests, no model, built in well under a second.

Three runs, two models (the newest run is of another model than the first two):

- ``present01`` (model ``vit_a``, oldest): ``--explain present``. ``report``: one row per image and method for
  the top-1 target, scored on all objects. ``clean``: one row per VOC class present in the image (target kind
  ``voc_lse``, ``target_class`` the VOC index, ``gt_target`` that class). Images alternate between two classes
  (dog and person) and one (cat), so per-row and per-image means differ.
- ``top1run02`` (model ``vit_a``): the default single target; its ``clean`` rows whose top-1 maps to a class
  absent from the image have no object mask (``gt_target`` and every score NULL).
- ``newest03`` (model ``vit_b``, newest): two images, and the rows of a third, ``img_900``, whose ``images`` row
  (picture, masks) and maps were never stored.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from store.schema import encode_heatmap
from store.writer import StoreWriter

METHODS = ("rollout", "gradcam")
VOC = {"cat": 8, "dog": 12, "person": 15}
HEAD = {"cat": 281, "dog": 207, "person": 0}   # an ImageNet-1k class of each (the top-1 "prediction")
RUNS = {"present01": ("vit_a", "2025-01-01T00:00:00+0000"), "top1run02": ("vit_a", "2025-01-02T00:00:00+0000"),
        "newest03": ("vit_b", "2025-02-01T00:00:00+0000")}
ORPHAN = "img_900"  # newest03 has its metrics rows, but no images row and no maps
SCORES = ("iou", "f1", "pixel_accuracy", "precision", "recall", "relevance_mass")


def image_classes(i: int) -> list[str]:
    return ["dog", "person"] if i % 2 == 0 else ["cat"]


def _pictures(i: int) -> tuple[bytes, bytes]:
    img = np.full((48, 48, 3), 40 + 20 * i, np.uint8)
    mask = np.zeros((48, 48), np.uint8)
    for k, c in enumerate(image_classes(i)):
        mask[8 + 16 * k:20 + 16 * k, 10:38] = VOC[c]
    jb, mb = io.BytesIO(), io.BytesIO()
    Image.fromarray(img).save(jb, format="JPEG")
    Image.fromarray(mask, mode="L").save(mb, format="PNG")
    return jb.getvalue(), mb.getvalue()


def _scores(rng) -> dict:
    return {c: float(rng.random()) for c in SCORES}


def build(out: Path, n_images: int = 6, seed: int = 0) -> Path:
    """Write the three runs into ``out`` (see the module doc); returns ``out``."""
    rng = np.random.default_rng(seed)
    for run_id, (model, created) in RUNS.items():
        present = run_id == "present01"
        ids = [f"img_{i:03d}" for i in range(n_images)] if run_id != "newest03" else ["img_000", "img_001", ORPHAN]
        metrics, heatmaps, images = [], [], []
        for image_id in ids:
            i = int(image_id[4:])
            classes = image_classes(i)
            top1 = classes[0] if i % 3 else "cat"  # every third image: a cat predicted where there is none
            thumb, mask = _pictures(i % 6)
            if image_id != ORPHAN:
                images.append({"image_id": image_id, "split": "val", "width": 48, "height": 48,
                               "gt_classes": classes, "top_classes": [HEAD[top1]], "top_labels": [top1],
                               "top_probs": [0.5 + 0.07 * (i % 6)], "thumbnail": thumb, "mask_png": mask,
                               "cue_png": None, "meta": None})
            for method in METHODS:
                base = {"image_id": image_id, "split": "val", "model": model, "method": method,
                        "pred_class": HEAD[top1], "pred_label": top1, "confidence": 0.5 + 0.07 * (i % 6),
                        "gt_classes": ",".join(classes), "correct": top1 in classes, "seconds": 0.01 * (i + 1)}
                top = {**base, "target_kind": "logit", "target_class": HEAD[top1], "target_label": top1,
                       "target_value": 3.0}
                if image_id != ORPHAN:
                    heatmaps.append(_map(rng, image_id, method, "logit", HEAD[top1]))
                metrics.append({**top, "protocol": "report", "gt_target": ",".join(classes), **_scores(rng)})
                if present:
                    for c in classes:
                        heatmaps.append(_map(rng, image_id, method, "voc_lse", VOC[c]))
                        metrics.append({**base, "target_kind": "voc_lse", "target_class": VOC[c],
                                        "target_label": c, "target_value": 2.0, "protocol": "clean",
                                        "gt_target": c, **_scores(rng)})
                elif top1 in classes:
                    metrics.append({**top, "protocol": "clean", "gt_target": top1, **_scores(rng)})
                else:
                    metrics.append({**top, "protocol": "clean", "gt_target": None})
        writer = StoreWriter(out, run_id)
        writer.write_batch("0000000000000000", {"images": images, "heatmaps": heatmaps, "metrics": metrics})
        writer.write_manifest({"created": created, "config": {
            "model": model, "protocols": ["report", "clean"], "explain": "present" if present else "top1"}})
    return out


def _map(rng, image_id: str, method: str, kind: str, target_class: int) -> dict:
    data = encode_heatmap(rng.random((6, 6), dtype=np.float32))
    return {"image_id": image_id, "method": method, "target_kind": kind, "target_class": target_class,
            "height": 6, "width": 6, "data": data}


if __name__ == "__main__":  # python -m tests.dashboard.synth DIR: a store to look at with the dashboard
    import sys

    print(build(Path(sys.argv[1])))
    print(json.dumps(RUNS))


def add_counterfactuals(out: Path, run_id: str, reliance: dict[str, float], p_orig: float = 0.8) -> Path:
    """Counterfactual rows for ``run_id``'s ``report`` decisions: per image, ``no_fg`` keeps
    ``reliance[image] × p_orig`` of the explained class's probability and ``only_fg`` half of it, so
    :func:`store.shortcuts.reliance` gives each image the context reliance ``reliance[image]``."""
    rows = []
    for image_id, share in reliance.items():
        i = int(image_id[4:])
        top1 = image_classes(i)[0] if i % 3 else "cat"
        for variant, score in (("no_fg", share * p_orig), ("only_fg", 0.5 * p_orig)):
            rows.append({"image_id": image_id, "target_kind": "logit", "target_class": HEAD[top1],
                         "protocol": "report", "variant": variant, "fill": "blur", "gt_target": None,
                         "region_area": 0.3, "score_kind": "probability", "orig_score": p_orig,
                         "orig_pred_class": HEAD[top1], "score": score, "pred_class": HEAD[top1],
                         "pred_label": top1, "pred_voc": None, "same_top1": True, "partner_id": None,
                         "partner_classes": None, "reason": None})
    StoreWriter(out, run_id).write_batch("cf00000000000000", {"metrics": [], "counterfactuals": rows})
    return out

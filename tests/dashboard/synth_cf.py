"""A synthetic store with counterfactual rows and two runs over the same images, written through the project's
own writer (:class:`store.writer.StoreWriter`); no model, built in about a second.

- ``cfbase01`` (model ``vit_a``, older) and ``cfnew02`` (model ``vit_b``, newest: the dashboard's default
  run): the same :data:`N_IMAGES` images, two methods, protocols ``report`` and ``clean``, one top-1 target.
  ``cfnew02`` scores every map a little better, and its maps are other random arrays.
- Every image has a picture (a vertical colour ramp), a class-index mask with one object (a square of the
  image's VOC class, outlined by a void band) and, on every other image, a planted-cue mask (a small yellow
  patch in a corner), so the Shortcuts page has its cue view.
- ``counterfactuals``: per image and protocol the four variants, with outcomes drawn so that some decisions
  are context-driven, some object-driven; every seventh image's ``mixed_rand`` was not made (no partner).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from store.schema import encode_heatmap
from store.writer import StoreWriter

METHODS = ("rollout", "gradcam")
PROTOCOLS = ("report", "clean")
VOC = {"cat": 8, "dog": 12, "person": 15}
CLASSES = tuple(VOC)
HEAD = {"cat": 281, "dog": 207, "person": 0}
RUNS = {"cfbase01": ("vit_a", "2025-03-01T00:00:00+0000", 0.0),
        "cfnew02": ("vit_b", "2025-03-02T00:00:00+0000", 0.1)}   # (model, created, score offset)
DEFAULT_RUN = "cfnew02"
N_IMAGES = 12
SIZE = 64
SCORES = ("iou", "f1", "pixel_accuracy", "precision", "recall", "relevance_mass", "cue_mass")


def image_class(i: int) -> str:
    return CLASSES[i % len(CLASSES)]


def has_cue(i: int) -> bool:
    return i % 2 == 0


def pictures(i: int) -> tuple[bytes, bytes, bytes | None]:
    """(thumbnail JPEG, mask PNG, cue PNG or None) of image ``i``."""
    ramp = np.linspace(30, 220, SIZE, dtype=np.float64)[:, None]
    img = np.stack([np.broadcast_to(ramp, (SIZE, SIZE)), np.full((SIZE, SIZE), 40.0 + 15 * i),
                    np.broadcast_to(ramp[::-1], (SIZE, SIZE))], axis=-1).astype(np.uint8)
    img[20:44, 20:44] = (200, 60, 60)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[18:46, 18:46] = 255
    mask[20:44, 20:44] = VOC[image_class(i)]
    cue = None
    if has_cue(i):
        c = np.zeros((SIZE, SIZE), np.uint8)
        c[2:12, 50:62] = 255
        img[2:12, 50:62] = (240, 220, 0)
        cue = _png(c)
    jb = io.BytesIO()
    Image.fromarray(img).save(jb, format="JPEG", quality=95)
    return jb.getvalue(), _png(mask), cue


def _png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a, mode="L").save(b, format="PNG")
    return b.getvalue()


def _counterfactuals(rng, image_id: str, i: int, ids: list[str], protocol: str, orig: float, top1: str) -> list:
    cls = image_class(i)
    partner = (i + 1) % len(ids)
    context = i % 4 == 1 or i % 6 == 0   # these images: the context alone keeps the decision
    base = {"image_id": image_id, "target_kind": "logit", "target_class": HEAD[top1], "protocol": protocol,
            "fill": "gray", "gt_target": cls, "region_area": 0.14, "score_kind": "probability",
            "orig_score": orig, "orig_pred_class": HEAD[top1]}
    no_fg = orig * (rng.uniform(0.6, 1.0) if context else rng.uniform(0.0, 0.3))
    only_fg = orig * (rng.uniform(0.0, 0.3) if context else rng.uniform(0.6, 1.0))
    moved = image_class(partner)
    rows = [
        {**base, "variant": "no_fg", "score": no_fg, "pred_class": HEAD[top1] if context else HEAD[moved],
         "pred_label": top1 if context else moved, "pred_voc": top1 if context else moved, "same_top1": context},
        {**base, "variant": "only_fg", "score": only_fg, "pred_class": HEAD[cls], "pred_label": cls,
         "pred_voc": cls, "same_top1": top1 == cls},
    ]
    if i % 7 == 0:
        rows.append({**base, "variant": "mixed_rand", "reason": "no other image of the split has background"})
    else:
        rows.append({**base, "variant": "mixed_rand", "score": float(rng.uniform(0, orig)),
                     "pred_class": HEAD[moved], "pred_label": moved, "pred_voc": moved, "same_top1": moved == top1,
                     "partner_id": ids[partner], "partner_classes": moved})
    if has_cue(i):
        flips = i % 4 == 0
        rows.append({**base, "variant": "no_cue", "score": orig * (0.2 if flips else 0.9),
                     "pred_class": HEAD[moved] if flips else HEAD[top1], "pred_label": moved if flips else top1,
                     "pred_voc": moved if flips else top1, "same_top1": not flips})
    return rows


def build(out: Path, n_images: int = N_IMAGES, seed: int = 0, counterfactuals: bool = True) -> Path:
    """Write both runs into ``out`` (see the module doc); returns ``out``."""
    rng = np.random.default_rng(seed)
    ids = [f"cf_{i:03d}" for i in range(n_images)]
    for run_id, (model, created, offset) in RUNS.items():
        metrics, heatmaps, images, cfs = [], [], [], []
        for i, image_id in enumerate(ids):
            cls = image_class(i)
            top1 = cls if i % 5 else CLASSES[(i + 1) % 3]   # every fifth image: wrong
            confidence = 0.55 + 0.4 * ((i * 7) % 10) / 10
            thumb, mask, cue = pictures(i)
            images.append({"image_id": image_id, "split": "val", "width": SIZE, "height": SIZE,
                           "gt_classes": [cls], "top_classes": [HEAD[top1]], "top_labels": [top1],
                           "top_probs": [confidence], "thumbnail": thumb, "mask_png": mask, "cue_png": cue,
                           "meta": None})
            for method in METHODS:
                heatmaps.append({"image_id": image_id, "method": method, "target_kind": "logit",
                                 "target_class": HEAD[top1], "height": 8, "width": 8,
                                 "data": encode_heatmap(rng.random((8, 8), dtype=np.float32))})
                for protocol in PROTOCOLS:
                    scores = {c: float(np.clip(rng.random() * 0.8 + offset, 0, 1)) for c in SCORES}
                    if not has_cue(i):
                        scores["cue_mass"] = None
                    metrics.append({"image_id": image_id, "split": "val", "model": model, "method": method,
                                    "protocol": protocol, "target_kind": "logit", "target_class": HEAD[top1],
                                    "target_label": top1, "target_value": 3.0, "pred_class": HEAD[top1],
                                    "pred_label": top1, "confidence": confidence, "gt_classes": cls,
                                    "correct": top1 == cls, "gt_target": cls, "seconds": 0.01, **scores})
            if counterfactuals:
                for protocol in PROTOCOLS:
                    cfs += _counterfactuals(rng, image_id, i, ids, protocol, confidence, top1)
        tables = {"images": images, "heatmaps": heatmaps, "metrics": metrics}
        if counterfactuals:
            tables["counterfactuals"] = cfs
        writer = StoreWriter(out, run_id)
        writer.write_batch("0000000000000000", tables)
        writer.write_manifest({"created": created, "config": {"model": model, "protocols": list(PROTOCOLS)}})
    return out


if __name__ == "__main__":  # python -m tests.dashboard.synth_cf DIR: a store to look at with the dashboard
    import sys

    print(build(Path(sys.argv[1])))

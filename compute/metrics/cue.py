"""Planted-cue diagnostics: does a map point at the object or at a spurious mark next to it?

For an image that carries a boolean cue mask (``extra_masks["cue"]``, e.g. from :mod:`compute.data.synthetic`),
each map is read the way the localisation family reads it — bilinear upsampling to the mask's size, then
min-max normalisation to [0, 1] (so the map is non-negative and its minimum is zero) — and scored with:

- ``cue_mass``    — share of the map's total mass that lies on the cue's pixels;
- ``object_mass`` — share on the object's pixels (the protocol's ground truth, cue pixels excluded);
- ``cue_iou``     — IoU of the Otsu-thresholded map with the cue mask;
- ``object_iou``  — IoU of the same binary map with the object mask;
- ``cue_area``    — share of the scored pixels the cue covers: the ``cue_mass`` a map spread evenly would get.

``cue_mass / cue_area`` is how many times more relevance the cue receives per pixel than an even map would give
it; above 1 the map singles the cue out. Only valid pixels (per the protocol) are counted. Undefined values (a
constant map has no mass; an image whose cue mask is empty has no cue mass or cue IoU, only ``cue_area`` 0)
are ``None``.
"""

from __future__ import annotations

import numpy as np

from compute.metrics.localisation import ground_truth, minmax_normalise, otsu_binarise, upsample

CUE_COLUMNS = ("cue_mass", "object_mass", "cue_iou", "object_iou", "cue_area")


def _iou(pred: np.ndarray, gt: np.ndarray) -> float | None:
    union = int(np.count_nonzero(pred | gt))
    return int(np.count_nonzero(pred & gt)) / union if union else None


def cue_scores(heatmap, mask: np.ndarray, cue: np.ndarray, protocol: str = "clean",
               classes: list[int] | None = None, prepared=None) -> dict:
    """The cue family's columns for one map of one image under one protocol.

    ``prepared`` (optional) is the map already upsampled to the mask's size, normalised and thresholded, as
    an object with ``normalised`` and ``binary`` arrays (the localisation family's shared preparation).
    """
    cue = np.asarray(cue, dtype=bool)
    if cue.shape != mask.shape:
        raise ValueError(f"cue mask is {cue.shape}, class mask {mask.shape}")
    obj, valid = ground_truth(mask, protocol, classes)
    cue = cue & valid
    obj = obj & valid & ~cue
    if prepared is not None and tuple(prepared.normalised.shape) == tuple(mask.shape):
        norm, binary = prepared.normalised, prepared.binary
    else:
        norm = minmax_normalise(upsample(heatmap, mask.shape))
        binary, _ = otsu_binarise(norm)
    binary = binary & valid
    total = float(norm[valid].sum(dtype=np.float64))
    n_valid = int(np.count_nonzero(valid))
    has_cue = bool(cue.any())
    return {
        "cue_mass": float(norm[cue].sum(dtype=np.float64)) / total if total > 0 and has_cue else None,
        "object_mass": float(norm[obj].sum(dtype=np.float64)) / total if total > 0 else None,
        "cue_iou": _iou(binary, cue) if has_cue else None,
        "object_iou": _iou(binary, obj),
        "cue_area": int(np.count_nonzero(cue)) / n_valid if n_valid else None,
    }


__all__ = ["CUE_COLUMNS", "cue_scores"]

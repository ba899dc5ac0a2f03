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

from compute.metrics.localisation import fraction, ground_truth, minmax_normalise, otsu_binarise, row_of, upsample

CUE_COLUMNS = ("cue_mass", "object_mass", "cue_iou", "object_iou", "cue_area")


def cue_scores_from_sums(total: float, on_cue: float, on_obj: float, pred: float, pred_cue: float,
                         pred_obj: float, n_cue: float, n_obj: float, n_valid: float) -> dict:
    """The cue columns from one map's sums over the valid pixels: ``total`` mass, the mass ``on_cue`` and
    ``on_obj``; ``pred`` pixels in the Otsu mask, ``pred_cue`` / ``pred_obj`` of them on the cue / object; the
    pixel counts ``n_cue``, ``n_obj`` and ``n_valid``. Shared by :func:`cue_scores` and the batched scorer."""
    return row_of(cue_columns(total, on_cue, on_obj, pred, pred_cue, pred_obj, n_cue, n_obj, n_valid))


def cue_columns(total, on_cue, on_obj, pred, pred_cue, pred_obj, n_cue, n_obj, n_valid) -> dict:
    """:func:`cue_scores_from_sums` elementwise over floats or float64 arrays, as ``{column: (value, defined)}``
    (see :func:`compute.metrics.localisation.fraction`)."""
    cue_union = pred + n_cue - pred_cue
    obj_union = pred + n_obj - pred_obj
    has_cue = np.greater(n_cue, 0)
    return dict(zip(CUE_COLUMNS, (
        fraction(on_cue, total, also=has_cue),
        fraction(on_obj, total),
        fraction(pred_cue, cue_union, also=has_cue),
        fraction(pred_obj, obj_union),
        fraction(n_cue, n_valid),
    )))


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
    return cue_scores_from_sums(
        total=float(norm[valid].sum(dtype=np.float64)), on_cue=float(norm[cue].sum(dtype=np.float64)),
        on_obj=float(norm[obj].sum(dtype=np.float64)), pred=int(np.count_nonzero(binary)),
        pred_cue=int(np.count_nonzero(binary & cue)), pred_obj=int(np.count_nonzero(binary & obj)),
        n_cue=int(np.count_nonzero(cue)), n_obj=int(np.count_nonzero(obj)), n_valid=int(np.count_nonzero(valid)))

__all__ = ["CUE_COLUMNS", "cue_columns", "cue_scores", "cue_scores_from_sums"]

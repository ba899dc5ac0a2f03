"""Localisation metrics of the source protocol: upsample → min-max normalise → Otsu → compare with a mask.

Pipeline per map (exactly as the report describes it):

1. bilinear upsampling of the patch- or pixel-resolution map to the mask's size (``align_corners=False``);
2. min-max normalisation to [0, 1]; a constant map becomes all zeros (no division by zero);
3. Otsu's threshold (``skimage.filters.threshold_otsu``, 256 bins); pixels strictly above it are "on";
   a constant map has no pixel above any threshold, so it is all "off";
4. confusion counts against the ground-truth mask over the *valid* pixels → IoU (Jaccard), F1 (Dice),
   pixel accuracy ((TP+TN)/valid), precision, recall.

Undefined ratios (e.g. IoU when neither map nor mask has a positive pixel, recall with an empty mask) are
returned as ``None`` and stored as NULL, so that averages skip them instead of inventing a value; precision
with no positive prediction is 0 (nothing found is not precise).

Ground truth per protocol (:func:`ground_truth`, defined once in :mod:`store.maps` for compute and the
dashboard alike):

- ``report`` — the source report's reading: every non-background pixel is object, and VOC's void band (255)
  is not excluded, so it counts as object as a ``mask > 0`` (or ``mask != 0``) test on the class-index PNG
  makes it — the report describes no void handling, and that test is what a binary "object vs background"
  mask of a VOC label image gives; every pixel is scored. The explained class is the model's top-1,
  whatever it is, and it is compared with all objects.
- ``clean`` — void pixels are excluded from every count; object = pixels of the VOC classes given
  (all object classes when ``classes`` is None; no pixel at all when it is an empty list — the caller then
  reports the row's scores as undefined, see :func:`compute.metrics.score`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu

from store.maps import SPAN_LIMIT, VOID, ground_truth, minmax_normalise  # noqa: F401 (the metrics' own names)
from store.schema import PROTOCOLS  # noqa: F401 (re-export)


def upsample(heatmap: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size = (H, W)`` (float32). Non-finite values of the map count as 0
    *before* the resize: interpolated, one NaN/inf cell would otherwise spread to every output pixel whose
    bilinear footprint touches it (a band one cell wide around it), not just to its own cell."""
    t = torch.as_tensor(np.asarray(heatmap, dtype=np.float32) if not torch.is_tensor(heatmap) else heatmap)
    t = torch.nan_to_num(t.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)[None, None]
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def otsu_binarise(normalised: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Boolean map of pixels above Otsu's threshold, and the threshold (None for a constant map)."""
    if float(normalised.max()) <= float(normalised.min()):
        return np.zeros(normalised.shape, dtype=bool), None
    t = float(threshold_otsu(normalised, nbins=256))
    return normalised > t, t


def confusion(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[int, int, int, int]:
    pred, gt = pred & valid, gt & valid
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred & ~gt))
    fn = int(np.count_nonzero(~pred & gt))
    tn = int(np.count_nonzero(valid)) - tp - fp - fn
    return tp, fp, fn, tn


def fraction(num, den, also=True, otherwise=None) -> tuple:
    """``(num / den, defined)`` elementwise over floats or float64 arrays: defined where ``den > 0`` and ``also``;
    with ``otherwise``, that value where ``den`` is not positive, and always defined."""
    ok = np.greater(den, 0)
    value = np.divide(num, np.where(ok, den, 1.0))
    if otherwise is not None:
        return np.where(ok, value, otherwise), True
    return value, ok & also


def row_of(columns: dict) -> dict:
    """One row from ``{column: (value, defined)}`` of scalars: undefined values are None."""
    return {c: float(v) if d else None for c, (v, d) in columns.items()}


def localisation_scores(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """IoU, F1, pixel accuracy, precision, recall of a binary map against a binary mask."""
    valid = np.ones(gt.shape, dtype=bool) if valid is None else valid
    return confusion_scores(*confusion(pred.astype(bool), gt.astype(bool), valid.astype(bool)))


def confusion_scores(tp: float, fp: float, fn: float, tn: float) -> dict:
    """The localisation columns from the confusion counts over the valid pixels."""
    return row_of(confusion_columns(tp, fp, fn, tn))


def confusion_columns(tp, fp, fn, tn) -> dict:
    """:func:`confusion_scores` elementwise over floats or float64 arrays of counts, as ``{column: (value,
    defined)}`` (see :func:`fraction`): the one definition of these ratios, for one map or for many."""
    total = tp + fp + fn + tn
    return {
        "iou": fraction(tp, tp + fp + fn),
        "f1": fraction(2 * tp, 2 * tp + fp + fn),
        "pixel_accuracy": fraction(tp + tn, total),
        "precision": fraction(tp, tp + fp, otherwise=0.0),
        "recall": fraction(tp, tp + fn),
        "pred_area": fraction(tp + fp, total),
        "gt_area": fraction(tp + fn, total),
    }


class PreparedMap:
    """Steps 1–3 of the pipeline for one map at one mask size, done once and shared by every protocol and
    metric family that scores the map: ``upsampled`` (raw values, non-finite → 0), ``normalised``, ``binary``,
    ``threshold``, and ``order`` (argsort of the upsampled values, computed on first use)."""

    def __init__(self, heatmap: torch.Tensor | np.ndarray, size: tuple[int, int]):
        up = upsample(heatmap, size)
        self.upsampled = up if np.all(np.isfinite(up)) else np.nan_to_num(up, nan=0.0, posinf=0.0, neginf=0.0)
        self.normalised = minmax_normalise(self.upsampled)
        self.binary, self.threshold = otsu_binarise(self.normalised)
        self._order: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.upsampled.shape)  # type: ignore[return-value]

    @property
    def order(self) -> np.ndarray:
        if self._order is None:
            self._order = np.argsort(self.upsampled.ravel())
        return self._order


def score_map(heatmap: torch.Tensor | np.ndarray, mask: np.ndarray, protocol: str,
              classes: list[int] | None = None, prepared: PreparedMap | None = None) -> dict:
    """The whole pipeline for one map and one mask; adds the Otsu ``threshold`` to the scores."""
    prep = prepared if prepared is not None else PreparedMap(heatmap, mask.shape)
    gt, valid = ground_truth(mask, protocol, classes)
    return {**localisation_scores(prep.binary, gt, valid), "threshold": prep.threshold}

"""Scores of explanation maps against ground truth, grouped by family.

- :mod:`compute.metrics.localisation` — the source protocol: upsample, min-max, Otsu, IoU/F1/pixel accuracy;
- :mod:`compute.metrics.threshold_free` — relevance mass / rank accuracy, pointing game, ROC-AUC on the raw map;
- :mod:`compute.metrics.cue` — planted-cue diagnostics (mass and Otsu IoU on the cue vs the object), for images
  whose ``extra_masks`` carry a ``"cue"`` mask;
- :mod:`compute.metrics.faithfulness` — deletion / insertion curves (extra forward passes; the runner calls it
  per batch, not :func:`score`);

:func:`score` is the definition for one map of one image under one protocol; each family adds its columns (named
in ``store.schema.METRICS``) to the row it returns. The batch job calls :func:`compute.metrics.batched.score_image`,
which computes the same columns for every map of an image and every protocol at once, on the GPU when the maps
are there (tested equal to :func:`score`).
"""

from __future__ import annotations

import numpy as np

from compute.metrics.localisation import (
    PROTOCOLS, PreparedMap, ground_truth, localisation_scores, minmax_normalise, otsu_binarise, score_map, upsample,
)
from compute.metrics.cue import cue_scores
from compute.metrics.threshold_free import THRESHOLD_FREE_COLUMNS, threshold_free_scores

LOCALISATION_COLUMNS = ("iou", "f1", "pixel_accuracy", "precision", "recall", "pred_area", "gt_area", "threshold")


def score(heatmap, mask: np.ndarray, protocol: str, gt_classes: list[int] | None = None,
          extra_masks: dict[str, np.ndarray] | None = None, prepared: PreparedMap | None = None) -> dict:
    """Every per-map metric for one map against one image's ground truth.

    ``mask`` is the class-index mask (0 background, 255 void); ``gt_classes`` restricts the object mask to
    those classes under the ``clean`` protocol (None: all object classes; an empty list: the explained class
    has no pixels in this image, so there is nothing to localise and every localisation score is None);
    ``extra_masks`` carries further boolean masks of the image (e.g. a planted cue) for the families that use
    them; ``prepared`` shares the upsampling, Otsu and sort of one map between protocols.
    """
    prep = prepared if prepared is not None else PreparedMap(heatmap, mask.shape)
    if gt_classes is not None and len(gt_classes) == 0 and protocol != "report":
        row = {c: None for c in LOCALISATION_COLUMNS + THRESHOLD_FREE_COLUMNS}
    else:
        gt, valid = ground_truth(mask, protocol, gt_classes)
        row = {**localisation_scores(prep.binary, gt, valid), "threshold": prep.threshold}
        row.update(threshold_free_scores(prep.upsampled, gt, valid, order=prep.order))
    if extra_masks is not None and "cue" in extra_masks:
        row.update(cue_scores(heatmap, mask, extra_masks["cue"], protocol, gt_classes, prepared=prep))
    return row


__all__ = ["PROTOCOLS", "PreparedMap", "score", "ground_truth", "localisation_scores", "minmax_normalise",
           "otsu_binarise", "score_map", "threshold_free_scores", "upsample", "LOCALISATION_COLUMNS",
           "THRESHOLD_FREE_COLUMNS"]

"""Scores of explanation maps against ground truth, grouped by family.

- :mod:`compute.metrics.localisation` — the source protocol: upsample, min-max, Otsu, IoU/F1/pixel accuracy;

:func:`score` is what the batch job calls for one map of one image under one protocol; each family adds its
columns (named in ``store.schema.METRICS``) to the row it returns.
"""

from __future__ import annotations

import numpy as np

from compute.metrics.localisation import (
    PROTOCOLS, ground_truth, localisation_scores, minmax_normalise, otsu_binarise, score_map, upsample,
)


def score(heatmap, mask: np.ndarray, protocol: str, gt_classes: list[int] | None = None,
          extra_masks: dict[str, np.ndarray] | None = None) -> dict:
    """Every per-map metric for one map against one image's ground truth.

    ``mask`` is the class-index mask (0 background, 255 void); ``gt_classes`` restricts the object mask to
    those classes under the ``clean`` protocol; ``extra_masks`` carries further boolean masks of the image
    (e.g. a planted cue) for the families that use them.
    """
    return score_map(heatmap, mask, protocol, gt_classes)


__all__ = ["PROTOCOLS", "score", "ground_truth", "localisation_scores", "minmax_normalise", "otsu_binarise",
           "score_map", "upsample"]

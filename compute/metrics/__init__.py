"""Scores of explanation maps against ground truth, grouped by family (localisation, threshold-free, ...)."""

from compute.metrics.localisation import (
    PROTOCOLS, ground_truth, localisation_scores, minmax_normalise, otsu_binarise, upsample,
)

__all__ = ["PROTOCOLS", "ground_truth", "localisation_scores", "minmax_normalise", "otsu_binarise", "upsample"]

"""Threshold-free localisation: how a map's values, not a binarised version of them, sit on the object mask.

All four read the map bilinearly upsampled to the mask's size (raw values, no min-max normalisation;
non-finite values count as 0) and only the *valid* pixels of the protocol (all pixels under ``report``,
non-void pixels under ``clean``). With ``R`` the map, ``M`` the object mask, ``K = |M|`` (valid object
pixels) and ``n`` the number of valid pixels:

- **relevance mass accuracy** (Arras et al. 2022, CLEVR-XAI): ``sum(R⁺ on M) / sum(R⁺)`` with ``R⁺ =
  max(R, 0)`` — the share of the positive relevance that falls on the object;
- **relevance rank accuracy** (same paper): the share of the ``K`` highest-valued pixels that lie on the
  object. Ties at the K-th value are split evenly: every pixel of the tied group at the cut counts with the
  same weight (the expectation over random tie-breaking), so the result does not depend on pixel order and a
  constant map scores ``K / n`` (chance);
- **pointing game** (Zhang et al. 2018, without tolerance): 1 if the map's maximum lies on the object, else 0;
  when several pixels share the maximum, the share of them that lies on the object (again the expectation
  over random tie-breaking — a constant map scores ``K / n``, not a free hit);
- **ROC-AUC** of the map's values as a score separating object from background pixels (ties count ½, as in
  the Mann–Whitney statistic and ``sklearn.metrics.roc_auc_score``).

Undefined cases are ``None`` (stored as NULL, skipped by averages): every metric when there is no valid
object pixel (an empty mask, or a mask of void only under ``clean``); ROC-AUC also when every valid pixel is
object (no background to separate from); relevance mass also when the map has no positive value.
"""

from __future__ import annotations

import numpy as np

THRESHOLD_FREE_COLUMNS = ("relevance_mass", "relevance_rank", "pointing_game", "roc_auc")


def _sorted_view(values: np.ndarray, gt: np.ndarray, valid: np.ndarray,
                 order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Valid pixels' values in ascending order, and whether each is object."""
    flat_v, flat_g, flat_ok = values.ravel(), gt.ravel(), valid.ravel()
    if order is None:
        order = np.argsort(flat_v)  # ties are grouped below, so their order does not matter
    if not flat_ok.all():
        order = order[flat_ok[order]]
    return flat_v[order], flat_g[order]


def threshold_free_scores(values: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                          order: np.ndarray | None = None) -> dict:
    """The four metrics for one map (already at the mask's size) against one boolean mask.

    ``order`` may pass a precomputed ``argsort(values.ravel())`` so that several protocols share one sort.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.floating):
        values = values.astype(np.float64)
    if not np.all(np.isfinite(values)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        order = None
    gt = np.asarray(gt, dtype=bool)
    valid = np.ones(gt.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if values.shape != gt.shape or valid.shape != gt.shape:
        raise ValueError(f"map {values.shape}, mask {gt.shape} and valid {valid.shape} must have one shape")
    gt = gt & valid
    out: dict = {c: None for c in THRESHOLD_FREE_COLUMNS}
    n_pos = int(np.count_nonzero(gt))
    n = int(np.count_nonzero(valid))
    if n_pos == 0:
        return out
    n_neg = n - n_pos

    positive = np.maximum(values, 0)
    total = float(positive.sum(where=valid, dtype=np.float64))
    if total > 0:
        out["relevance_mass"] = float(positive.sum(where=gt, dtype=np.float64)) / total

    sv, sg = _sorted_view(values, gt, valid, order)
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])           # first index of each tie group
    counts = np.diff(np.r_[starts, n]).astype(np.float64)              # group sizes
    hits = np.add.reduceat(sg.astype(np.float64), starts)              # object pixels per group

    # pointing game: the group of the maximum
    out["pointing_game"] = float(hits[-1] / counts[-1])

    # rank accuracy: the top n_pos pixels, the group at the cut weighted by how much of it fits
    above = np.cumsum(counts[::-1])                                    # pixels at or above each group, top first
    before = above - counts[::-1]
    take = np.clip(n_pos - before, 0.0, counts[::-1])                  # how many of each group are in the top K
    out["relevance_rank"] = float((hits[::-1] * take / counts[::-1]).sum() / n_pos)

    # ROC-AUC via the rank-sum (Mann–Whitney U) with mid-ranks for ties
    if n_neg > 0:
        mid_rank = starts + (counts + 1.0) / 2.0                       # 1-based average rank of each group
        rank_sum = float((hits * mid_rank).sum())
        out["roc_auc"] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return out


__all__ = ["THRESHOLD_FREE_COLUMNS", "threshold_free_scores"]

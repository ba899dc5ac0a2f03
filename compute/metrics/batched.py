"""All per-map scores of one image at once: every map of the image, every protocol, on the maps' device.

:func:`compute.metrics.score` is the readable definition — one map, one protocol, NumPy — and stays what the
families' documentation and tests describe. Scoring a VOC split with a dozen methods that way costs ~30 ms of
one core per map (the argsort of ~190k upsampled pixels dominates), which on a GPU box takes far longer than
explaining. :func:`score_image` computes the same columns for the ``K`` maps of one image and ``R``
ground-truth requests (protocol + classes) together, in torch, on whatever device the maps are on:

- upsampling: one ``F.interpolate`` per map resolution (the same bilinear kernel as :func:`upsample`);
- min-max normalisation and the Otsu histogram on the device; Otsu's choice of bin is then made on the CPU
  from the ``K × 256`` counts with scikit-image's own float32 arithmetic (:func:`store.maps.otsu_thresholds`), so the
  threshold is bit-for-bit the one ``skimage.filters.threshold_otsu`` returns;
- confusion counts of the Otsu masks: products of ``[K, pixels]`` and ``[pixels, R]`` 0/1 matrices;
- threshold-free metrics: one sort per map, shared by every request; tie groups are found on the sorted
  values and their pixel and object counts accumulated per request (void pixels weigh 0, which leaves the
  groups of the valid pixels exactly as the reference forms them); mid-ranks, the top-``K`` cut and the
  maximum's group then follow :mod:`compute.metrics.threshold_free` in float64;
- the cue family (only when a cue mask is given) from the same normalised and binary maps.

Sums run in another order than NumPy's, so float64 results can differ from the reference in the last bits
(tested to 1e-9); counts, thresholds and the undefined (``None``) cases are identical.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compute.metrics.cue import cue_scores_from_sums
from compute.metrics import LOCALISATION_COLUMNS
from compute.metrics.localisation import SPAN_LIMIT, confusion_scores
from compute.metrics.threshold_free import THRESHOLD_FREE_COLUMNS
from store.maps import OTSU_BINS, ground_truth, otsu_thresholds


def _ground_truths(mask: np.ndarray, requests: Sequence[tuple[str, list[int] | None]], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, N]`` object masks (already restricted to valid pixels) and ``[R, N]`` valid masks on ``device``:
    :func:`store.maps.ground_truth` of each request, the one definition of the protocols."""
    pairs = [ground_truth(mask, protocol, classes) for protocol, classes in requests]
    gts = np.stack([gt.reshape(-1) for gt, _ in pairs])
    valids = np.stack([valid.reshape(-1) for _, valid in pairs])
    return torch.from_numpy(gts).to(device), torch.from_numpy(valids).to(device)


def _prepare(maps: Sequence[torch.Tensor | np.ndarray], size: tuple[int, int], device: torch.device
             ) -> torch.Tensor:
    """``[K, H, W]`` float32: each map, non-finite values set to 0, bilinearly upsampled to ``size``."""
    out = torch.empty((len(maps), *size), dtype=torch.float32, device=device)
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    for shape, idx in by_shape.items():
        t = torch.stack([torch.as_tensor(maps[i]) for i in idx]).to(device=device, dtype=torch.float32)
        t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)       # before the resize, as upsample()
        if tuple(shape) != tuple(size):
            t = F.interpolate(t[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        out[idx] = t
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def score_image(maps: Sequence[torch.Tensor | np.ndarray], mask: np.ndarray | torch.Tensor,
                requests: Sequence[tuple[str, list[int] | None]], cue: np.ndarray | torch.Tensor | None = None,
                device: torch.device | str | None = None) -> list[list[dict]]:
    """Scores of ``maps`` (each 2-D, any resolution) against one image's class-index ``mask`` for each
    ``(protocol, gt_classes)`` request; ``result[k][r]`` equals ``score(maps[k], mask, *requests[r],
    extra_masks={"cue": cue} if cue is not None else None)``. ``device`` defaults to the first map's."""
    if not len(maps):
        return []
    if device is None:
        device = maps[0].device if torch.is_tensor(maps[0]) else torch.device("cpu")
    device = torch.device(device)
    mask_np = mask.cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    size = tuple(mask_np.shape)
    K, R = len(maps), len(requests)
    values = _prepare(maps, size, device).reshape(K, -1)               # raw upsampled values
    N = values.shape[1]
    gts, valids = _ground_truths(mask_np, requests, device)

    # min-max normalisation; a constant map becomes zeros and marks no pixel
    lo, hi = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    wide = (hi.double() - lo.double()) > SPAN_LIMIT                     # as minmax_normalise: halve (exactly)
    half = torch.where(wide, 0.5, 1.0).to(values.dtype)                 # x * 1.0 is exact: no sync, no branch
    values_n, lo, hi = values * half, lo * half, hi * half
    span = hi - lo
    const = (span <= 0)[:, 0]
    norm = torch.where(span > 0, (values_n - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(values))
    # Otsu: 256 bins over [0, 1] (values*256 is exact in float32; 1.0 goes to the last bin)
    bins = (norm * OTSU_BINS).long().clamp_(max=OTSU_BINS - 1)
    counts = torch.zeros((K, OTSU_BINS), dtype=torch.int64, device=device).scatter_add_(
        1, bins, torch.ones_like(bins))
    thresholds = otsu_thresholds(counts.cpu().numpy())                  # the one sync before the end
    binary = (norm > torch.from_numpy(thresholds).to(device)[:, None]) & ~const[:, None]

    # confusion counts, [K, R]: float32 products of 0/1 matrices are exact below 2**24 pixels
    cdt = torch.float32 if N < 2**24 else torch.float64
    pred, gtf, vf = binary.to(cdt), gts.to(cdt), valids.to(cdt)
    tp = pred @ gtf.T
    pred_valid = pred @ vf.T
    n_valid = vf.sum(dim=1)[None].expand(K, R)
    n_gt = gtf.sum(dim=1)[None].expand(K, R)

    # relevance mass, [K, R]
    positive = values.clamp(min=0).double()
    mass_total = positive @ valids.double().T
    mass_on = positive @ gts.double().T

    # threshold-free: one sort per map, tie groups counted per request
    sv, order = torch.sort(values, dim=1)
    new_group = torch.ones_like(sv, dtype=torch.bool)
    new_group[:, 1:] = sv[:, 1:] != sv[:, :-1]
    gid = (torch.cumsum(new_group, dim=1) - 1) + torch.arange(K, device=device)[:, None] * N
    gid = gid.reshape(-1)
    ar = torch.arange(N, device=device)
    pointing, rank, auc = (torch.full((K, R), float("nan"), dtype=torch.float64, device=device)
                           for _ in range(3))
    for r in range(R):
        w = valids[r][order].double().reshape(-1)
        h = gts[r][order].double().reshape(-1)
        c = torch.zeros(K * N, dtype=torch.float64, device=device).index_add_(0, gid, w).view(K, N)
        hits = torch.zeros(K * N, dtype=torch.float64, device=device).index_add_(0, gid, h).view(K, N)
        n_pos, n = hits.sum(dim=1), c.sum(dim=1)
        safe_c = c.clamp(min=1.0)                                        # empty groups have no hits either
        last = ((c > 0) * ar).amax(dim=1, keepdim=True)                  # the maximum's group
        pointing[:, r] = hits.gather(1, last)[:, 0] / safe_c.gather(1, last)[:, 0]
        incl = torch.cumsum(c, dim=1)                                    # valid pixels in groups <= g
        take = torch.minimum((n_pos[:, None] - (n[:, None] - incl)).clamp_(min=0.0), c)  # share of the top n_pos
        rank[:, r] = (hits * take / safe_c).sum(dim=1) / n_pos
        rank_sum = (hits * (incl - (c - 1.0) / 2.0)).sum(dim=1)           # mid-rank of each group, 1-based
        auc[:, r] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos))

    stats = [tp, pred_valid, n_valid, n_gt, mass_total, mass_on, pointing, rank, auc]
    if cue is not None:
        cue_t = torch.as_tensor(np.asarray(cue) if not torch.is_tensor(cue) else cue).to(device).reshape(-1)
        if cue_t.shape[0] != N:
            raise ValueError(f"cue mask has {cue_t.shape[0]} pixels, class mask {N}")
        cue_r = cue_t.bool()[None] & valids                              # [R, N]
        obj_r = gts & ~cue_r
        nd = norm.double()
        stats += [nd @ valids.double().T, nd @ cue_r.double().T, nd @ obj_r.double().T,
                  pred @ cue_r.to(cdt).T, pred @ obj_r.to(cdt).T,
                  cue_r.to(cdt).sum(dim=1)[None].expand(K, R), obj_r.to(cdt).sum(dim=1)[None].expand(K, R)]
    table = torch.stack([s.double() for s in stats], dim=-1).cpu().numpy()  # [K, R, S]

    out: list[list[dict]] = []
    for k in range(K):
        per_map = []
        for r, (protocol, classes) in enumerate(requests):
            row = _row(table[k, r], None if const[k] else float(thresholds[k]),
                       undefined=classes is not None and len(classes) == 0 and protocol != "report")
            if cue is not None:
                row.update(_cue_row(table[k, r, 9:], float(table[k, r, 1]), float(table[k, r, 2])))
            per_map.append(row)
        out.append(per_map)
    return out


def _row(s: np.ndarray, threshold: float | None, undefined: bool) -> dict:
    tp, pred_valid, n_valid, n_gt, mass_total, mass_on, pointing, rank, auc = (float(v) for v in s[:9])
    if undefined:
        return {c: None for c in LOCALISATION_COLUMNS + THRESHOLD_FREE_COLUMNS}
    fp, fn = pred_valid - tp, n_gt - tp
    row = {**confusion_scores(tp, fp, fn, n_valid - tp - fp - fn), "threshold": threshold}
    tf = {c: None for c in THRESHOLD_FREE_COLUMNS}
    if n_gt > 0:
        tf["pointing_game"] = pointing
        tf["relevance_rank"] = rank
        if mass_total > 0:
            tf["relevance_mass"] = mass_on / mass_total
        if n_valid - n_gt > 0:
            tf["roc_auc"] = auc
    row.update(tf)
    return row


def _cue_row(s: np.ndarray, pred_valid: float, n_valid: float) -> dict:
    total, on_cue, on_obj, pred_cue, pred_obj, n_cue, n_obj = (float(v) for v in s[:7])
    return cue_scores_from_sums(total, on_cue, on_obj, pred_valid, pred_cue, pred_obj, n_cue, n_obj, n_valid)


__all__ = ["score_image"]

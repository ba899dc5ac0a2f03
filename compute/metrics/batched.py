"""All per-map scores of a batch of images at once: every map of every image, every protocol, on the maps'
device.

:func:`compute.metrics.score` is the readable definition — one map, one protocol, NumPy — and stays what the
families' documentation and tests describe. Scoring a VOC split with a dozen methods that way costs ~30 ms of
one core per map (the argsort of ~190k upsampled pixels dominates), which on a GPU box takes far longer than
explaining. :func:`score_images` computes the same columns for all maps of a batch's images and their
ground-truth requests (protocol + classes) together, in torch, on whatever device the maps are on. The maps
of images of one size go through each step as one ``[M, pixels]`` tensor, cut into chunks of at most
:data:`MAX_PIXELS` map pixels, so small images cost a few tensor operations per batch and memory stays
bounded whatever the number of methods or the image size:

- upsampling: one ``F.interpolate`` per map resolution (the same bilinear kernel as :func:`upsample`);
- min-max normalisation and the Otsu histogram on the device; Otsu's choice of bin is then made on the CPU
  from the ``M × 256`` counts with scikit-image's own float32 arithmetic (:func:`store.maps.otsu_thresholds`),
  so the threshold is bit-for-bit the one ``skimage.filters.threshold_otsu`` returns;
- confusion counts and relevance mass of each map against its own image's request masks (gathered per map);
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


#: the most map pixels (maps × pixels per map) scored at once on a GPU, where fewer, larger operations pay;
#: peak memory is about 100 bytes per such pixel, so a chunk stays near 1 GB however many methods there are —
#: and a single map of a huge image (e.g. 6000×4000) is scored alone in about 2.4 GB
MAX_PIXELS = 1 << 23
#: the same on a CPU, where a chunk that stays in cache is faster than a large one (measured, one thread:
#: 13 maps of 375×500 images 300 ms/image at 2**19 or 2**17, 450 ms at 2**23)
MAX_PIXELS_CPU = 1 << 19

#: one image to score: its maps (each 2-D, any resolution), class-index mask, ``(protocol, gt_classes)``
#: requests and optional cue mask
Item = tuple[Sequence[torch.Tensor | np.ndarray], "np.ndarray | torch.Tensor", Sequence[tuple[str, list[int] | None]],
             "np.ndarray | torch.Tensor | None"]


def score_image(maps: Sequence[torch.Tensor | np.ndarray], mask: np.ndarray | torch.Tensor,
                requests: Sequence[tuple[str, list[int] | None]], cue: np.ndarray | torch.Tensor | None = None,
                device: torch.device | str | None = None) -> list[list[dict]]:
    """Scores of ``maps`` (each 2-D, any resolution) against one image's class-index ``mask`` for each
    ``(protocol, gt_classes)`` request; ``result[k][r]`` equals ``score(maps[k], mask, *requests[r],
    extra_masks={"cue": cue} if cue is not None else None)``. ``device`` defaults to the first map's."""
    return score_images([(maps, mask, requests, cue)], device=device)[0]


def score_images(items: Sequence[Item], device: torch.device | str | None = None,
                 max_pixels: int | None = None) -> list[list[list[dict]]]:
    """:func:`score_image` of every item, ``result[i][k][r]``, computed together: the maps of images of one
    size (and the same number of requests, with or without a cue) go through each step as one tensor, in
    chunks of at most ``max_pixels`` map pixels, so the cost per image of a batch of small images is a few
    tensor operations, and memory is bounded whatever the number of maps or the image size. ``max_pixels``
    defaults to :data:`MAX_PIXELS` on a GPU and :data:`MAX_PIXELS_CPU` on a CPU."""
    out: list[list[list[dict]]] = [[] for _ in items]
    groups: dict[tuple, list[int]] = {}
    for i, (maps, mask, requests, cue) in enumerate(items):
        if len(maps):
            groups.setdefault((tuple(mask.shape), cue is not None, len(requests)), []).append(i)
    for (size, _, _), idx in groups.items():
        n = max(1, size[0] * size[1])
        pairs = [(i, k) for i in idx for k in range(len(items[i][0]))]
        dev = _device_of(items[idx[0]][0][0], device)
        limit = max_pixels or (MAX_PIXELS_CPU if dev.type == "cpu" else MAX_PIXELS)
        step = max(1, limit // n)
        for start in range(0, len(pairs), step):
            chunk = pairs[start:start + step]
            for (i, k), rows in zip(chunk, _score_chunk(items, chunk, size, dev)):
                if not out[i]:
                    out[i] = [None] * len(items[i][0])
                out[i][k] = rows
    return out


def _device_of(first_map, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return first_map.device if torch.is_tensor(first_map) else torch.device("cpu")


def _as_tensor(x, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device)


def _score_chunk(items: Sequence[Item], chunk: list[tuple[int, int]], size: tuple[int, int],
                 device: torch.device) -> list[list[dict]]:
    """The rows of the maps ``chunk`` names (``(item, map)`` pairs of images of one ``size``): ``[M][R]``."""
    images = sorted({i for i, _ in chunk})
    slot = {i: b for b, i in enumerate(images)}
    img = torch.tensor([slot[i] for i, _ in chunk], device=device)    # [M] each map's image
    truths = [_ground_truths(items[i][1].cpu().numpy() if torch.is_tensor(items[i][1]) else np.asarray(items[i][1]),
                             items[i][2], device) for i in images]
    gts, valids = torch.stack([t[0] for t in truths]), torch.stack([t[1] for t in truths])  # [B, R, N]
    M, R, N = len(chunk), gts.shape[1], gts.shape[2]
    values = _prepare([items[i][0][k] for i, k in chunk], size, device).reshape(M, N)   # raw upsampled

    # min-max normalisation; a constant map becomes zeros and marks no pixel
    lo, hi = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)
    wide = (hi.double() - lo.double()) > SPAN_LIMIT                     # as minmax_normalise: halve (exactly)
    half = torch.where(wide, 0.5, 1.0).to(values.dtype)                 # x * 1.0 is exact: no sync, no branch
    lo, hi = lo * half, hi * half
    span = hi - lo
    const = (span <= 0)[:, 0]
    norm = torch.where(span > 0, (values * half - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                       torch.zeros_like(values))
    # Otsu: 256 bins over [0, 1] (values*256 is exact in float32; 1.0 goes to the last bin)
    bins = (norm * OTSU_BINS).long().clamp_(max=OTSU_BINS - 1)
    counts = torch.zeros((M, OTSU_BINS), dtype=torch.int64, device=device).scatter_add_(1, bins, torch.ones_like(bins))
    del bins
    thresholds = otsu_thresholds(counts.cpu().numpy())                  # the one sync before the end
    binary = (norm > torch.from_numpy(thresholds).to(device)[:, None]) & ~const[:, None]

    cues = _cues(items, images, N, device) if items[chunk[0][0]][3] is not None else None
    stats = torch.full((M, R, 9 + (7 if cues is not None else 0)), float("nan"), dtype=torch.float64, device=device)
    _mask_sums(stats, img, binary, values.clamp(min=0), norm, gts, valids, cues)
    del norm
    _threshold_free_stats(stats, values, img, gts, valids)
    table = stats.cpu().numpy()

    rows = []
    for m, (i, _) in enumerate(chunk):
        requests = items[i][2]
        per_map = []
        for r, (protocol, classes) in enumerate(requests):
            row = _row(table[m, r], None if const[m] else float(thresholds[m]),
                       undefined=classes is not None and len(classes) == 0 and protocol != "report")
            if table.shape[2] > 9:
                row.update(_cue_row(table[m, r, 9:], float(table[m, r, 1]), float(table[m, r, 2])))
            per_map.append(row)
        rows.append(per_map)
    return rows


def _cues(items: Sequence[Item], images: list[int], n: int, device: torch.device) -> torch.Tensor:
    """``[B, N]`` cue masks of the chunk's images."""
    cues = []
    for i in images:
        c = _as_tensor(items[i][3], device).reshape(-1)
        if c.shape[0] != n:
            raise ValueError(f"cue mask has {c.shape[0]} pixels, class mask {n}")
        cues.append(c.bool())
    return torch.stack(cues)


def _mask_sums(stats, img, binary, positive, norm, gts, valids, cues) -> None:
    """Columns 0-5 of ``stats`` (confusion counts and relevance mass) and, with ``cues``, 9-15 (the cue family's
    sums, see :func:`_cue_row`): per image, its maps (binary, positive part, normalised) times each of its
    request masks, as float64 matrix-vector products (0/1 counts are exact; sums are float64)."""
    for b in range(gts.shape[0]):
        rows = (img == b).nonzero()[:, 0]
        if not len(rows):
            continue
        k = len(rows)
        maps = torch.cat([binary[rows], positive[rows], norm[rows]]).double()    # [3k, N]
        for r in range(gts.shape[1]):
            g, v = gts[b, r], valids[b, r]
            on_v, on_g = maps @ v.double(), maps @ g.double()
            stats[rows, r, 0], stats[rows, r, 1] = on_g[:k], on_v[:k]             # tp, predicted valid
            stats[rows, r, 2], stats[rows, r, 3] = float(v.sum()), float(g.sum())
            stats[rows, r, 4], stats[rows, r, 5] = on_v[k:2 * k], on_g[k:2 * k]   # mass total, on object
            if cues is not None:
                cue_r = cues[b] & v
                obj_r = g & ~cue_r
                on_cue, on_obj = maps @ cue_r.double(), maps @ obj_r.double()
                stats[rows, r, 9], stats[rows, r, 10], stats[rows, r, 11] = on_v[2 * k:], on_cue[2 * k:], on_obj[2 * k:]
                stats[rows, r, 12], stats[rows, r, 13] = on_cue[:k], on_obj[:k]
                stats[rows, r, 14], stats[rows, r, 15] = float(cue_r.sum()), float(obj_r.sum())


def _threshold_free_stats(stats, values, img, gts, valids) -> None:
    """Columns 6-8 of ``stats`` (pointing game, relevance rank, ROC-AUC): one sort per map, shared by every
    request; tie groups counted per request (see the module doc)."""
    M, N = values.shape
    device = values.device
    sv, order = torch.sort(values, dim=1)
    new_group = torch.ones_like(sv, dtype=torch.bool)
    new_group[:, 1:] = sv[:, 1:] != sv[:, :-1]
    del sv
    gid = ((torch.cumsum(new_group, dim=1) - 1) + torch.arange(M, device=device)[:, None] * N).reshape(-1)
    del new_group
    ar = torch.arange(N, device=device)
    counts = torch.float32 if N < 2**24 else torch.float64                # integer counts, exact either way
    at = (order + img[:, None] * N).reshape(-1)                         # each sorted pixel in its image's masks
    for r in range(gts.shape[1]):
        w = valids[:, r].reshape(-1)[at].to(counts)
        h = gts[:, r].reshape(-1)[at].to(counts)
        c = torch.zeros(M * N, dtype=counts, device=device).index_add_(0, gid, w).view(M, N)
        hits = torch.zeros(M * N, dtype=counts, device=device).index_add_(0, gid, h).view(M, N)
        del w, h
        n_pos, n = hits.sum(dim=1, dtype=torch.float64), c.sum(dim=1, dtype=torch.float64)
        last = ((c > 0) * ar).amax(dim=1, keepdim=True)                  # the maximum's group
        stats[:, r, 6] = hits.gather(1, last)[:, 0].double() / c.gather(1, last)[:, 0].double().clamp(min=1.0)
        incl = torch.cumsum(c, dim=1)                                    # valid pixels in groups <= g
        # only groups with object pixels contribute below: take them alone, in float64
        m_idx, g_idx = (hits > 0).nonzero(as_tuple=True)
        hv, cv, iv = (t[m_idx, g_idx].double() for t in (hits, c, incl))
        del c, hits, incl
        take = torch.minimum((n_pos[m_idx] - (n[m_idx] - iv)).clamp_(min=0.0), cv)  # share of the top n_pos
        zero = torch.zeros(M, dtype=torch.float64, device=device)
        stats[:, r, 7] = zero.index_add(0, m_idx, hv * take / cv) / n_pos
        rank_sum = zero.index_add(0, m_idx, hv * (iv - (cv - 1.0) / 2.0))  # mid-rank of each group, 1-based
        stats[:, r, 8] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos))


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


__all__ = ["MAX_PIXELS", "MAX_PIXELS_CPU", "score_image", "score_images"]

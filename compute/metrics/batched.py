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
- min-max normalisation, Otsu's histogram and threshold, the binary map; Otsu's choice of bin is made on the
  CPU from the ``M × 256`` counts with scikit-image's own float32 arithmetic (:func:`store.maps.otsu_thresholds`),
  so the threshold is bit-for-bit the one ``skimage.filters.threshold_otsu`` returns;
- the requests' masks: a request whose object and valid masks equal another's on the same image (``clean``
  and ``report`` on an image of one class without void pixels) is scored once and its row copied;
- relevance mass (and the cue family's sums): each image's maps against its distinct masks, all of a chunk's
  images at once, as float64 matrix products;
- threshold-free metrics: one sort per map, shared by every request;
- the cue family (only when a cue mask is given) from the same normalised and binary maps.

On a CPU, one NumPy sort of the chunk's maps serves everything that depends on the order of the pixels
(:mod:`compute.metrics.sorted_maps`): each pixel becomes a 64-bit key — its row, its value's float32 bits made
order-preserving, every request's valid and object bits (and the cue's) — and Otsu's histograms, the binary
maps' counts and the rank-based scores are read from the sorted keys by binary searches, without another pass
over the pixels. Where every pixel is valid under every request (no void pixel: the planted-cue images), the
masks' sums come from the sort too: a mask's pixels are a set of sorted positions, and its relevance mass or
normalised mass is the float64 sum of the values read back from their keys; only the sums over all pixels
take a pass over the maps. On a GPU (and where a chunk's keys would not fit) the same columns come from
tensor operations: Otsu's histogram by ``bincount`` of the normalised maps, the binary maps' counts by a
float32 matrix product (exact), and the rank-based scores from runs of equal values in a sort of keys whose
high word is the value and whose low word carries the requests' bits: per object pixel, the valid pixels
below its run and up to its run's end give its mid-rank and its share of the top-``K`` cut, and the maximum's
run gives the pointing game — the formulas of :mod:`compute.metrics.threshold_free` in float64 (void pixels
weigh 0, which leaves the runs of the valid pixels exactly as the reference forms them).

Sums run in another order than NumPy's, so float64 results can differ from the reference in the last bits
(tested to 1e-9); counts, thresholds and the undefined (``None``) cases are identical.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compute.metrics.cue import cue_columns
from compute.metrics import LOCALISATION_COLUMNS
from compute.metrics.localisation import SPAN_LIMIT, confusion_columns, fraction
from compute.metrics.sorted_maps import SortedMaps, fits
from compute.metrics.threshold_free import THRESHOLD_FREE_COLUMNS
from store.maps import OTSU_BINS, ground_truth, otsu_thresholds


class _Masks:
    """The distinct ground-truth masks of a chunk's images: a request whose object and valid masks equal an
    earlier request's of the same image (``clean`` and ``report`` on an image of one class without void
    pixels) is scored once, and its rows are copied.

    ``gts`` and ``valids`` are ``[B, U, N]`` (``U`` the most distinct masks of any image; an image with fewer
    has empty masks in its spare slots, which no row reads); ``slot[b][r]`` is request ``r``'s slot."""

    def __init__(self, items: Sequence[Item], images: list[int], device: torch.device):
        per_image, self.slot = [], []
        for i in images:
            mask = items[i][1].cpu().numpy() if torch.is_tensor(items[i][1]) else np.asarray(items[i][1])
            distinct, slots = [], []
            for protocol, classes in items[i][2]:
                gt, valid = (m.reshape(-1) for m in ground_truth(mask, protocol, classes))
                same = [u for u, (g, v) in enumerate(distinct) if np.array_equal(g, gt) and np.array_equal(v, valid)]
                if not same:
                    distinct.append((gt, valid))
                slots.append(same[0] if same else len(distinct) - 1)
            per_image.append(distinct)
            self.slot.append(slots)
        n = per_image[0][0][0].shape[0]
        self.n_slots = max(len(d) for d in per_image)
        #: per slot: every pixel is valid in every image that uses it (spare slots' empty masks aside)
        self.all_valid = [all(d[u][1].all() for d in per_image if u < len(d)) for u in range(self.n_slots)]
        gts = np.zeros((len(images), self.n_slots, n), dtype=bool)
        valids = np.zeros_like(gts)
        for b, distinct in enumerate(per_image):
            for u, (gt, valid) in enumerate(distinct):
                gts[b, u], valids[b, u] = gt, valid
        self.gts, self.valids = torch.from_numpy(gts).to(device), torch.from_numpy(valids).to(device)


def _prepare(maps: Sequence[torch.Tensor | np.ndarray], size: tuple[int, int], device: torch.device
             ) -> torch.Tensor:
    """``[K, H, W]`` float32: each map, non-finite values set to 0, bilinearly upsampled to ``size``."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(tuple(m.shape), []).append(i)
    out = None if len(by_shape) == 1 else torch.empty((len(maps), *size), dtype=torch.float32, device=device)
    for shape, idx in by_shape.items():
        t = torch.stack([torch.as_tensor(maps[i]) for i in idx]).to(device=device, dtype=torch.float32)
        t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)       # before the resize, as upsample()
        if tuple(shape) != tuple(size):
            # a weighted mean of finite values is finite unless they are near float32's limit
            near_limit = bool(t.abs().amax() > SPAN_LIMIT / 2) if t.numel() else False
            t = F.interpolate(t[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
            if near_limit:
                t = torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)
        if out is None:
            return t
        out[idx] = t
    return out


#: the most map pixels (maps × pixels per map) scored at once on a GPU, where fewer, larger operations pay;
#: peak memory is about 100 bytes per such pixel, so a chunk stays near 1 GB however many methods there are —
#: and a single map of a huge image (e.g. 6000×4000) is scored alone in about 2.4 GB
MAX_PIXELS = 1 << 23
#: the same on a CPU, where a chunk that stays near the cache is faster than a large one (measured, one thread:
#: the demo's 3,000 maps of 96×96 pixels 0.675 s at 2**19 and 2**20, 0.75 s at 2**18 and 2**21, 0.77 s at 2**22)
MAX_PIXELS_CPU = 1 << 20
#: a chunk may grow to this many times its limit to hold all of one image's maps, which then share their
#: masks' work (13 maps of a 375×500 image under two protocols, one thread: 0.058 s/image as one chunk,
#: 0.065 s in chunks of 2**20 pixels)
WHOLE_IMAGE_SLACK = 4

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
    size (and the same numbers of maps and requests, with or without a cue) go through each step as one
    tensor, in chunks of at most ``max_pixels`` map pixels, so the cost per image of a batch of small images is
    a few tensor operations, and memory is bounded whatever the number of maps or the image size. ``max_pixels``
    defaults to :data:`MAX_PIXELS` on a GPU and :data:`MAX_PIXELS_CPU` on a CPU; on a CPU the work runs on
    one thread (see :func:`_one_thread`)."""
    out: list[list[list[dict]]] = [[] for _ in items]
    groups: dict[tuple, list[int]] = {}
    for i, (maps, mask, requests, cue) in enumerate(items):
        if len(maps):
            groups.setdefault((tuple(mask.shape), cue is not None, len(requests), len(maps)), []).append(i)
    for (size, _, _, n_maps), idx in groups.items():
        dev = _device_of(items[idx[0]][0][0], device)
        limit = max_pixels or (MAX_PIXELS_CPU if dev.type == "cpu" else MAX_PIXELS)
        pixels = max(1, size[0] * size[1])
        step = max(1, limit // pixels)
        if n_maps * pixels <= WHOLE_IMAGE_SLACK * limit:
            step = max(step, n_maps)                                     # an image's maps together
        with _one_thread(dev):
            for images, maps in _chunks(idx, n_maps, step):
                for (i, k), rows in zip(((i, k) for i in images for k in maps),
                                        _score_chunk(items, images, maps, size, dev)):
                    if not out[i]:
                        out[i] = [None] * n_maps
                    out[i][k] = rows
    return out


def _chunks(images: list[int], n_maps: int, step: int):
    """``(images, maps)`` chunks of at most ``step`` maps each: whole images when one image's maps fit, else
    one image's maps in ranges. Every map of a chunk's image is in it, or the chunk is one image: its maps
    form a ``[images, maps]`` grid, which the per-image steps use as such."""
    if n_maps <= step:
        per = step // n_maps
        for start in range(0, len(images), per):
            yield images[start:start + per], range(n_maps)
        return
    for i in images:
        for start in range(0, n_maps, step):
            yield [i], range(start, min(start + step, n_maps))


@contextmanager
def _one_thread(device: torch.device):
    """torch's intra-op threads set to one while maps are scored on a CPU. Scoring is many small tensor
    operations, which a thread team barely speeds up; and when the cores are busy (the batch job's
    background max-flow workers, data-loader workers, other jobs) its spinning threads slow every one of
    them down, measured up to tenfold, where one thread keeps its pace."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _device_of(first_map, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    return first_map.device if torch.is_tensor(first_map) else torch.device("cpu")


def _as_tensor(x, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device)


def _score_chunk(items: Sequence[Item], images: list[int], maps: range, size: tuple[int, int],
                 device: torch.device) -> list[list[dict]]:
    """The rows of the maps ``maps`` of each of ``images`` (all of one ``size``), image by image: ``[B·K][R]``."""
    B, K = len(images), len(maps)
    masks = _Masks(items, images, device)
    M, U, N = B * K, masks.n_slots, size[0] * size[1]
    values = _prepare([items[i][0][k] for i in images for k in maps], size, device).reshape(M, N)  # upsampled

    # min-max normalisation; a constant map becomes zeros (x·h - lo is exactly 0) and marks no pixel
    v_min, v_max = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)   # (aminmax: 7x slower)
    wide = (v_max.double() - v_min.double()) > SPAN_LIMIT               # as minmax_normalise: halve (exactly)
    half = torch.where(wide, 0.5, 1.0).to(values.dtype)                 # x * 1.0 is exact: no sync, no branch
    lo, hi = v_min * half, v_max * half
    span = hi - lo
    const = (span <= 0)[:, 0]
    divisor = torch.where(span > 0, span, torch.ones_like(span))
    cues = _cues(items, images, N, device) if items[images[0]][3] is not None else None

    # on a CPU, one sort of the maps gives Otsu's histograms, the binary maps' counts and the rank-based scores
    # (the tensor path instead: a histogram and a binary map from the normalised maps, tie runs in another sort)
    non_negative = bool(v_min.min() >= 0)
    order = _sorted_maps(values, masks, non_negative, cues) if _numpy_here(values) else None
    sorted_path = order is not None
    # with every pixel valid (no void pixel under any request), the masks' sums come from the sort too
    positional = sorted_path and all(masks.all_valid)
    per_map = [a.numpy() for a in (v_min, v_max, half, lo, divisor)] if sorted_path else None
    pixelwise = cues is not None and not positional                     # the cue family's per-pixel sums
    norm = _normalised(values, half, lo, divisor) if not sorted_path or pixelwise else None
    counts = order.otsu_counts(*per_map, OTSU_BINS) if sorted_path else _otsu_counts(norm)
    thresholds = otsu_thresholds(counts)                                 # the one sync before the end
    cut = torch.where(const, float("inf"), torch.from_numpy(thresholds).to(device))
    first_on = order.first_above(*per_map, cut.numpy()) if sorted_path else None
    binary = norm > cut[:, None] if not sorted_path or pixelwise else None

    stats = torch.full((M, U, 9 + (7 if cues is not None else 0)), float("nan"), dtype=torch.float64, device=device)
    if positional:
        _sorted_sums(stats.numpy(), order, values.numpy(), non_negative, per_map[2:], first_on, cues is not None)
    else:
        _mask_sums(stats, binary, _positive_part(values), norm, masks.gts, masks.valids, cues, counted=sorted_path)
    del norm, binary
    if sorted_path:
        table = stats.numpy()
        for u in range(U):
            order.slot_stats(table[:, u], u, all_valid=masks.all_valid[u], first_on=first_on,
                             ranks=bool(masks.gts[:, u].any()))
    else:
        _threshold_free_stats(stats, values, masks.gts, masks.valids)
    threshold = [None if c else t for c, t in zip(const.tolist(), thresholds.tolist())]
    names, values = _slot_values(stats.cpu().numpy(), threshold)
    return [_map_rows(names, values[m], masks.slot[m // K], items[images[m // K]][2]) for m in range(M)]


def _normalised(values: torch.Tensor, half: torch.Tensor, lo: torch.Tensor, divisor: torch.Tensor) -> torch.Tensor:
    """``(x·half - lo) / divisor`` in float32 arithmetic (as :func:`store.maps.minmax_normalise`); on a CPU
    widened to float64 in the same pass, as the float64 sums over the masks take it."""
    if not _numpy_here(values):
        return torch.mul(values, half).sub_(lo).div_(divisor)
    h = half.numpy()
    scaled = values.numpy() - lo.numpy() if bool((h == 1).all()) else values.numpy() * h - lo.numpy()
    return torch.from_numpy(np.divide(scaled, divisor.numpy(), out=np.empty(scaled.shape, np.float64)))


def _positive_part(values: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)``; on a CPU widened to float64 in the same pass, as the float64 sums over the masks take it."""
    if not _numpy_here(values):
        return values.clamp(min=0)
    v = values.numpy()
    return torch.from_numpy(np.maximum(v, np.float32(0.0), out=np.empty(v.shape, np.float64)))


def _sorted_maps(values: torch.Tensor, masks: _Masks, non_negative: bool, cues: torch.Tensor | None
                 ) -> SortedMaps | None:
    """The chunk's maps sorted once, each pixel carrying its slots' valid and object bits (``2·u``, ``2·u + 1``)
    and, with ``cues``, its cue bit (``2·U``); None when the keys cannot hold them (then the tensor path scores
    the chunk)."""
    M, U = values.shape[0], masks.n_slots
    bits = 2 * U + (cues is not None)
    if not fits(M, bits):
        return None
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    labels = np.zeros(masks.gts.shape[::2], dtype=dtype)                # [B, N]
    for u in range(U):
        labels |= masks.valids[:, u].numpy().astype(dtype) << dtype(2 * u)
        labels |= masks.gts[:, u].numpy().astype(dtype) << dtype(2 * u + 1)
    if cues is not None:
        labels |= cues.numpy().astype(dtype) << dtype(2 * U)
    return SortedMaps(values.numpy(), labels, bits, non_negative)


def _sorted_sums(table: np.ndarray, order: SortedMaps, values: np.ndarray, non_negative: bool, per_map: list,
                 first_on: np.ndarray, cue: bool) -> None:
    """Columns 2-5 of ``table`` (``[M, U, ≥9]`` float64: valid and object pixels, relevance mass in total and on
    the object) and, with ``cue``, 9-15 (see :func:`_mask_sums`) of a chunk in which every pixel is valid under
    every slot: each mask's pixels are a set of sorted positions (labels ``2·u + 1``, the cue's ``2·U``), its
    pixel count a count of them, a binary map's pixels in it the positions at or after ``first_on``, and a
    sum over it the sum of the values read back from the keys (positive part, or normalised by ``per_map`` =
    ``(half, lo, divisor)`` in float32 as :func:`_normalised`), in float64. The sums over all pixels come
    from the maps themselves."""
    M, U = table.shape[:2]
    N = values.shape[1]
    half, lo, divisor = per_map
    halved = not bool((half == 1).all())

    def positive(x, counts=None):
        return x if non_negative else np.maximum(x, np.float32(0.0))

    def normalised(x, counts=None):                                     # float32, as _normalised
        per = (lambda a: a) if counts is None else (lambda a: np.repeat(a[:, 0], counts))
        scaled = x * per(half) - per(lo) if halved else x - per(lo)
        return np.divide(scaled, per(divisor), out=scaled)

    table[:, :, 2] = N
    table[:, :, 4] = positive(values).sum(axis=1, dtype=np.float64)[:, None]
    if cue:
        table[:, :, 9] = normalised(values).sum(axis=1, dtype=np.float64)[:, None]
        on_cue = order.where(1 << (2 * U))
        table[:, :, 10] = order.sums_at(on_cue, normalised)[:, None]
        table[:, :, 12] = order.from_each(on_cue, first_on)[:, None]
        table[:, :, 14] = order.per_row(on_cue)[:, None]
    for u in range(U):
        on_object = order.where(1 << (2 * u + 1))
        table[:, u, 3] = order.per_row(on_object)
        table[:, u, 5] = order.sums_at(on_object, positive)
        if cue:
            off_cue = order.subset(on_object, 0, 1 << (2 * U))
            table[:, u, 11] = order.sums_at(off_cue, normalised)
            table[:, u, 13] = order.from_each(off_cue, first_on)
            table[:, u, 15] = order.per_row(off_cue)


def _otsu_counts(norm: torch.Tensor) -> np.ndarray:
    """``[M, 256]`` int64 on the CPU: each normalised map's Otsu histogram, 256 bins over [0, 1] (``x·256`` is
    exact in float32; 1.0 goes to the last bin)."""
    M = norm.shape[0]
    bins = (norm * OTSU_BINS).clamp_(max=OTSU_BINS - 1).long()
    bins += (torch.arange(M, dtype=bins.dtype, device=norm.device) * OTSU_BINS)[:, None]
    if _numpy_here(norm):
        return np.bincount(bins.numpy().reshape(-1), minlength=M * OTSU_BINS).reshape(M, OTSU_BINS)
    return torch.bincount(bins.reshape(-1), minlength=M * OTSU_BINS).view(M, OTSU_BINS).cpu().numpy()


def _map_rows(names: list[str], values: list[list], slots: list[int], requests) -> list[dict]:
    """One map's rows, one per request, from its slots' ``values`` (in the order of ``names``); requests that
    share a slot and are both defined (or both undefined) share the same numbers, so the row is built once and
    copied."""
    built: dict[tuple[int, bool], dict] = {}
    rows = []
    for u, (protocol, classes) in zip(slots, requests):
        undefined = classes is not None and len(classes) == 0 and protocol != "report"
        if (u, undefined) not in built:
            row = dict(zip(names, values[u]))
            if undefined:                                    # nothing to localise: only the cue columns stand
                row.update(_UNDEFINED)
            built[u, undefined] = row
            rows.append(row)
        else:
            rows.append(dict(built[u, undefined]))
    return rows


_UNDEFINED = {c: None for c in LOCALISATION_COLUMNS + THRESHOLD_FREE_COLUMNS}


def _slot_values(table: np.ndarray, threshold: list) -> tuple[list[str], list]:
    """The row columns' names and, per map and slot, their values (``[M][U]`` lists of Python floats and
    None) from the chunk's ``table`` (``[M, U, ≥9]`` float64, see :func:`_mask_sums` and :func:`_sorted_sums`)
    and each map's Otsu ``threshold``: the families' own column definitions, over all rows at once."""
    s = np.moveaxis(table, -1, 0)                                       # [C, M, U]
    tp, pred_valid, n_valid, n_gt, mass_total, mass_on, pointing, rank, auc = s[:9]
    fp, fn = pred_valid - tp, n_gt - tp
    has_gt = n_gt > 0
    columns = {**confusion_columns(tp, fp, fn, n_valid - tp - fp - fn), "threshold": (np.nan, False),
               "relevance_mass": fraction(mass_on, mass_total, also=has_gt), "relevance_rank": (rank, has_gt),
               "pointing_game": (pointing, has_gt), "roc_auc": (auc, has_gt & (n_valid - n_gt > 0))}
    if len(s) > 9:
        columns.update(cue_columns(*s[9:12], pred_valid, *s[12:16], n_valid))
    names = list(columns)
    values = np.stack([np.broadcast_to(v, tp.shape) for v, _ in columns.values()], axis=-1).astype(object)
    values[~np.stack([np.broadcast_to(d, tp.shape) for _, d in columns.values()], axis=-1)] = None
    values[:, :, names.index("threshold")] = np.array(threshold, dtype=object)[:, None]
    return names, values.tolist()


def _cues(items: Sequence[Item], images: list[int], n: int, device: torch.device) -> torch.Tensor:
    """``[B, N]`` cue masks of the chunk's images."""
    cues = []
    for i in images:
        c = _as_tensor(items[i][3], device).reshape(-1)
        if c.shape[0] != n:
            raise ValueError(f"cue mask has {c.shape[0]} pixels, class mask {n}")
        cues.append(c.bool())
    return torch.stack(cues)


def _mask_sums(stats, binary, positive, norm, gts, valids, cues, counted: bool) -> None:
    """Columns 0-5 of ``stats`` (confusion counts and relevance mass; 0 and 1 only unless ``counted`` from the
    sort already) and, with ``cues``, 9-15 (the cue family's sums, see :func:`_cue_row`): each image's maps
    (``K`` consecutive rows) against its slots' masks — counts of the binary maps' pixels in each mask
    (:func:`_counts_in`), the positive part's and the normalised maps' sums over each mask in float64
    (:func:`_sums_over`). A mask that two slots share (the valid pixels of ``clean`` and ``report``) is
    summed over once."""
    B, U, N = gts.shape
    K = positive.shape[0] // B
    kinds = {"valid": valids, "object": gts}
    if cues is not None:
        on_cue = cues[:, None, :] & valids
        kinds.update(cue=on_cue, object_off_cue=gts & ~on_cue)
    distinct, at = [], {}                                                # at[kind, slot]: its distinct mask
    for kind, masks in kinds.items():
        for u in range(U):
            same = [d for d, seen in enumerate(distinct) if _equal(seen, masks[:, u])]
            at[kind, u] = same[0] if same else len(distinct)
            if not same:
                distinct.append(masks[:, u])
    columns = torch.stack(distinct, dim=1)                               # [B, D, N]
    sizes = _mask_sizes(columns).repeat_interleave(K, dim=0)             # [B·K, D]

    def over(maps: torch.Tensor, which: tuple[str, ...], of) -> dict:
        """{(kind, slot): [B·K]} of ``of(maps, masks)`` over the distinct masks of ``which`` kinds."""
        used = sorted({at[kind, u] for kind in which for u in range(U)})
        got = of(maps.view(B, K, N), columns[:, used]).reshape(B * K, len(used))
        return {(kind, u): got[:, used.index(at[kind, u])] for kind in which for u in range(U)}

    mass = over(positive, ("valid", "object"), _sums_over)
    counts = {} if counted else over(binary, ("valid", "object"), _counts_in)
    if cues is not None:
        norm_on = over(norm, ("valid", "cue", "object_off_cue"), _sums_over)
        counts.update(over(binary, ("cue", "object_off_cue"), _counts_in))
    for u in range(U):
        if not counted:
            stats[:, u, 0], stats[:, u, 1] = counts["object", u], counts["valid", u]   # tp, predicted valid
        stats[:, u, 2], stats[:, u, 3] = sizes[:, at["valid", u]], sizes[:, at["object", u]]   # valid, object
        stats[:, u, 4], stats[:, u, 5] = mass["valid", u], mass["object", u]   # mass total, on object
        if cues is not None:
            stats[:, u, 9], stats[:, u, 10] = norm_on["valid", u], norm_on["cue", u]
            stats[:, u, 11] = norm_on["object_off_cue", u]
            stats[:, u, 12], stats[:, u, 13] = counts["cue", u], counts["object_off_cue", u]
            stats[:, u, 14], stats[:, u, 15] = sizes[:, at["cue", u]], sizes[:, at["object_off_cue", u]]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two masks are equal (through NumPy on a CPU: 4x faster than ``torch.equal`` there)."""
    return bool(np.array_equal(a.numpy(), b.numpy())) if _numpy_here(a) else torch.equal(a, b)


def _mask_sizes(masks: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` float64: the pixels of each of ``[B, D, N]`` masks (on a CPU one count per mask: NumPy's count
    along an axis is 4x slower)."""
    if not _numpy_here(masks):
        return masks.sum(dim=2).double()
    B, D, N = masks.shape
    flat = masks.numpy().reshape(B * D, N)
    return torch.tensor([np.count_nonzero(m) for m in flat], dtype=torch.float64).view(B, D)


def _counts_in(binary: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B, K, C]`` float64: how many pixels of each of an image's ``K`` binary maps (``[B, K, N]``) lie in each
    of its ``C`` masks (``[B, C, N]``). On a CPU through NumPy, 64 pixels a word (bit-packed AND and popcount);
    elsewhere as a batched float32 matrix product, exact for counts below 2**24 (float64 beyond)."""
    if _numpy_here(binary):
        words = np.packbits(binary.numpy(), axis=2)
        cols = np.packbits(masks.numpy(), axis=2)
        pad = (-words.shape[2]) % 8                                     # whole 64-bit words
        if pad:
            words = np.pad(words, ((0, 0), (0, 0), (0, pad)))
            cols = np.pad(cols, ((0, 0), (0, 0), (0, pad)))
        both = words.view(np.uint64)[:, :, None, :] & cols.view(np.uint64)[:, None, :, :]   # [B, K, C, words]
        return torch.from_numpy(np.bitwise_count(both).sum(axis=3, dtype=np.int64).astype(np.float64))
    exact = torch.float32 if binary.shape[2] < 2**24 else torch.float64
    return torch.bmm(binary.to(exact), masks.to(exact).transpose(1, 2)).double()


def _sums_over(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``[B, K, C]`` float64: the sum of each of an image's ``K`` maps (``[B, K, N]``) over each of its ``C``
    masks (``[B, C, N]``), as a batched float64 matrix product (NumPy's on a CPU: faster than torch's here)."""
    if _numpy_here(maps):
        return torch.from_numpy(np.matmul(maps.numpy().astype(np.float64, copy=False),
                                          masks.numpy().astype(np.float64).transpose(0, 2, 1)))
    return torch.bmm(maps.double(), masks.double().transpose(1, 2))


#: slots whose (valid, object) bits ride along one sort: two bits each in the low half of a 64-bit key
SLOTS_PER_SORT = 16


#: score a chunk on a CPU through one NumPy sort (:mod:`compute.metrics.sorted_maps`) and NumPy's kernels,
#: several times faster than torch's there (False: the tensor path, as on a GPU — the tests compare both)
NUMPY_ON_CPU = True


def _numpy_here(t: torch.Tensor) -> bool:
    return NUMPY_ON_CPU and t.device.type == "cpu"


def _sorted_keys(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[M, N, 2]`` int32: each map's pixels sorted by value, as 64-bit keys whose high word is the value's
    float32 bits made into an order-preserving integer (negative values' magnitude bits flipped; -0.0 is
    made +0.0 first, so that equal values give equal words) and whose low word is the pixel's ``labels``
    (little-endian: word 0 is the low one): ``labels`` is ``[B, N]``, one row per image, whose maps are ``K``
    consecutive rows of ``values``."""
    M, N = values.shape
    B = labels.shape[0]
    bits = (values + 0.0).view(torch.int32)
    pair = torch.empty((M, N, 2), dtype=torch.int32, device=values.device)
    pair[..., 1] = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    pair.view(B, M // B, N, 2)[..., 0] = labels[:, None, :]
    return torch.sort(pair.view(torch.int64)[..., 0], dim=1).values.view(torch.int32).view(M, N, 2)


def _threshold_free_stats(stats, values, gts, valids) -> None:
    """Columns 6-8 of ``stats`` (pointing game, relevance rank, ROC-AUC): one sort per map, shared by every
    slot; the slots' valid and object bits ride along in the sort keys, and tie groups are runs of equal
    values (see the module doc). Slots without an object pixel in any image are left out (their rows
    report no threshold-free score)."""
    M, N = values.shape
    for first in range(0, gts.shape[1], SLOTS_PER_SORT):
        slots = [u for u in range(first, min(first + SLOTS_PER_SORT, gts.shape[1])) if bool(gts[:, u].any())]
        if not slots:
            continue
        labels = torch.zeros(gts.shape[0], N, dtype=torch.int32, device=values.device)
        for bit, u in enumerate(slots):
            labels |= (valids[:, u].int() << (2 * bit)) | (gts[:, u].int() << (2 * bit + 1))
        keys = _sorted_keys(values, labels)
        value, label = keys[..., 1], keys[..., 0]
        new_run = torch.ones((M, N), dtype=torch.bool, device=values.device)
        new_run[:, 1:] = value[:, 1:] != value[:, :-1]
        runs = _TieRuns(new_run.reshape(-1))
        for bit, u in enumerate(slots):
            _slot_stats(stats[:, u], label, 2 * bit, runs, all_valid=bool(valids[:, u].all()))


def _bit(words: torch.Tensor, bit: int) -> torch.Tensor:
    """Non-zero where bit ``bit`` of ``words`` (int32) is set (its value, ``1 << bit``)."""
    return words & (1 << bit)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the non-zero entries of the row-major flattened ``mask``."""
    return mask.reshape(-1).nonzero()[:, 0]


def _running_count(flags: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """How many of ``flags`` (0/non-zero) are set at or before each position along ``dim``."""
    return torch.cumsum(flags != 0, dim=dim)


def _per_row(row: torch.Tensor, weights: torch.Tensor | None, M: int) -> torch.Tensor:
    """``[M]`` float64: the sum of ``weights`` (1 each when None) over the entries of each ``row``, in order."""
    w = torch.ones(row.shape, dtype=torch.float64, device=row.device) if weights is None else weights.double()
    return torch.zeros(M, dtype=torch.float64, device=row.device).index_add_(0, row, w)


class _TieRuns:
    """Runs of equal values in the row-major flattened sorted keys (every row starts a new run), numbered
    from 1: ``of`` is each position's run, ``start[r]`` run ``r``'s first position, and ``start`` ends with
    the total length, so that run ``r`` ends at ``start[r + 1] - 1``."""

    def __init__(self, starts_run: torch.Tensor):
        self.of = _running_count(starts_run)
        first = _flat_nonzero(starts_run)
        self.start = torch.empty(len(first) + 2, dtype=first.dtype, device=first.device)
        self.start[0], self.start[1:-1], self.start[-1] = 0, first, len(starts_run)

    def bounds(self, run: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First and one-past-last position of each ``run``."""
        run = run.long()
        return self.start[run], self.start[run + 1]


class _ValidCounts:
    """How many valid pixels lie at or before each sorted position of each map (a running count; the
    position itself plus one when every pixel is valid, as under ``report``)."""

    def __init__(self, label: torch.Tensor, shift: int, all_valid: bool):
        M, N = label.shape
        self.N = N
        if all_valid:
            self.upto_at = None
            self.total = torch.full((M,), float(N), dtype=torch.float64, device=label.device)
        else:
            upto_at = _running_count(_bit(label, shift), dim=1)
            self.total = upto_at[:, -1].double()
            self.last_valid = torch.searchsorted(upto_at, upto_at[:, -1:].contiguous())[:, 0].clamp(max=N - 1)
            self.upto_at = upto_at.reshape(-1)

    def run_bounds(self, runs: _TieRuns, run: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid pixels in lower runs and up to the end of each ``run`` (flat run ids), in float64."""
        first, end = runs.bounds(run)
        if self.upto_at is None:
            row_start = first - first % self.N
            return (first - row_start).double(), (end - row_start).double()
        below = torch.where(first % self.N == 0, 0, self.upto_at[(first - 1).clamp(min=0)])
        return below.double(), self.upto_at[end - 1].double()

    def top_positions(self, M: int) -> torch.Tensor:
        """Each map's highest sorted position that is valid."""
        if self.upto_at is None:
            return torch.full((M,), self.N - 1, dtype=torch.int64, device=self.total.device)
        return self.last_valid


def _slot_stats(out: torch.Tensor, label: torch.Tensor, shift: int, runs: _TieRuns, all_valid: bool) -> None:
    """Pointing game, relevance rank and ROC-AUC of every map against one slot's masks, whose valid and
    object bits are at ``shift`` and ``shift + 1`` of the sorted pixels' ``label`` words; written to
    ``out[:, 6:9]``.

    Per object pixel (object pixels are valid): ``below`` valid pixels lie in lower tie runs, ``upto`` in
    its own run and lower ones. Its mid-rank is ``(below + upto + 1) / 2``; its share of the top ``n_pos``
    pixels is its run's overlap with them, split evenly over the run's valid pixels."""
    M, N = label.shape
    on_object = _flat_nonzero(_bit(label, shift + 1))
    counts = _ValidCounts(label, shift, all_valid)
    n = counts.total
    row = on_object // N
    run = runs.of[on_object]
    below, upto = counts.run_bounds(runs, run)
    in_run = upto - below
    n_pos = _per_row(row, None, M)
    # pointing game: the object's share of the highest run holding a valid pixel
    top = runs.of[torch.arange(M, device=label.device) * N + counts.top_positions(M)]
    top_below, top_upto = counts.run_bounds(runs, top)
    out[:, 6] = _per_row(row, run == top[row], M) / (top_upto - top_below).clamp(min=1.0)
    take = torch.minimum((n_pos[row] - (n[row] - upto)).clamp_(min=0.0), in_run)
    out[:, 7] = _per_row(row, take.div_(in_run), M) / n_pos
    rank_sum = _per_row(row, below.add_(upto).add_(1.0), M) / 2.0      # integers: exact in any order
    out[:, 8] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos))


__all__ = ["MAX_PIXELS", "MAX_PIXELS_CPU", "score_image", "score_images"]

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
- the requests' masks: a request whose object and valid masks equal another's on the same image (``clean``
  and ``report`` on an image of one class without void pixels) is scored once and its row copied;
- confusion counts and relevance mass: per image, its maps times its masks as matrix products (binary maps
  in float32, exact for 0/1 counts; masses in float64);
- threshold-free metrics: one sort per map, shared by every request. Each pixel becomes a 64-bit key, its
  value's float32 bits made order-preserving in the high word and every request's valid/object bits in the
  low word, so a single sort of plain integers (NumPy's vectorised sort on a CPU, several times faster than
  an argsort) yields the sorted values and, riding along, each request's masks. Tie groups are runs of
  equal high words; per object pixel, the valid pixels below its group and up to its group's end give its
  mid-rank and its share of the top-``K`` cut, and the maximum's group gives the pointing game — the
  formulas of :mod:`compute.metrics.threshold_free` in float64 (void pixels weigh 0, which leaves the
  groups of the valid pixels exactly as the reference forms them);
- the cue family (only when a cue mask is given) from the same normalised and binary maps.

Sums run in another order than NumPy's, so float64 results can differ from the reference in the last bits
(tested to 1e-9); counts, thresholds and the undefined (``None``) cases are identical.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compute.metrics.cue import cue_scores_from_sums
from compute.metrics import LOCALISATION_COLUMNS
from compute.metrics.localisation import SPAN_LIMIT, confusion_scores
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
        gts = np.zeros((len(images), self.n_slots, n), dtype=bool)
        valids = np.zeros_like(gts)
        for b, distinct in enumerate(per_image):
            for u, (gt, valid) in enumerate(distinct):
                gts[b, u], valids[b, u] = gt, valid
        self.gts, self.valids = torch.from_numpy(gts).to(device), torch.from_numpy(valids).to(device)


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
#: the same on a CPU, where a chunk that stays near the cache is faster than a large one (measured, one thread:
#: 13 maps of 375×500 images under two protocols 0.18–0.20 s/image at 2**19, 0.22 s at 2**18, 0.23–0.25 s at
#: 2**17; the demo's 96×96 maps take the same time at 2**17 and 2**19)
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
    defaults to :data:`MAX_PIXELS` on a GPU and :data:`MAX_PIXELS_CPU` on a CPU; on a CPU the work runs on
    one thread (see :func:`_one_thread`)."""
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
        with _one_thread(dev):
            for start in range(0, len(pairs), step):
                chunk = pairs[start:start + step]
                for (i, k), rows in zip(chunk, _score_chunk(items, chunk, size, dev)):
                    if not out[i]:
                        out[i] = [None] * len(items[i][0])
                    out[i][k] = rows
    return out


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


def _score_chunk(items: Sequence[Item], chunk: list[tuple[int, int]], size: tuple[int, int],
                 device: torch.device) -> list[list[dict]]:
    """The rows of the maps ``chunk`` names (``(item, map)`` pairs of images of one ``size``): ``[M][R]``."""
    images = sorted({i for i, _ in chunk})
    slot = {i: b for b, i in enumerate(images)}
    img = torch.tensor([slot[i] for i, _ in chunk], device=device)    # [M] each map's image
    masks = _Masks(items, images, device)
    M, U, N = len(chunk), masks.n_slots, size[0] * size[1]
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
    stats = torch.full((M, U, 9 + (7 if cues is not None else 0)), float("nan"), dtype=torch.float64, device=device)
    _mask_sums(stats, img, binary, values.clamp(min=0), norm, masks.gts, masks.valids, cues)
    del norm
    _threshold_free_stats(stats, values, img, masks.gts, masks.valids)
    table = stats.cpu().numpy()

    return [_map_rows(table[m], masks.slot[slot[i]], items[i][2], None if const[m] else float(thresholds[m]))
            for m, (i, _) in enumerate(chunk)]


def _map_rows(table: np.ndarray, slots: list[int], requests, threshold: float | None) -> list[dict]:
    """One map's rows, one per request, from its slots' ``table`` rows; requests that share a slot and are
    both defined (or both undefined) share the same numbers, so the row is built once and copied."""
    built: dict[tuple[int, bool], dict] = {}
    rows = []
    for u, (protocol, classes) in zip(slots, requests):
        undefined = classes is not None and len(classes) == 0 and protocol != "report"
        if (u, undefined) not in built:
            s = table[u]
            row = _row(s, threshold, undefined=undefined)
            if len(s) > 9:
                row.update(_cue_row(s[9:], float(s[1]), float(s[2])))
            built[u, undefined] = row
            rows.append(row)
        else:
            rows.append(dict(built[u, undefined]))
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
    sums, see :func:`_cue_row`): per image, its maps times its slots' masks as matrix products — the binary
    maps in float32 (0/1 counts below 2**24 are exact), the positive part and the normalised maps in float64."""
    U, N = gts.shape[1], gts.shape[2]
    exact = torch.float32 if N < 2**24 else torch.float64
    for b in range(gts.shape[0]):
        rows = (img == b).nonzero()[:, 0]
        if not len(rows):
            continue
        masks = [valids[b], gts[b]]                                       # each [U, N]
        if cues is not None:
            on_cue = cues[b] & valids[b]
            masks += [on_cue, gts[b] & ~on_cue]
        columns = torch.cat(masks)                                        # [C·U, N]
        wide = columns.double().T

        def on(maps, cols, dtype=torch.float64):   # [k, masks, U]
            return (maps[rows].to(dtype) @ cols).double().view(len(rows), -1, U)

        binary_on = on(binary, columns.to(exact).T, exact)
        positive_on = on(positive, wide[:, :2 * U])
        sizes = columns.sum(dim=1).view(len(masks), U).double()
        stats[rows, :, 0], stats[rows, :, 1] = binary_on[:, 1], binary_on[:, 0]   # tp, predicted valid
        stats[rows, :, 2], stats[rows, :, 3] = sizes[0], sizes[1]                 # valid, object pixels
        stats[rows, :, 4], stats[rows, :, 5] = positive_on[:, 0], positive_on[:, 1]   # mass total, on object
        if cues is not None:
            norm_on = on(norm, wide)
            stats[rows, :, 9], stats[rows, :, 10], stats[rows, :, 11] = norm_on[:, 0], norm_on[:, 2], norm_on[:, 3]
            stats[rows, :, 12], stats[rows, :, 13] = binary_on[:, 2], binary_on[:, 3]
            stats[rows, :, 14], stats[rows, :, 15] = sizes[2], sizes[3]


#: slots whose (valid, object) bits ride along one sort: two bits each in the low half of a 64-bit key
SLOTS_PER_SORT = 16


#: run the sort and the integer steps of the threshold-free scores through NumPy when the maps are on a CPU,
#: where its vectorised kernels are several times faster than torch's (False: torch's, as on a GPU — the
#: tests compare both)
NUMPY_ON_CPU = True


def _numpy_here(t: torch.Tensor) -> bool:
    return NUMPY_ON_CPU and t.device.type == "cpu"


def _sorted_keys(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[M, N, 2]`` int32: each map's pixels sorted by value, as 64-bit keys whose high word is the value's
    float32 bits made into an order-preserving integer (negative values' magnitude bits flipped; -0.0 is
    made +0.0 first, so that equal values give equal words) and whose low word is the pixel's ``labels``
    (little-endian: word 0 is the low one). On a CPU the same keys are built and sorted in NumPy."""
    M, N = values.shape
    if _numpy_here(values):
        bits = (values.numpy() + np.float32(0.0)).view(np.int32)
        pair = np.empty((M, N, 2), dtype=np.int32)
        flip = np.right_shift(bits, 31)
        np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
        np.bitwise_xor(bits, flip, out=pair[..., 1])
        pair[..., 0] = labels.numpy()
        keys = np.sort(pair.view(np.int64)[..., 0], axis=1)
        return torch.from_numpy(keys).view(torch.int32).view(M, N, 2)
    bits = (values + 0.0).view(torch.int32)
    pair = torch.empty((M, N, 2), dtype=torch.int32, device=values.device)
    pair[..., 1] = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    pair[..., 0] = labels
    return torch.sort(pair.view(torch.int64)[..., 0], dim=1).values.view(torch.int32).view(M, N, 2)


def _threshold_free_stats(stats, values, img, gts, valids) -> None:
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
        keys = _sorted_keys(values, labels[img])
        value, label = keys[..., 1], keys[..., 0]
        new_run = torch.ones((M, N), dtype=torch.bool, device=values.device)
        new_run[:, 1:] = value[:, 1:] != value[:, :-1]
        runs = _TieRuns(new_run.reshape(-1))
        for bit, u in enumerate(slots):
            _slot_stats(stats[:, u], label, 2 * bit, runs, all_valid=bool(valids[:, u].all()))


def _bit(words: torch.Tensor, bit: int) -> torch.Tensor:
    """0/1: bit ``bit`` of each of ``words`` (int32)."""
    if _numpy_here(words):
        return torch.from_numpy(np.right_shift(words.numpy(), bit) & 1)
    return (words >> bit) & 1


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the non-zero entries of the row-major flattened ``mask`` (on a CPU through NumPy)."""
    if _numpy_here(mask):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero()[:, 0]


class _TieRuns:
    """Runs of equal values in the row-major flattened sorted keys (every row starts a new run): each
    position's run, and each run's first and last position."""

    def __init__(self, starts_run: torch.Tensor):
        self.of = torch.cumsum(starts_run, dim=0) - 1
        self.first = _flat_nonzero(starts_run)
        self.last = torch.empty_like(self.first)
        self.last[:-1] = self.first[1:] - 1
        self.last[-1] = len(starts_run) - 1


class _ValidCounts:
    """How many valid pixels lie at or before each sorted position of each map (a running count; the
    position itself plus one when every pixel is valid, as under ``report``)."""

    def __init__(self, label: torch.Tensor, shift: int, all_valid: bool):
        M, N = label.shape
        self.N = N
        if all_valid:
            self.upto_at = self.valid = None
            self.total = torch.full((M,), float(N), dtype=torch.float64, device=label.device)
        else:
            valid = _bit(label, shift)
            upto_at = torch.cumsum(valid, dim=1, dtype=torch.int32)
            self.total = upto_at[:, -1].double()
            self.last_valid = torch.searchsorted(upto_at, upto_at[:, -1:].contiguous())[:, 0].clamp(max=N - 1)
            self.upto_at, self.valid = upto_at.reshape(-1), valid.reshape(-1)

    def run_bounds(self, runs: _TieRuns, run: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Valid pixels in lower runs and up to the end of each ``run`` (flat run ids), in float64."""
        first, last = runs.first[run], runs.last[run]
        if self.upto_at is None:
            return (first % self.N).double(), (last % self.N + 1).double()
        return (self.upto_at[first] - self.valid[first]).double(), self.upto_at[last].double()

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
    zero = torch.zeros(M, dtype=torch.float64, device=label.device)
    n_pos = zero.index_add(0, row, torch.ones_like(below))
    # pointing game: the object's share of the highest run holding a valid pixel
    top = runs.of[torch.arange(M, device=label.device) * N + counts.top_positions(M)]
    top_below, top_upto = counts.run_bounds(runs, top)
    out[:, 6] = zero.index_add(0, row, (run == top[row]).double()) / (top_upto - top_below).clamp(min=1.0)
    take = torch.minimum((n_pos[row] - (n[row] - upto)).clamp(min=0.0), in_run)
    out[:, 7] = zero.index_add(0, row, take / in_run) / n_pos
    rank_sum = zero.index_add(0, row, (below + upto + 1.0) / 2.0)
    out[:, 8] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * (n - n_pos))


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

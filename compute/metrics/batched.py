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
- confusion counts and relevance mass: each image's maps against its masks, all of a chunk's images at once
  (the binary maps' pixel counts per mask by bit-packed AND and popcount on a CPU, by a float32 product on a
  GPU, exact either way; the masses by float64 products);
- threshold-free metrics: one sort per map, shared by every request. Each pixel becomes a 64-bit key, its
  value's float32 bits made order-preserving in the high word and every request's valid/object bits in the
  low word, so a single sort of plain integers (NumPy's vectorised sort on a CPU, several times faster than
  an argsort) yields the sorted values and, riding along, each request's masks. Tie groups are runs of
  equal high words; per object pixel, the valid pixels below its group and up to its group's end give its
  mid-rank and its share of the top-``K`` cut, and the maximum's group gives the pointing game — the
  formulas of :mod:`compute.metrics.threshold_free` in float64 (void pixels weigh 0, which leaves the
  groups of the valid pixels exactly as the reference forms them). When a sort carries a single request's
  masks (one request, or requests whose masks coincide), its keys also order each tie group's object pixels
  last, and the ranks follow from the object pixels' positions without tie groups
  (:func:`_one_slot_stats`);
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
#: 13 maps of 375×500 images under two protocols 0.134–0.136 s/image at 2**20, 0.14–0.15 s at 2**19 and
#: 2**22, 0.16 s at 2**17 and 2**18; the demo's 96×96 maps 0.87 s at 2**20, 0.90 s at 2**19, 0.99 s at 2**21)
MAX_PIXELS_CPU = 1 << 20

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
        with _one_thread(dev):
            for images, maps in _chunks(idx, n_maps, max(1, limit // max(1, size[0] * size[1]))):
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
    lo, hi = values.amin(dim=1, keepdim=True), values.amax(dim=1, keepdim=True)   # (aminmax: 7x slower on a CPU)
    wide = (hi.double() - lo.double()) > SPAN_LIMIT                     # as minmax_normalise: halve (exactly)
    half = torch.where(wide, 0.5, 1.0).to(values.dtype)                 # x * 1.0 is exact: no sync, no branch
    lo, hi = lo * half, hi * half
    span = hi - lo
    const = (span <= 0)[:, 0]
    norm = torch.mul(values, half).sub_(lo).div_(torch.where(span > 0, span, torch.ones_like(span)))
    thresholds = otsu_thresholds(_otsu_counts(norm))                    # the one sync before the end
    cut = torch.where(const, float("inf"), torch.from_numpy(thresholds).to(device))
    binary = norm > cut[:, None]

    cues = _cues(items, images, N, device) if items[images[0]][3] is not None else None
    stats = torch.full((M, U, 9 + (7 if cues is not None else 0)), float("nan"), dtype=torch.float64, device=device)
    _mask_sums(stats, binary, values.clamp(min=0), norm, masks.gts, masks.valids, cues)
    del norm, binary
    _threshold_free_stats(stats, values, masks.gts, masks.valids)
    table = stats.cpu().numpy()

    return [_map_rows(table[m], masks.slot[m // K], items[images[m // K]][2],
                      None if const[m] else float(thresholds[m])) for m in range(M)]


def _otsu_counts(norm: torch.Tensor) -> np.ndarray:
    """``[M, 256]`` int64 on the CPU: each normalised map's Otsu histogram, 256 bins over [0, 1] (``x·256`` is
    exact in float32; 1.0 goes to the last bin)."""
    M = norm.shape[0]
    bins = (norm * OTSU_BINS).clamp_(max=OTSU_BINS - 1).long()
    bins += (torch.arange(M, dtype=bins.dtype, device=norm.device) * OTSU_BINS)[:, None]
    if _numpy_here(norm):
        return np.bincount(bins.numpy().reshape(-1), minlength=M * OTSU_BINS).reshape(M, OTSU_BINS)
    return torch.bincount(bins.reshape(-1), minlength=M * OTSU_BINS).view(M, OTSU_BINS).cpu().numpy()


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


def _mask_sums(stats, binary, positive, norm, gts, valids, cues) -> None:
    """Columns 0-5 of ``stats`` (confusion counts and relevance mass) and, with ``cues``, 9-15 (the cue family's
    sums, see :func:`_cue_row`): each image's maps (``K`` consecutive rows) against its slots' masks — counts of
    the binary maps' pixels in each mask (:func:`_counts_in`), the positive part's and the normalised maps'
    sums over each mask in float64 (:func:`_sums_over`)."""
    B, U, N = gts.shape
    K = binary.shape[0] // B
    masks = [valids, gts]                                                 # each [B, U, N]
    if cues is not None:
        on_cue = cues[:, None, :] & valids
        masks += [on_cue, gts & ~on_cue]
    columns = torch.cat(masks, dim=1)                                     # [B, C·U, N]
    binary_on = _counts_in(binary.view(B, K, N), columns).view(B * K, -1, U)
    positive_on = _sums_over(positive.view(B, K, N), columns[:, :2 * U]).view(B * K, -1, U)
    sizes = (torch.from_numpy(np.count_nonzero(columns.numpy(), axis=2)) if _numpy_here(columns)
             else columns.sum(dim=2)).double()
    sizes = sizes.view(B, 1, len(masks), U).expand(B, K, len(masks), U).reshape(B * K, -1, U)
    stats[:, :, 0], stats[:, :, 1] = binary_on[:, 1], binary_on[:, 0]    # tp, predicted valid
    stats[:, :, 2], stats[:, :, 3] = sizes[:, 0], sizes[:, 1]            # valid, object pixels
    stats[:, :, 4], stats[:, :, 5] = positive_on[:, 0], positive_on[:, 1]   # mass total, on object
    if cues is not None:
        norm_on = _sums_over(norm.view(B, K, N), columns).view(B * K, -1, U)
        stats[:, :, 9], stats[:, :, 10], stats[:, :, 11] = norm_on[:, 0], norm_on[:, 2], norm_on[:, 3]
        stats[:, :, 12], stats[:, :, 13] = binary_on[:, 2], binary_on[:, 3]
        stats[:, :, 14], stats[:, :, 15] = sizes[:, 2], sizes[:, 3]


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
        return torch.from_numpy(np.matmul(maps.numpy().astype(np.float64),
                                          masks.numpy().astype(np.float64).transpose(0, 2, 1)))
    return torch.bmm(maps.double(), masks.double().transpose(1, 2))


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
    (little-endian: word 0 is the low one): ``labels`` is ``[B, N]``, one row per image, whose maps are ``K``
    consecutive rows of ``values``. On a CPU the same keys are built and sorted in NumPy."""
    M, N = values.shape
    B = labels.shape[0]
    if _numpy_here(values):
        bits = (values.numpy() + np.float32(0.0)).view(np.int32)
        pair = np.empty((M, N, 2), dtype=np.int32)
        flip = np.right_shift(bits, 31)
        np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
        np.bitwise_xor(bits, flip, out=pair[..., 1])
        pair.reshape(B, M // B, N, 2)[..., 0] = labels.numpy()[:, None, :]
        keys = np.sort(pair.view(np.int64)[..., 0], axis=1)
        return torch.from_numpy(keys).view(torch.int32).view(M, N, 2)
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
        if len(slots) == 1 and _numpy_here(keys):
            _one_slot_stats(stats[:, slots[0]], keys.numpy(), all_valid=bool(valids[:, slots[0]].all()))
            continue
        value, label = keys[..., 1], keys[..., 0]
        new_run = torch.ones((M, N), dtype=torch.bool, device=values.device)
        new_run[:, 1:] = value[:, 1:] != value[:, :-1]
        runs = _TieRuns(new_run.reshape(-1))
        for bit, u in enumerate(slots):
            _slot_stats(stats[:, u], label, 2 * bit, runs, all_valid=bool(valids[:, u].all()))


def _bit(words: torch.Tensor, bit: int) -> torch.Tensor:
    """Non-zero where bit ``bit`` of ``words`` (int32) is set (its value, ``1 << bit``)."""
    if _numpy_here(words):
        return torch.from_numpy(np.bitwise_and(words.numpy(), np.int32(1 << bit)))
    return words & (1 << bit)


def _flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the non-zero entries of the row-major flattened ``mask`` (on a CPU through NumPy)."""
    if _numpy_here(mask):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero()[:, 0]


def _running_count(flags: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """How many of ``flags`` (0/non-zero) are set at or before each position along ``dim``, int32 on a CPU
    (NumPy's running sum, about twice as fast as torch's) and int64 elsewhere."""
    if _numpy_here(flags):
        f = flags.numpy()
        return torch.from_numpy(np.cumsum(f if f.dtype == bool else f != 0, axis=dim, dtype=np.int32))
    return torch.cumsum(flags != 0, dim=dim)


def _per_row(row: torch.Tensor, weights: torch.Tensor | None, M: int) -> torch.Tensor:
    """``[M]`` float64: the sum of ``weights`` (1 each when None) over the entries of each ``row``, in order."""
    if _numpy_here(row):
        w = None if weights is None else weights.numpy()
        return torch.from_numpy(np.bincount(row.numpy(), weights=w, minlength=M).astype(np.float64, copy=False))
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


def _one_slot_stats(out: torch.Tensor, keys: np.ndarray, all_valid: bool) -> None:
    """:func:`_slot_stats` of a sort that carries one slot (label bits: 1 valid, 2 object), in NumPy, without
    tie runs. Within a run of equal values the keys are ordered by label, so a run's object pixels come last,
    after its valid non-object ones. An object pixel at sorted position ``p`` therefore has exactly
    ``valid_before(p) - j`` valid non-object pixels at or below its value (``j``: the object pixels before it
    in its row), and the ROC-AUC's Mann-Whitney count is their sum less half of the ties with non-object pixels,
    which only the runs holding both kinds have. The pointing game and the top-``n_pos`` share need the bounds
    of two runs per map (the highest valid one, the one at the cut), found by binary search of the sorted
    keys. Every count is an integer, so the ROC-AUC and the pointing game equal the tie-run computation's to
    the bit; the top-``n_pos`` share sums the same terms in another order."""
    M, N = keys.shape[:2]
    key = keys.view(np.int64)[..., 0]                                   # [M, N]: (value << 32) | label, sorted
    flat = key.reshape(-1)
    rows = np.arange(M)
    label = keys.view(np.uint8)[..., 0]                                 # the label's low byte (little-endian)
    on_object = np.flatnonzero(label & 2)                               # sorted flat positions
    offs = np.searchsorted(on_object, rows * N)
    ends = np.append(offs[1:], len(on_object))
    n_pos = ends - offs
    if all_valid:
        upto = None
        n = np.full(M, N, dtype=np.int64)
        before_object = on_object - np.repeat(rows * N, n_pos)          # valid pixels before each object pixel
    else:
        upto = np.cumsum(label & 1, axis=1, dtype=np.int64)             # valid pixels up to each position
        n = upto[:, -1]
        before_object = upto.reshape(-1)[on_object] - 1

    def valid_before(m: np.ndarray, at: np.ndarray) -> np.ndarray:
        """Valid pixels of rows ``m`` before in-row positions ``at`` (``at`` may be ``N``)."""
        if upto is None:
            return at
        return np.where(at > 0, upto[m, np.maximum(at - 1, 0)], 0)

    def run_start(m: np.ndarray, value: np.ndarray) -> np.ndarray:
        """In-row position of the first key of ``value`` in rows ``m`` (sorted by row)."""
        return _search_rows(key, m, value << 32, "left")

    def objects_from(at: np.ndarray) -> np.ndarray:
        """Object pixels of each row at or after its in-row position ``at``."""
        return ends - np.searchsorted(on_object, rows * N + at)

    # ROC-AUC: Mann-Whitney count over object pixels, ties with non-object pixels counted half
    running = np.concatenate(([0], np.cumsum(before_object)))
    at_or_below = running[ends] - running[offs] - n_pos * (n_pos - 1) // 2
    value_of = flat[on_object] >> 32
    first_of_block = np.ones(len(on_object), dtype=bool)                 # object pixels of one run, per row
    first_of_block[1:] = value_of[1:] != value_of[:-1]
    first_of_block[offs[n_pos > 0]] = True
    blocks = np.flatnonzero(first_of_block)
    block_len = np.diff(np.append(blocks, len(on_object)))
    q = on_object[blocks]
    shared = (q % N > 0) & ((flat[q - 1] >> 32) == value_of[blocks])   # the run also holds non-object pixels
    m_s, q_s = q[shared] // N, q[shared] % N
    ties = valid_before(m_s, q_s) - valid_before(m_s, run_start(m_s, value_of[blocks][shared]))
    half_ties = np.bincount(m_s, weights=block_len[shared] * ties, minlength=M) / 2.0
    pairs = n_pos * (n - n_pos)

    # pointing game: the object's share of the highest run holding a valid pixel
    top = np.full(M, N - 1) if upto is None else np.argmax(upto == n[:, None], axis=1)
    top_start = run_start(rows, key[rows, top] >> 32)
    top_valid = n - valid_before(rows, top_start)
    top_objects = objects_from(top_start)

    # top-n_pos share: objects in runs above the cut count fully, the run across it by its overlap
    cut = n - n_pos                                                      # valid pixels below the top n_pos
    at_cut = cut if upto is None else _search_rows(upto, rows, cut + 1, "left")
    at_cut = np.minimum(at_cut, N - 1)
    cut_value = key[rows, at_cut] >> 32
    lo, hi = run_start(rows, cut_value), _search_rows(key, rows, (cut_value << 32) | 0xFFFFFFFF, "right")
    below, through = valid_before(rows, lo), valid_before(rows, hi)
    across = below < cut
    from_lo, from_hi = objects_from(lo), objects_from(hi)
    above = np.where(across, from_hi, from_lo)
    in_run = from_lo - from_hi
    share = np.where(across, in_run * (through - cut) / np.maximum(through - below, 1), 0.0)

    t = torch.from_numpy
    out[:, 6] = t(top_objects.astype(np.float64)) / t(np.maximum(top_valid, 1).astype(np.float64))
    out[:, 7] = t(above + share) / t(n_pos.astype(np.float64))
    out[:, 8] = t(at_or_below - half_ties) / t(pairs.astype(np.float64))


def _search_rows(sorted_rows: np.ndarray, m: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """For each ``(m[i], values[i])`` (``m`` non-decreasing), the in-row insertion point of ``values[i]`` in row
    ``m[i]`` of ``sorted_rows`` (each row sorted): one binary search per row."""
    out = np.empty(len(m), dtype=np.int64)
    starts = np.flatnonzero(np.diff(m, prepend=-1))
    for a, b in zip(starts, np.append(starts[1:], len(m))):
        out[a:b] = np.searchsorted(sorted_rows[m[a]], values[a:b], side=side)
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


__all__ = ["MAX_PIXELS", "MAX_PIXELS_CPU", "score_image", "score_images"]

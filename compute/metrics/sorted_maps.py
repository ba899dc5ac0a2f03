"""One sort of a chunk's maps on a CPU, and every score that depends on the order of the pixels read from it.

:func:`compute.metrics.batched.score_images` scores the maps of a chunk of images together. On a CPU, the
pixel passes are what costs (a chunk is about a million map pixels), so this module sorts each map once and
derives from the sorted pixels everything that depends on their order alone — without another pass over
them:

- **Otsu's histogram.** The normalised value ``(x·h - lo) / span`` is a monotone function of ``x`` in float32
  (each rounding is), so the pixels of each bin are a contiguous range of the sorted pixels. For each bin edge
  the smallest float32 ``x`` whose normalised value reaches it is found from the formula inverted in float64,
  then checked and searched among the floats with the formula itself (:func:`first_value_where`); a binary
  search of the sorted keys gives the bin's first position. The counts equal a histogram of the normalised
  pixels exactly.
- **The binary map's counts** (true positives, predicted pixels in each mask): the pixels above Otsu's
  threshold are the sorted pixels from one position on, found the same way.
- **The rank-based scores** of every request's masks (pointing game, relevance rank, ROC-AUC), from the
  positions of each mask's pixels in the sorted order.
- **A mask's pixel counts and sums** (:meth:`SortedMaps.where`, :meth:`SortedMaps.sums_at`): its pixels'
  sorted positions, how many lie in each row or above the binary map's cut, and the float64 sum of a function
  of their values, read back from the keys — the same float32 values, summed in another order.

Keys: all maps of a chunk go into one int64 array, row by row, each key ``1 << 62 | row << (32 + L) | value
<< L | label``: ``value`` the float32 bits made into an order-preserving unsigned integer (``-0.0`` made
``+0.0`` first, so equal values give equal words) and ``label`` the ``L`` bits of the pixel's masks (per
slot, valid then object); bit 62 makes every key a positive normal float64 of the same order, which NumPy
sorts faster. Sorting each row also sorts the whole array, so that every search of a row — a run of equal
values, a threshold, the ``k``-th valid pixel — is one :func:`numpy.searchsorted` call for all rows at once.

The counts are integers, exact in float64; the ROC-AUC and the pointing game are ratios of them; the
relevance rank adds the same terms as :mod:`compute.metrics.threshold_free` in another order.
"""

from __future__ import annotations

import numpy as np

#: a key holds the row, 32 value bits and the label bits below bit 61, and bit 62 is set: every key is then
#: also a positive, normal float64 whose order is the integer's, and NumPy sorts float64 faster than int64
KEY_BITS = 61
_FLOAT_ORDER = 1 << 62


def fits(rows: int, label_bits: int) -> bool:
    """Whether ``rows`` maps with ``label_bits`` label bits fit in the keys."""
    return max(rows - 1, 1).bit_length() + 32 + label_bits <= KEY_BITS


def _ordered(x: np.ndarray, non_negative: bool = False) -> np.ndarray:
    """int32 whose order is float32 ``x``'s (``-0.0`` and ``+0.0`` alike; ``x`` finite). ``non_negative``: no
    value of ``x`` is below zero, so its bits are already in order."""
    bits = (x.astype(np.float32, copy=False) + np.float32(0.0)).view(np.int32)
    return bits if non_negative else _flip_negative(bits)


def _flip_negative(bits: np.ndarray) -> np.ndarray:
    """int32 ``bits`` with the magnitude bits of the negative ones flipped: float32 bits to ordered integers
    and back (the map is its own inverse)."""
    flip = np.right_shift(bits, 31)
    np.bitwise_and(flip, 0x7FFFFFFF, out=flip)
    return np.bitwise_xor(bits, flip, out=flip)


class SortedMaps:
    """The chunk's maps (``values``: ``[M, N]`` float32, finite; ``non_negative`` when no value is below zero),
    each sorted, as one sorted int64 array ``flat``; ``labels`` (``[B, N]`` unsigned integers, ``M = B·K``: an
    image's ``K`` maps are consecutive rows) holds each pixel's ``label_bits`` mask bits."""

    def __init__(self, values: np.ndarray, labels: np.ndarray, label_bits: int, non_negative: bool = False):
        M, N = values.shape
        B = labels.shape[0]
        self.M, self.N, self.L = M, N, label_bits
        self.non_negative = non_negative
        self.rows = np.arange(M, dtype=np.int64)
        self.row_start = self.rows * N
        self._base = _FLOAT_ORDER + (self.rows << (32 + label_bits)) + (1 << (31 + label_bits))
        # the keys with a 0 on either side (below any key), so that a pixel's neighbours are read without a bound
        self._padded = np.zeros(M * N + 2, dtype=np.int64)
        key = self._padded[1:-1].reshape(M, N)
        np.left_shift(_ordered(values, non_negative), label_bits, out=key, dtype=np.int64)
        key += self._base[:, None]
        k3 = key.reshape(B, M // B, N)
        np.bitwise_or(k3, labels[:, None, :], out=k3)
        key.view(np.float64).sort(axis=1)                                # as float64: faster, same order
        self.flat = key.reshape(-1)
        self._label = None                                               # the label bits, made when needed
        self._where: dict[tuple[int, int], np.ndarray] = {}

    # -- pixels of a mask, and sums over them ------------------------------------------------------------------

    def where(self, bits: int, clear: int = 0) -> np.ndarray:
        """Flat positions (ascending) of the pixels whose labels have every bit of ``bits`` set and every bit of
        ``clear`` clear; computed once per pair."""
        if (bits, clear) not in self._where:
            if self._label is None:
                self._label = self.flat.astype(np.uint8 if self.L <= 8 else np.uint16 if self.L <= 16 else np.uint32)
            picked = np.bitwise_and(self._label, bits | clear)
            self._where[bits, clear] = np.flatnonzero(picked != 0 if clear == 0 and bits.bit_count() == 1
                                                      else picked == bits)
        return self._where[bits, clear]

    def per_row(self, pos: np.ndarray) -> np.ndarray:
        """``[M]``: how many of the flat positions ``pos`` (ascending) lie in each row."""
        return np.diff(np.searchsorted(pos, np.append(self.row_start, self.M * self.N)))

    def from_each(self, pos: np.ndarray, first: np.ndarray) -> np.ndarray:
        """``[M]``: how many of the flat positions ``pos`` (ascending) lie in each row ``m`` at or after ``first[m]``
        (a flat position within the row, or its end)."""
        return np.searchsorted(pos, self.row_start + self.N) - np.searchsorted(pos, first)

    def values_at(self, pos: np.ndarray) -> np.ndarray:
        """The float32 values of the pixels at flat positions ``pos`` (``-0.0`` read as ``+0.0``)."""
        word = (self.flat[pos] >> self.L).astype(np.int32)              # the ordered value, offset by 2**31
        np.bitwise_xor(word, np.int32(-1 << 31), out=word)
        return (word if self.non_negative else _flip_negative(word)).view(np.float32)

    def sums_at(self, pos: np.ndarray, of) -> np.ndarray:
        """``[M]`` float64: per row, the sum of ``of(values, counts)`` over the pixels at flat positions ``pos``
        (ascending): ``values`` their float32 values, row after row, ``counts`` how many lie in each row."""
        counts = self.per_row(pos)
        sums = np.zeros(self.M)
        if len(pos):
            some = np.flatnonzero(counts)                                # rows with a pixel: increasing starts
            starts = (np.cumsum(counts) - counts)[some]
            sums[some] = np.add.reduceat(of(self.values_at(pos), counts).astype(np.float64), starts)
        return sums

    def subset(self, pos: np.ndarray, bits: int, clear: int = 0) -> np.ndarray:
        """The flat positions ``pos`` (ascending) whose labels have every bit of ``bits`` set and every bit of
        ``clear`` clear (as :meth:`where`, within ``pos``: cheaper when ``pos`` are few)."""
        picked = np.bitwise_and(self.flat[pos], bits | clear)
        return pos[picked == bits]

    def first_at_least(self, x: np.ndarray) -> np.ndarray:
        """Flat position of the first pixel of each row ``m`` whose value is ``>= x[m, e]`` (the row's end when
        none is); ``x`` is ``[M, E]`` float32 (``+inf`` allowed)."""
        query = np.left_shift(_ordered(x), self.L, dtype=np.int64)
        query += self._base[:, None]
        return np.searchsorted(self.flat, query.reshape(-1)).reshape(x.shape)

    def run_bounds(self, row_value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and one-past-last flat position of the runs of equal values ``row_value`` (``key >> L``)."""
        lo = np.searchsorted(self.flat, row_value << self.L, side="left")
        hi = np.searchsorted(self.flat, (row_value << self.L) | ((1 << self.L) - 1), side="right")
        return lo, hi

    # -- thresholds -------------------------------------------------------------------------------------------

    def otsu_counts(self, values_min: np.ndarray, values_max: np.ndarray, h: np.ndarray, lo: np.ndarray,
                    span: np.ndarray, bins: int) -> np.ndarray:
        """``[M, bins]`` int64: each map's histogram of ``min(floor((x·h - lo) / span · bins), bins - 1)`` over
        [0, 1] (all arguments ``[M, 1]`` float32; ``span`` > 0). ``x·bins`` is exact, so a pixel reaches bin
        ``e`` exactly when its normalised value is ``>= e / bins``."""
        edges = (np.arange(1, bins, dtype=np.float32) / np.float32(bins))[None, :]
        pos = np.empty((self.M, bins + 1), dtype=np.int64)
        pos[:, 0], pos[:, -1] = self.row_start, self.row_start + self.N
        pos[:, 1:-1] = self.first_at_least(first_value_where(values_min, values_max, h, lo, span, edges, False))
        return np.diff(pos, axis=1)

    def first_above(self, values_min, values_max, h, lo, span, cut: np.ndarray) -> np.ndarray:
        """``[M]`` flat position of each map's first pixel whose normalised value is ``> cut`` (float32, ``inf``
        for none)."""
        return self.first_at_least(first_value_where(values_min, values_max, h, lo, span, cut.reshape(-1, 1),
                                                     strict=True))[:, 0]

    # -- the scores of one slot --------------------------------------------------------------------------------

    def slot_stats(self, out: np.ndarray, slot: int, all_valid: bool, first_on: np.ndarray | None,
                   ranks: bool) -> None:
        """Columns of ``out`` (``[M, ≥9]`` float64) for the slot whose valid and object bits are ``2·slot`` and
        ``2·slot + 1``: with ``first_on`` (each row's first binary pixel), 0 (true positives) and 1 (predicted
        valid pixels); with ``ranks``, 6-8 (pointing game, relevance rank, ROC-AUC).

        Valid pixels are counted through the positions of the others (void pixels, usually few): the valid
        pixels before flat position ``p`` are ``p`` less the void ones before it, and the ``g``-th valid pixel
        lies after ``g`` plus the number of void pixels with at most ``g`` valid ones before them."""
        M, N, flat = self.M, self.N, self.flat
        rows, row_start = self.rows, self.row_start
        on_object = self.where(1 << (2 * slot + 1))                     # sorted positions
        offs = np.searchsorted(on_object, row_start)
        ends = np.append(offs[1:], len(on_object))
        n_pos = ends - offs
        void = None if all_valid else self.where(0, 1 << (2 * slot))

        def valid_upto(pos: np.ndarray) -> np.ndarray:
            """Valid pixels of the whole chunk before flat positions ``pos``."""
            return pos if void is None else pos - np.searchsorted(void, pos)

        start_valid = valid_upto(row_start)                              # valid pixels before each row

        def valid_before(pos: np.ndarray, m: np.ndarray) -> np.ndarray:
            """Valid pixels of rows ``m`` before flat positions ``pos`` (within the row; ``pos`` may be its end)."""
            return valid_upto(pos) - start_valid[m]

        def valid_at(g: np.ndarray) -> np.ndarray:
            """Flat position of the chunk's ``g``-th valid pixel (from 0), kept within each row."""
            at = g if void is None else g + np.searchsorted(void - np.arange(len(void)), g, side="right")
            return np.clip(at, row_start, row_start + N - 1)

        def objects_from(pos: np.ndarray) -> np.ndarray:
            """Object pixels of each row at or after the row's flat position ``pos``."""
            return ends - np.searchsorted(on_object, pos)

        n = valid_upto(row_start + N) - start_valid
        if first_on is not None:
            out[:, 0] = objects_from(first_on)
            out[:, 1] = n - valid_before(first_on, rows)
        if not ranks:
            return
        L = self.L

        # ROC-AUC: per object pixel, the valid non-object pixels below its value (plus half of those equal to it,
        # below). Summed over a row's object pixels at positions p: the pixels before each (p - row start), less
        # the void ones and the object ones among them.
        summed = np.zeros(len(on_object) + 1, dtype=np.int64)
        np.cumsum(on_object, out=summed[1:])
        count = (summed[ends] - summed[offs] - row_start * n_pos - n_pos * (n_pos - 1) // 2).astype(np.float64)
        if void is not None:                             # each void pixel precedes the row's object pixels after it
            void_row = void // N
            count -= np.bincount(void_row, weights=ends[void_row] - np.searchsorted(on_object, void), minlength=M)
        # runs of equal values holding an object pixel and another pixel: the object pixels whose neighbour in
        # the sorted order has the same row and value; a run's object pixels are adjacent in ``on_object``
        key_of = flat[on_object]
        tied = ((key_of ^ self._padded[on_object]) < (1 << L)) | ((key_of ^ self._padded[2:][on_object]) < (1 << L))
        tied = np.flatnonzero(tied)                      # indices into on_object
        if len(tied):
            t_pos, t_value = on_object[tied], key_of[tied] >> L
            t_row = t_pos // N
            first = np.ones(len(tied), dtype=bool)
            first[1:] = t_value[1:] != t_value[:-1]
            starts = np.flatnonzero(first)
            k = np.diff(np.append(starts, len(tied)))                   # object pixels in each run
            m = t_row[starts]
            a, b = self.run_bounds(t_value[starts])
            counted = np.add.reduceat(valid_before(t_pos, t_row) - (tied - offs[t_row]), starts)   # as above
            below = valid_before(a, m) - (tied[starts] - offs[m])       # valid non-object pixels below the run
            others = valid_before(b, m) - valid_before(a, m) - k        # ... and in it
            count += np.bincount(m, weights=k * (below + others / 2.0) - counted, minlength=M)

        # pointing game: the object's share of the highest run holding a valid pixel
        top_start, _ = self.run_bounds(flat[valid_at(start_valid + n - 1)] >> L)
        top_valid = n - valid_before(top_start, rows)

        # relevance rank: objects in runs above the top n_pos count fully, the run across the cut by its overlap
        cut = n - n_pos                                                 # valid pixels below the top n_pos
        lo, hi = self.run_bounds(flat[valid_at(start_valid + cut)] >> L)
        below, through = valid_before(lo, rows), valid_before(hi, rows)
        across = below < cut
        from_lo, from_hi = objects_from(lo), objects_from(hi)
        above = np.where(across, from_hi, from_lo)
        share = np.where(across, (from_lo - from_hi) * (through - cut) / np.maximum(through - below, 1), 0.0)

        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, 6] = objects_from(top_start) / np.maximum(top_valid, 1)
            out[:, 7] = (above + share) / n_pos
            out[:, 8] = count / (n_pos * (n - n_pos)).astype(np.float64)


def first_value_where(values_min: np.ndarray, values_max: np.ndarray, h: np.ndarray, lo: np.ndarray,
                      span: np.ndarray, target: np.ndarray, strict: bool) -> np.ndarray:
    """``[M, E]`` float32: per row ``m`` and target ``t = target[m or 0, e]``, the smallest float32 ``x`` whose
    ``(x·h - lo) / span`` (float32 arithmetic, as the normalisation) is ``>= t`` (``> t`` when ``strict``),
    ``-inf`` when every value from the row's minimum on qualifies and ``+inf`` when not even its maximum does.
    All arguments but ``target`` are ``[M, 1]`` float32; ``span`` > 0.

    The formula inverted in float64 gives a guess, usually within a float32 step or two of the answer; but
    where ``x·h - lo`` loses ``x``'s low bits (``x`` near zero, ``lo`` far from it) many floats share one
    normalised value. So the answer is searched among the floats as ordered integers: from the guess in
    doubling steps until the condition flips, then by bisection — at most about 64 steps, a few in practice."""
    shape = np.broadcast_shapes(values_min.shape, target.shape)
    h, lo, span, target, values_min, values_max = (np.broadcast_to(a, shape).reshape(-1) for a in
                                                   (h, lo, span, target, values_min, values_max))

    def holds(x_ordered: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        x = _from_ordered(x_ordered)
        if at is None:
            norm, t = (x * h - lo) / span, target
        else:
            norm, t = (x * h[at] - lo[at]) / span[at], target[at]
        return norm > t if strict else norm >= t

    low, high = _ordered(values_min).astype(np.int64), _ordered(values_max).astype(np.int64)
    all_hold, none_hold = holds(low), ~holds(high)
    with np.errstate(invalid="ignore", over="ignore"):
        guess = (lo.astype(np.float64) + target.astype(np.float64) * span) / h
    g = _ordered(np.clip(guess, values_min, values_max).astype(np.float32)).astype(np.int64)
    # low fails and high holds (for the open entries); the guess and its neighbour towards the answer settle
    # most entries at once, the others go on in doubling steps, then by bisection
    ok = holds(g)
    probe = np.where(ok, np.maximum(g - 1, low), np.minimum(g + 1, high))
    res = holds(probe)
    high = np.where(ok, np.where(res, probe, g), np.where(res, probe, high))
    low = np.where(ok, np.where(res, low, probe), np.where(res, g, probe))
    at = np.flatnonzero((res == ok) & ~(all_hold | none_hold))          # not flipped yet
    g, ok = g[at], ok[at]
    step = np.full(len(at), 2, dtype=np.int64)
    while len(at):                                                       # doubling steps away from the guess
        probe = np.where(ok, np.maximum(g - step, low[at]), np.minimum(g + step, high[at]))
        res = holds(probe, at)
        high[at[res]], low[at[~res]] = probe[res], probe[~res]
        keep = res == ok                                                 # not flipped yet
        at, g, ok, step = at[keep], g[keep], ok[keep], step[keep] * 2
    at = np.flatnonzero(~(all_hold | none_hold) & (high - low > 1))
    while len(at):                                                       # bisection: low fails, high holds
        mid = (low[at] + high[at]) // 2
        up = holds(mid, at)
        high[at[up]], low[at[~up]] = mid[up], mid[~up]
        at = at[high[at] - low[at] > 1]
    x = _from_ordered(high)
    x[all_hold], x[none_hold] = -np.inf, np.inf
    return x.reshape(shape)


def _from_ordered(o: np.ndarray) -> np.ndarray:
    """float32 of :func:`_ordered` integers (the map is its own inverse on the bits)."""
    return _flip_negative(o.astype(np.int32)).view(np.float32)


__all__ = ["SortedMaps", "first_value_where", "fits"]

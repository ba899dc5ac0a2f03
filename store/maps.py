"""How a stored map and a stored mask are read, in NumPy only: what the dashboard draws and compute scores.

The metrics (:mod:`compute.metrics`) read a map the same way: bilinear upsampling to the mask's size, min-max
normalisation, Otsu's threshold; and they compare it with the protocol's ground truth of the class-index mask.
The steps the dashboard needs to draw what the metrics counted live here, free of torch and scikit-image, so
that a reader of the store never loads them:

- :func:`ground_truth` — the one definition of the protocols' object and valid pixels (compute uses it too);
- :func:`upsample` — bilinear resize equal to ``torch.nn.functional.interpolate(..., mode="bilinear",
  align_corners=False)`` (to float32 rounding);
- :func:`minmax_normalise` — the metrics' own normalisation (compute uses it too);
- :func:`otsu_thresholds` / :func:`otsu_binarise` — Otsu's threshold with scikit-image's arithmetic over 256
  bins of a map normalised to [0, 1] (the batched scorer that fills the store uses it too).
"""

from __future__ import annotations

import numpy as np

from store.schema import PROTOCOLS

#: VOC's void band: object borders and "difficult" regions of the class-index mask
VOID = 255
#: largest min-max span normalised directly; wider (finite) float32 ranges are halved first
SPAN_LIMIT = float(np.finfo(np.float32).max) / 2
#: Otsu's histogram bins
OTSU_BINS = 256
# Otsu bin centres as scikit-image computes them for an image spanning [0, 1]: float32 edges, midpoints.
_EDGES = np.linspace(0.0, 1.0, OTSU_BINS + 1, dtype=np.float32)
_CENTERS = (_EDGES[:-1] + _EDGES[1:]) / np.float32(2.0)


def ground_truth(mask: np.ndarray, protocol: str, classes: list[int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(object mask, valid-pixel mask) of a class-index ``mask`` under ``protocol``:

    - ``report`` — every non-background pixel is object, VOC's void band (255) included (a ``mask != 0`` test
      on the label image, as the source report reads it); every pixel is scored;
    - ``clean`` — void pixels are not scored; object = the pixels of ``classes`` (every object class when
      None; no pixel when it is empty).
    """
    mask = np.asarray(mask)
    if protocol == "report":
        return mask != 0, np.ones(mask.shape, dtype=bool)
    if protocol == "clean":
        valid = mask != VOID
        if classes is None:
            gt = (mask != 0) & valid
        else:
            classes = list(classes)
            gt = mask == classes[0] if len(classes) == 1 else np.isin(mask, classes)   # (isin: 10x slower)
        return gt & valid, valid
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights along one axis, as torch's ``align_corners=False`` kernel computes them in
    float32: source = (i + 0.5) · in/out − 0.5, clamped at 0; the upper neighbour clamped at the edge."""
    scale = np.float32(np.float32(n_in) / np.float32(n_out))
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w_hi = src - lo.astype(np.float32)
    return lo, hi, np.float32(1.0) - w_hi, w_hi


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to ``size = (H, W)`` (float32). Non-finite values count as 0 *before* the
    resize, so one NaN cell does not spread over its neighbours' interpolation footprint."""
    x = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if x.shape == tuple(size):
        return x
    r0, r1, wr0, wr1 = _bilinear_taps(x.shape[0], int(size[0]))
    c0, c1, wc0, wc1 = _bilinear_taps(x.shape[1], int(size[1]))
    top = x[r0][:, c0] * wc0 + x[r0][:, c1] * wc1
    bottom = x[r1][:, c0] * wc0 + x[r1][:, c1] * wc1
    return (wr0[:, None] * top + wr1[:, None] * bottom).astype(np.float32)


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to [0, 1] (float32; non-finite values count as 0); a constant map becomes all zeros."""
    x = np.asarray(x, dtype=np.float32)
    if not np.all(np.isfinite(x)):
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 0:
        return np.zeros_like(x)
    if hi - lo > SPAN_LIMIT:
        # a finite map whose range exceeds float32 (e.g. -3e38..3e38): x - lo would overflow to inf and the
        # quotient to NaN; halving everything is exact and leaves the normalised values unchanged
        x, lo, hi = x * np.float32(0.5), lo * 0.5, hi * 0.5
    return (x - lo) / (hi - lo)


def otsu_thresholds(counts: np.ndarray) -> np.ndarray:
    """Row-wise Otsu threshold of ``[K, 256]`` histograms of maps normalised to exactly [0, 1], with
    ``skimage.filters.threshold_otsu``'s arithmetic (float32 counts, cumulative sums along each row)."""
    c = np.asarray(counts).astype(np.float32)
    w1 = np.cumsum(c, axis=1)
    w2 = np.cumsum(c[:, ::-1], axis=1)[:, ::-1]
    cm = c * _CENTERS
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.cumsum(cm, axis=1) / w1
        m2 = (np.cumsum(cm[:, ::-1], axis=1) / w2[:, ::-1])[:, ::-1]
    var12 = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    return _CENTERS[np.argmax(var12, axis=1)]


def otsu_histogram(normalised: np.ndarray) -> np.ndarray:
    """The 256-bin counts of a map normalised to [0, 1] (1.0 falls in the last bin)."""
    bins = np.minimum((np.asarray(normalised, dtype=np.float32) * np.float32(OTSU_BINS)).astype(np.int64),
                      OTSU_BINS - 1)
    return np.bincount(bins.ravel(), minlength=OTSU_BINS)


def otsu_binarise(normalised: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Boolean map of pixels above Otsu's threshold, and the threshold (None for a constant map, which marks
    no pixel)."""
    normalised = np.asarray(normalised, dtype=np.float32)
    if float(normalised.max()) <= float(normalised.min()):
        return np.zeros(normalised.shape, dtype=bool), None
    t = float(otsu_thresholds(otsu_histogram(normalised)[None])[0])
    return normalised > t, t


__all__ = ["OTSU_BINS", "SPAN_LIMIT", "VOID", "ground_truth", "minmax_normalise", "otsu_binarise",
           "otsu_histogram", "otsu_thresholds", "upsample"]

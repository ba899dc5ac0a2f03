"""Counterfactual variants redrawn for display, in NumPy only, and the stored outcome of each.

The store keeps what the model did on each variant (``counterfactuals``), never the variant images: the batch
job builds them on the model's input tensors (:mod:`compute.counterfactuals`) and drops them. To show a reader
*what* the model saw, this module rebuilds them from what the store does keep — the ``images`` row's JPEG
thumbnail, its full-size class-index mask and cue mask — with the same rules:

- the object region of a row (:func:`object_region`): under ``report`` every non-background pixel, VOC's void
  band included; under ``clean`` the explained classes' pixels and the void within :data:`VOID_REACH` pixels of
  them;
- the fills (:func:`fill_values`): ``gray`` (mid gray), ``mean`` (the image's per-channel mean) and ``blur``
  (the normalised Gaussian blur of the pixels that stay, sigma :data:`BLUR_SIGMA` of the longer side);
- ``only_fg`` / ``no_fg`` replace the context / the object, ``mixed_rand`` pastes the object onto the partner
  image whose own objects were filled first, ``no_cue`` fills the planted cue.

They are *display reconstructions*: drawn at display resolution from a JPEG thumbnail, with the mask shrunk by
nearest neighbour, so their pixels differ slightly from the tensors the model was fed (the ``blur`` most, as it
is computed at another resolution); the stored scores and predictions are the real ones. Nothing here imports
torch (the dashboard never loads it).
"""

from __future__ import annotations

from functools import lru_cache

import duckdb
import numpy as np
import pandas as pd

from store.maps import VOID

#: Gaussian sigma of the ``blur`` fill as a share of the image's longer side (compute.counterfactuals.BLUR_SIGMA)
BLUR_SIGMA = 1 / 16
#: pixels (image resolution) of void that still belong to a ``clean`` region (compute.counterfactuals.VOID_REACH)
VOID_REACH = 8
#: below this share of kept pixels under the blur kernel, the kept pixels' mean fills in
KEPT_WEIGHT_FLOOR = 1e-3
FILLS = ("blur", "mean", "gray")
#: the order in which the dashboard shows an image's variants (the original first)
SHOWN_VARIANTS = ("no_fg", "only_fg", "mixed_rand", "no_cue")


# ---------------------------------------------------------------------------------------------------------------
# regions


def object_region(mask: np.ndarray, protocol: str, classes: list[int] | None) -> np.ndarray:
    """The object region (bool, the mask's resolution) of a class-index ``mask`` for one row: under ``report``
    (or ``classes`` None) every non-background pixel, void included; under ``clean`` the pixels of ``classes``
    and the void within :data:`VOID_REACH` pixels of them (a square neighbourhood, as the job's max-pool)."""
    from scipy.ndimage import maximum_filter

    mask = np.asarray(mask)
    if protocol == "report" or classes is None:
        return mask != 0
    if protocol != "clean":
        raise ValueError(f"unknown protocol {protocol!r}")
    region = np.isin(mask, list(classes))
    if region.any():
        near = maximum_filter(region.view(np.uint8), size=2 * VOID_REACH + 1, mode="constant") > 0
        region = region | ((mask == VOID) & near)
    return region


def resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size_hw`` by nearest-neighbour sampling (pixel centres)."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    if (h, w) == tuple(size_hw):
        return mask
    rows = np.minimum(((np.arange(size_hw[0]) + 0.5) * h / size_hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size_hw[1]) + 0.5) * w / size_hw[1]).astype(np.int64), w - 1)
    return mask[rows][:, cols]


# ---------------------------------------------------------------------------------------------------------------
# fills and variants (images as float [H, W, 3] in 0..255)


@lru_cache(maxsize=16)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """``[n, n]`` float32 whose row ``i`` holds the weights of a Gaussian of ``sigma`` centred on pixel ``i``,
    truncated at 3 sigma and normalised over the whole kernel, so that pixels beyond the edge count as zeros:
    ``matrix @ x`` is ``scipy.ndimage.gaussian_filter1d(x, sigma, mode="constant", truncate=3.0)``."""
    radius = int(3.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    offset = np.arange(n)[None, :] - np.arange(n)[:, None]
    matrix = np.where(np.abs(offset) <= radius, taps[np.clip(offset + radius, 0, 2 * radius)], 0.0)
    matrix = matrix.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel with zero padding, truncated at 3 sigma like the job's kernel: two matrix
    products (:func:`_gaussian_matrix`, rows then columns) in float32 — several times faster than a direct
    convolution of this kernel size, and far finer than a pixel's 1/255 step."""
    rows = np.tensordot(_gaussian_matrix(x.shape[0], float(sigma)), x.astype(np.float32), axes=(1, 0))
    both = np.tensordot(_gaussian_matrix(x.shape[1], float(sigma)), rows, axes=(1, 1))   # [W, H, ...]
    return np.swapaxes(both, 0, 1).astype(np.float64)


def fill_values(rgb: np.ndarray, keep: np.ndarray, fill: str) -> np.ndarray:
    """What replaces the removed pixels of ``rgb`` (float ``[H, W, 3]``, 0..255) given the pixels that stay
    (``keep``, bool ``[H, W]``): mid gray, the image's per-channel mean, or the normalised blur of the kept
    pixels (their mean far from any of them)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if fill == "gray":
        return np.full_like(rgb, 127.5)
    if fill == "mean":
        return np.broadcast_to(rgb.mean(axis=(0, 1), keepdims=True), rgb.shape).copy()
    if fill == "blur":
        w = keep.astype(np.float64)
        sigma = BLUR_SIGMA * max(rgb.shape[:2])
        num, den = _blur(rgb * w[..., None], sigma), _blur(w, sigma)[..., None]
        kept_mean = (rgb * w[..., None]).sum(axis=(0, 1)) / max(w.sum(), 1.0)
        return np.where(den > KEPT_WEIGHT_FLOOR, num / np.maximum(den, KEPT_WEIGHT_FLOOR), kept_mean)
    raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")


def replace_region(rgb: np.ndarray, region: np.ndarray, fill: str) -> np.ndarray:
    """``rgb`` with the pixels of ``region`` replaced by the fill computed from the others; every other pixel
    is left exactly as it was."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return np.where(region[..., None], fill_values(rgb, ~region, fill), rgb)


def variant_image(variant: str, rgb: np.ndarray, region: np.ndarray, fill: str, cue: np.ndarray | None = None,
                  partner_rgb: np.ndarray | None = None, partner_objects: np.ndarray | None = None) -> np.ndarray:
    """The ``variant`` of ``rgb`` (uint8 ``[H, W, 3]``) as uint8: ``region`` is the row's object region,
    ``cue`` the planted cue (``no_cue``), ``partner_rgb``/``partner_objects`` the ``mixed_rand`` partner's
    picture and foreground, all at ``rgb``'s size."""
    x = np.asarray(rgb, dtype=np.float64)
    if variant == "only_fg":
        out = replace_region(x, ~region, fill)
    elif variant == "no_fg":
        out = replace_region(x, region, fill)
    elif variant == "no_cue":
        if cue is None:
            raise ValueError("the no_cue variant needs the cue mask")
        out = replace_region(x, cue, fill)
    elif variant == "mixed_rand":
        if partner_rgb is None or partner_objects is None:
            raise ValueError("the mixed_rand variant needs the partner's picture and objects")
        background = replace_region(np.asarray(partner_rgb, dtype=np.float64), partner_objects, fill)
        out = np.where(region[..., None], x, background)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# what the store says about each variant


def stored_variants(con: duckdb.DuckDBPyConnection, run_id: str) -> list[str]:
    """The variants the run stored rows of, sorted; empty when it has none (older stores and
    ``--no-counterfactuals`` runs), ``no_cue`` only where its data had planted cues."""
    return [r[0] for r in con.execute("SELECT DISTINCT variant FROM counterfactuals WHERE run_id = ? ORDER BY 1",
                                      [run_id]).fetchall()]


def variant_outcomes(con: duckdb.DuckDBPyConnection, run_id: str, image_ids: list[str],
                     protocol: str | None = None, fill: str | None = None) -> pd.DataFrame:
    """The stored rows of the given images' variants: image_id, target_class, protocol, variant, fill,
    gt_target, orig_score, score, pred_label, pred_voc, same_top1, partner_id, partner_classes, reason."""
    return con.execute(
        "SELECT image_id, target_kind, target_class, protocol, variant, fill, gt_target, score_kind, orig_score, "
        "orig_pred_class, score, pred_class, pred_label, pred_voc, same_top1, partner_id, partner_classes, reason "
        "FROM counterfactuals WHERE run_id = ? AND list_contains(?::VARCHAR[], image_id) "
        "AND (? IS NULL OR protocol = ?) AND (? IS NULL OR fill = ?) "
        "ORDER BY image_id, protocol, target_class, variant",
        [run_id, list(image_ids), protocol, protocol, fill, fill]).df()


__all__ = ["BLUR_SIGMA", "VOID_REACH", "FILLS", "SHOWN_VARIANTS", "object_region", "resize_mask", "fill_values",
           "replace_region", "variant_image", "stored_variants", "variant_outcomes"]

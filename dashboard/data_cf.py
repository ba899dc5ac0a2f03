"""The Shortcuts page's access to the store: cached counterfactual statistics (:mod:`store.shortcuts`), the
stored outcome of each variant, and the variants redrawn for display (:mod:`store.variants`).

Like :mod:`dashboard.data`, every result is cached per store, fingerprint and choice, and every query runs on
its own cursor of the store's one cached connection.
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import data
from store import shortcuts, trust, variants

#: longer side of a redrawn variant (a card's column is narrower; the blur's cost grows with the area)
VARIANT_SIZE = 224
#: bootstrap resamples of the page's intervals: as many as ``vitlens report --shortcuts``, so the numbers agree
RESAMPLES = shortcuts.BOOTSTRAP


@st.cache_data(max_entries=64, show_spinner=False)
def stored_variants(store: str, fp: str, run_id: str) -> tuple[str, ...]:
    return tuple(data._run(store, fp, variants.stored_variants, run_id))


@st.cache_data(max_entries=64, show_spinner=False)
def fills(store: str, fp: str, run_id: str) -> tuple[str, ...]:
    """The fills the run's variants were made with (a rerun with another ``--cf-fill`` adds one)."""
    return tuple(data._run(store, fp, shortcuts.fills, run_id))


@st.cache_data(max_entries=32, show_spinner=False)
def reliance(store: str, fp: str, run_id: str, protocol: str, fill: str | None = None) -> pd.DataFrame:
    """The run's decisions under a protocol and fill (store.shortcuts.reliance): the one query every table of
    the page is computed from."""
    return data._run(store, fp, shortcuts.reliance, run_id, protocol, fill)


@st.cache_data(max_entries=32, show_spinner=False)
def method_rows(store: str, fp: str, run_id: str, protocol: str, fill: str | None = None) -> pd.DataFrame:
    """The decisions of :func:`reliance` joined with each method's map masses (store.shortcuts.method_rows):
    the method-trust and cue tables' rows, fetched once for both and for either interval."""
    return data._run(store, fp, shortcuts.method_rows, reliance(store, fp, run_id, protocol, fill), run_id, protocol)


#: the page's tables: name -> (the cached rows it is computed from, the store.shortcuts function of those rows,
#: called with resamples=...); the method-trust table has its own entry (:func:`method_trust`)
STATISTICS = {"context_share": (reliance, shortcuts.context_share_table), "bg_gap": (reliance, shortcuts.bg_gap_table),
              "cue_trust": (method_rows, shortcuts.cue_trust_table)}


@st.cache_data(max_entries=128, show_spinner=False)
def statistic(store: str, fp: str, run_id: str, protocol: str, name: str, fill: str | None = None) -> pd.DataFrame:
    """One of :data:`STATISTICS` of a run under a protocol and fill, with :data:`RESAMPLES` bootstrap resamples:
    the numbers of store.shortcuts' function of the same name (``vitlens report --shortcuts``)."""
    rows, table = STATISTICS[name]
    return table(rows(store, fp, run_id, protocol, fill), resamples=RESAMPLES)


@st.cache_data(max_entries=32, show_spinner=False)
def method_trust(store: str, fp: str, run_id: str, protocol: str, interval: str,
                 fill: str | None = None) -> pd.DataFrame:
    """The method-trust table with ``interval`` "normal" (instant) or "bootstrap" (as the report, seconds on a
    large store; store.trust)."""
    return trust.method_trust_table(method_rows(store, fp, run_id, protocol, fill), resamples=RESAMPLES,
                                    interval=interval)


@st.cache_data(max_entries=256, show_spinner=False)
def outcomes(store: str, fp: str, run_id: str, ids: tuple[str, ...], protocol: str,
             fill: str | None = None) -> pd.DataFrame:
    return data._run(store, fp, variants.variant_outcomes, run_id, list(ids), protocol, fill)


def _pixels(rec: dict, size_hw: tuple[int, int] | None = None):
    """(rgb uint8, class-index mask, cue mask or None; both masks at full size) of an images row; the picture
    shrunk to fit :data:`VARIANT_SIZE`, or resized to ``size_hw`` when given. Read-only: they are decoded once
    (:func:`_decoded`) for all the variants of an image and its uses as another image's partner."""
    return _decoded(rec["thumbnail"], rec.get("mask_png"), rec.get("cue_png"),
                    None if size_hw is None else tuple(size_hw))


@lru_cache(maxsize=64)
def _decoded(thumbnail: bytes, mask_png: bytes | None, cue_png: bytes | None, size_hw: tuple[int, int] | None):
    """:func:`_pixels` of the row's blobs, cached by their bytes (a page shows a few dozen pictures of at most
    twenty images)."""
    from PIL import Image

    from dashboard.overlay import decode_image, decode_mask

    image = decode_image(thumbnail)
    if size_hw is None:
        image.thumbnail((VARIANT_SIZE, VARIANT_SIZE), Image.BILINEAR)
    elif (image.height, image.width) != size_hw:
        image = image.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
    pixels = (np.asarray(image, dtype=np.uint8), decode_mask(mask_png), decode_mask(cue_png))
    for a in pixels:
        if a is not None:
            a.setflags(write=False)
    return pixels


def _region(mask: np.ndarray, protocol: str, gt_target: str | None, names, size_hw) -> np.ndarray:
    """The row's object region at the picture's size (see store.variants.object_region)."""
    from dashboard.overlay import target_classes

    classes = target_classes(gt_target, protocol, names)
    return variants.resize_mask(variants.object_region(mask, protocol, classes), size_hw)


@st.cache_data(max_entries=2048, show_spinner=False)
def variant_jpeg(store: str, fp: str, run_id: str, batch: tuple[str, ...], image_id: str, variant: str,
                 protocol: str, gt_target: str | None, fill: str, partner_id: str | None = None) -> bytes:
    """JPEG of ``variant`` of ``image_id`` redrawn for display (store.variants): empty bytes when the picture,
    its mask, or (``mixed_rand``) the partner's picture is not stored. ``batch``: the ids fetched together, the
    partners of the ``mixed_rand`` variants among them."""
    recs = data.images(store, fp, run_id, batch)
    rec = recs.get(image_id)
    if rec is None or rec.get("thumbnail") is None or rec.get("mask_png") is None:
        return b""
    rgb, mask, cue = _pixels(rec)
    size = rgb.shape[:2]
    names = data.class_names(store, fp, run_id)
    region = _region(mask, protocol, gt_target, names, size) if variant != "no_cue" else None
    extra: dict = {}
    if variant == "no_cue":
        if cue is None:
            return b""
        extra["cue"] = variants.resize_mask(cue > 0, size)
    elif variant == "mixed_rand":
        partner = recs.get(partner_id) if partner_id else None
        if partner is None or partner.get("thumbnail") is None or partner.get("mask_png") is None:
            return b""
        p_rgb, p_mask, _ = _pixels(partner, size)
        extra["partner_rgb"] = p_rgb
        extra["partner_objects"] = variants.resize_mask(variants.object_region(p_mask, "report", None), size)
    pixels = variants.variant_image(variant, rgb, region, fill if fill in variants.FILLS else "gray", **extra)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()

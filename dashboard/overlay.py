"""Every picture the dashboard draws: an explanation map over its image, with outlines.

One cell = the stored JPEG thumbnail, the map (min-max normalised, coloured by a colormap, blended with a chosen
opacity), and up to three outlines:

- ground truth — the object mask of the row's protocol (``store.maps.ground_truth``, the metrics' own);
- Otsu mask — the pixels the localisation metrics count as "on": the map upsampled to the mask's full size,
  min-max normalised and Otsu-thresholded as the metrics do (:mod:`store.maps`: NumPy only, so drawing never
  loads torch), then shrunk to the thumbnail;
- cue — the planted-cue mask (``images.cue_png``) when the image has one.

Outlines are two-tone (a coloured inner band and a dark outer ring) so that they stay visible on any colormap.
Nothing here imports Streamlit; the dashboard caches the bytes these functions return.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from store import maps
from store.schema import PROTOCOLS

COLORMAPS = ("jet", "turbo", "viridis", "inferno", "hot", "greys")
_PLOTLY_SCALES = {"jet": "Jet", "turbo": "Turbo", "viridis": "Viridis", "inferno": "Inferno", "hot": "Hot",
                  "greys": "gray"}
GT_COLOUR = (255, 255, 255)
OTSU_COLOUR = (255, 43, 214)
CUE_COLOUR = (255, 212, 0)
HALO_COLOUR = (0, 0, 0)
LEGEND = ("outlines: **white** ground truth (of the protocol) · **magenta** Otsu mask of the map (the pixels "
          "IoU/F1 count) · **yellow** planted cue")
#: how the colours of a map read: each map is scaled to its own range before it is drawn
SCALE_NOTE = ("each map is min-max normalised on its own: the colormap's low end is the map's minimum, its high "
              "end its maximum, so colours compare within a map, not across maps")


def legend(cues: bool = True) -> str:
    """The outlines' legend (the cue only on a store that plants one) and how the map's colours read."""
    text = LEGEND if cues else LEGEND.replace(" · **yellow** planted cue", "")
    return f"{text} · {SCALE_NOTE}"


@dataclass(frozen=True)
class OverlayStyle:
    """How a map is drawn. ``alpha`` is the opacity of the map over the image (0 = image only)."""

    cmap: str = "jet"
    alpha: float = 0.5
    gt: bool = True
    otsu: bool = False
    cue: bool = True

    def __post_init__(self):
        if self.cmap not in COLORMAPS:
            raise ValueError(f"unknown colormap {self.cmap!r}; choose from {', '.join(COLORMAPS)}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha!r}")


@lru_cache(maxsize=None)
def colormap_lut(name: str) -> np.ndarray:
    """256 × 3 uint8 lookup table of a colormap (sampled from plotly's colour scales)."""
    from plotly.colors import get_colorscale, sample_colorscale

    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose from {', '.join(COLORMAPS)}")
    scale = get_colorscale(_PLOTLY_SCALES[name])
    colours = sample_colorscale(scale, list(np.linspace(0.0, 1.0, 256)), colortype="tuple")
    lut = np.array([[float(v) for v in c] for c in colours], dtype=np.float64)
    if lut.max() <= 1.0:  # tuples come as 0..1 floats
        lut = lut * 255.0
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


def colorize(normalised: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """[H, W] values in [0, 1] -> [H, W, 3] uint8 colours."""
    idx = np.clip(np.rint(np.nan_to_num(normalised) * 255.0), 0, 255).astype(np.uint8)
    return colormap_lut(cmap)[idx]


def decode_image(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg)).convert("RGB")


def decode_mask(png: bytes | None) -> np.ndarray | None:
    """A stored PNG mask -> uint8 array (class indices, or 0/255 for a cue); None stays None."""
    if png is None or len(png) == 0:
        return None
    return np.array(Image.open(io.BytesIO(png)))


def _resize_bool(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Boolean mask -> boolean mask of ``size = (W, H)`` (nearest neighbour)."""
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(size, Image.NEAREST)
    return np.asarray(img) > 127


def outline(mask: np.ndarray, width: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(inner band, outer ring) of a boolean mask: the band ``width`` pixels inside its border and the ring
    one pixel outside it."""
    from scipy.ndimage import binary_dilation, binary_erosion

    mask = mask.astype(bool)
    if not mask.any():
        return mask, mask
    inner = mask & ~binary_erosion(mask, iterations=width, border_value=1)
    outer = binary_dilation(mask, iterations=1) & ~mask
    return inner, outer


def gt_mask(mask: np.ndarray, protocol: str, classes: list[int] | None = None) -> np.ndarray:
    """The object mask a row was scored against (the metrics' own ``ground_truth``)."""
    if protocol not in PROTOCOLS:
        protocol = "report"
    gt, _ = maps.ground_truth(mask, protocol, classes)
    return gt


def otsu_mask(heatmap: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, float | None]:
    """The metrics' Otsu mask of a map at ``size_hw`` (the ground-truth mask's size), and its threshold."""
    return maps.otsu_binarise(maps.minmax_normalise(maps.upsample(heatmap, size_hw)))


def normalised_map(heatmap: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """The map bilinearly upsampled to ``size_wh = (W, H)`` and min-max normalised (as the metrics do)."""
    return maps.minmax_normalise(maps.upsample(heatmap, (size_wh[1], size_wh[0])))


@dataclass(frozen=True)
class _Base:
    """What every cell of one image shares: the thumbnail's pixels and the outlines that do not depend on the
    map (ground truth, cue)."""

    rgb: np.ndarray                      # [H, W, 3] uint8 thumbnail
    mask_hw: tuple[int, int] | None      # full size of the ground-truth mask
    gt: tuple[np.ndarray, np.ndarray] | None
    cue: tuple[np.ndarray, np.ndarray] | None
    width: int                           # outline band width in thumbnail pixels


@lru_cache(maxsize=64)
def _base(thumbnail: bytes, mask_png: bytes | None, cue_png: bytes | None, protocol: str,
          classes: tuple[int, ...] | None) -> _Base:
    image = decode_image(thumbnail)
    size = image.size
    width = max(1, round(max(size) / 160))
    mask, cue = decode_mask(mask_png), decode_mask(cue_png)
    gt = outline(_resize_bool(gt_mask(mask, protocol, list(classes) if classes is not None else None), size),
                 width) if mask is not None else None
    cue_outline = outline(_resize_bool(cue > 0, size), width) if cue is not None else None
    rgb = np.asarray(image, dtype=np.uint8)
    rgb.setflags(write=False)
    return _Base(rgb, tuple(mask.shape[:2]) if mask is not None else None, gt, cue_outline, width)


def _as_bytes(data) -> bytes | None:
    """Blob values come back from DuckDB as ``bytearray``; the cache needs hashable ``bytes``."""
    return None if data is None else data if isinstance(data, bytes) else bytes(data)


def _paint_outline(rgb: np.ndarray, bands: tuple[np.ndarray, np.ndarray], colour) -> None:
    inner, outer = bands
    rgb[outer] = HALO_COLOUR
    rgb[inner] = colour


def render(thumbnail: bytes, heatmap: np.ndarray | None = None, mask_png: bytes | None = None,
           cue_png: bytes | None = None, protocol: str = "report", classes: list[int] | None = None,
           style: OverlayStyle = OverlayStyle()) -> Image.Image:
    """The thumbnail with ``heatmap`` blended over it and the outlines ``style`` asks for.

    ``thumbnail``, ``mask_png`` and ``cue_png`` are the bytes of the ``images`` row (the masks at full image
    size; either may be None). ``classes`` restricts the ground truth to those mask indices (the ``clean``
    protocol's explained class); None means every object. The parts shared by all maps of an image are
    decoded once and kept in a small cache.
    """
    base = _base(_as_bytes(thumbnail), _as_bytes(mask_png), _as_bytes(cue_png), protocol,
                 tuple(classes) if classes is not None else None)
    h, w = base.rgb.shape[:2]
    if heatmap is not None and style.alpha > 0:
        heat = np.asarray(heatmap, dtype=np.float32)
        colours = colorize(normalised_map(heat, (w, h)), style.cmap).astype(np.float32)
        blended = (1.0 - style.alpha) * base.rgb.astype(np.float32) + style.alpha * colours
        out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    else:
        out = base.rgb.copy()
    if style.gt and base.gt is not None:
        _paint_outline(out, base.gt, GT_COLOUR)
    if style.otsu and heatmap is not None:
        binary, _ = otsu_mask(np.asarray(heatmap, dtype=np.float32), base.mask_hw or (h, w))
        _paint_outline(out, outline(_resize_bool(binary, (w, h)), base.width), OTSU_COLOUR)
    if style.cue and base.cue is not None:
        _paint_outline(out, base.cue, CUE_COLOUR)
    return Image.fromarray(out, mode="RGB")


def render_bytes(*args, fmt: str = "JPEG", **kwargs) -> bytes:
    """:func:`render` encoded (JPEG by default, which keeps a page of cells light)."""
    buf = io.BytesIO()
    image = render(*args, **kwargs)
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def mini_thumbnail_uri(thumbnail: bytes, size: int = 96) -> str:
    """A small JPEG data URI of a thumbnail, for image columns of tables."""
    img = decode_image(thumbnail)
    img.thumbnail((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def target_classes(gt_target: str | None, protocol: str, class_names) -> list[int] | None:
    """Mask indices of the row's ``gt_target`` under ``clean`` (the class the row was scored against), or None
    (every object) when the protocol is ``report`` or a name is not a known class."""
    if protocol != "clean" or not gt_target:
        return None
    names = [n.strip() for n in str(gt_target).split(",") if n.strip()]
    index = {n: i for i, n in enumerate(class_names)}
    if not names or any(n not in index for n in names):
        return None
    return [index[n] for n in names]

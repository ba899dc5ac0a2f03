"""The overlay renderer: blending, outlines, and the Otsu mask taken from the metrics' own pipeline."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dashboard import overlay as ov


def _jpeg(w=64, h=48, value=128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (value, value, value)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def scene():
    mask = np.zeros((96, 128), np.uint8)  # full size is twice the thumbnail
    mask[24:72, 32:96] = 1
    heat = np.zeros((6, 8), np.float32)
    heat[0:2, 0:2] = 1.0  # hot in the top-left corner, off the object
    return _jpeg(), _png(mask), mask, heat


def test_alpha_zero_without_outlines_is_the_thumbnail(scene):
    thumb, mask_png, _, heat = scene
    out = ov.render(thumb, heat, mask_png, style=ov.OverlayStyle(alpha=0.0, gt=False, otsu=False, cue=False))
    assert out.size == (64, 48)
    assert np.array_equal(np.asarray(out), np.asarray(ov.decode_image(thumb)))


def test_map_is_blended_with_the_colormap(scene):
    thumb, mask_png, _, heat = scene
    out = np.asarray(ov.render(thumb, heat, mask_png, style=ov.OverlayStyle("jet", 1.0, False, False, False)))
    lut = ov.colormap_lut("jet")
    assert np.abs(out[2, 2].astype(int) - lut[255]).max() <= 2     # hottest corner: top of the colormap
    assert np.abs(out[40, 60].astype(int) - lut[0]).max() <= 2     # cold elsewhere: bottom of the colormap


def test_ground_truth_outline_follows_the_mask_border(scene):
    thumb, mask_png, _, heat = scene
    out = np.asarray(ov.render(thumb, None, mask_png, style=ov.OverlayStyle(alpha=0.0, gt=True)))
    white = np.all(out == ov.GT_COLOUR, axis=-1)
    assert white.any()
    ys, xs = np.nonzero(white)  # the object is rows 12..35, columns 16..47 of the thumbnail
    assert ys.min() >= 12 and ys.max() <= 35 and xs.min() >= 16 and xs.max() <= 47
    assert not white[20:28, 24:40].any()  # only the border, not the inside


def test_otsu_outline_is_the_metrics_otsu_mask(scene):
    from compute.metrics.localisation import minmax_normalise, otsu_binarise, upsample

    thumb, mask_png, mask, heat = scene
    binary, thr = ov.otsu_mask(heat, mask.shape)
    ref, ref_thr = otsu_binarise(minmax_normalise(upsample(heat, mask.shape)))
    assert np.array_equal(binary, ref) and thr == ref_thr
    out = np.asarray(ov.render(thumb, heat, mask_png, style=ov.OverlayStyle(alpha=0.0, gt=False, otsu=True)))
    magenta = np.all(out == ov.OTSU_COLOUR, axis=-1)
    assert magenta.any()
    small = np.asarray(Image.fromarray(binary.astype(np.uint8) * 255).resize((64, 48), Image.NEAREST)) > 127
    assert small[magenta].all()  # the band lies inside the Otsu mask, at its border


def test_cue_outline_only_when_there_is_a_cue(scene):
    thumb, mask_png, _, heat = scene
    cue = np.zeros((96, 128), np.uint8)
    cue[80:92, 4:16] = 255
    with_cue = np.asarray(ov.render(thumb, heat, mask_png, _png(cue), style=ov.OverlayStyle(cue=True)))
    assert np.all(with_cue == ov.CUE_COLOUR, axis=-1).any()
    hidden = np.asarray(ov.render(thumb, heat, mask_png, _png(cue), style=ov.OverlayStyle(cue=False)))
    assert not np.all(hidden == ov.CUE_COLOUR, axis=-1).any()
    no_cue = np.asarray(ov.render(thumb, heat, mask_png, None, style=ov.OverlayStyle(cue=True)))
    assert not np.all(no_cue == ov.CUE_COLOUR, axis=-1).any()


def test_clean_protocol_outlines_only_the_explained_class():
    mask = np.zeros((96, 128), np.uint8)
    mask[10:40, 10:40] = 8     # cat
    mask[50:90, 70:120] = 15   # person
    cat_only = ov.gt_mask(mask, "clean", ov.target_classes("cat", "clean", ov_classes()))
    assert cat_only[20, 20] and not cat_only[60, 80]
    assert ov.target_classes("cat", "report", ov_classes()) is None
    assert ov.target_classes("not_a_class", "clean", ov_classes()) is None


def ov_classes():
    from compute.data.voc import VOC_CLASSES

    return VOC_CLASSES


def test_style_and_colormaps_are_validated():
    for name in ov.COLORMAPS:
        lut = ov.colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    with pytest.raises(ValueError):
        ov.OverlayStyle(cmap="rainbow<script>")
    with pytest.raises(ValueError):
        ov.OverlayStyle(alpha=1.5)


def test_blobs_from_duckdb_are_accepted(scene):
    thumb, mask_png, _, heat = scene
    a = ov.render_bytes(bytearray(thumb), heat, bytearray(mask_png))
    b = ov.render_bytes(thumb, heat, mask_png)
    assert a == b and a[:2] == b"\xff\xd8"
    assert ov.mini_thumbnail_uri(thumb).startswith("data:image/jpeg;base64,")

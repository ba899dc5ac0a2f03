"""hybrid:<a>*<b> and hybrid:<a>+<b> against per-image transcriptions: the parts' own naive maps, min-max
normalised, upsampled with a hand-written bilinear rule where resolutions differ, then combined pixel by pixel."""

from __future__ import annotations

import math

import pytest
import torch

from compute.capture import capture
from compute.methods import PREFIX_FACTORIES, REGISTRY, MethodError, get_method, parse_methods
from tests.methods.helpers import assert_matches_naive
from tests.methods.test_chefer_grad import naive_chefer_grad
from tests.methods.test_foundation_methods import naive_raw_attention, naive_rollout
from tests.methods.test_saliency import naive_saliency
from tests.methods.test_saw import naive_saw


def normalise(values: list[list[float]]) -> list[list[float]]:
    flat = [v for row in values for v in row]
    lo, hi = min(flat), max(flat)
    return [[(v - lo) / (hi - lo) if hi > lo else 0.0 for v in row] for row in values]


def _source(dst: int, size_in: int, size_out: int) -> tuple[int, int, float]:
    """Bilinear, align_corners=False: pixel centres map as (dst + 0.5) * in/out - 0.5, clamped at 0."""
    src = max((dst + 0.5) * size_in / size_out - 0.5, 0.0)
    i0 = int(math.floor(src))
    i1 = min(i0 + 1, size_in - 1)
    return i0, i1, src - i0


def upsample(values: list[list[float]], height: int, width: int) -> list[list[float]]:
    h_in, w_in = len(values), len(values[0])
    out = []
    for y in range(height):
        y0, y1, ly = _source(y, h_in, height)
        row = []
        for x in range(width):
            x0, x1, lx = _source(x, w_in, width)
            top = (1 - lx) * values[y0][x0] + lx * values[y0][x1]
            bottom = (1 - lx) * values[y1][x0] + lx * values[y1][x1]
            row.append((1 - ly) * top + ly * bottom)
        out.append(row)
    return out


def naive_hybrid(first, second, operator):
    def naive(model, image):
        a, b = first(model, image).tolist(), second(model, image).tolist()
        height, width = image.shape[1:]
        if (len(a) == height) != (len(b) == height):  # one pixel map, one patch map
            a = a if len(a) == height else upsample(a, height, width)
            b = b if len(b) == height else upsample(b, height, width)
        a, b = normalise(a), normalise(b)
        if operator == "*":
            out = [[math.sqrt(x * y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
        else:
            out = [[(x + y) / 2 for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
        return torch.tensor(out, dtype=image.dtype)
    return naive


CASES = [
    ("hybrid:chefer_grad*rollout(head_fusion=max)",
     naive_hybrid(naive_chefer_grad, lambda m, x: naive_rollout(m, x, "max", 0), "*")),
    ("hybrid:raw_attention+saliency", naive_hybrid(naive_raw_attention, naive_saliency, "+")),
    ("hybrid:saliency*chefer_grad", naive_hybrid(naive_saliency, naive_chefer_grad, "*")),
    ("hybrid:saw(head_weights=grad_relu)+rollout",
     naive_hybrid(lambda m, x: naive_saw(m, x, head_weights="grad_relu"), naive_rollout, "+")),
]
SPECS = [c[0] for c in CASES]


@pytest.mark.parametrize("spec,naive", CASES, ids=SPECS)
def test_matches_formula(spec, naive, tiny_vit, images):
    method = get_method(spec)
    maps = method(capture(tiny_vit, images, method.requires))
    for i in range(images.shape[0]):
        assert_matches_naive(maps[i], naive(tiny_vit, images[i]), what=f"image {i}")


def test_means_of_normalised_parts(tiny_vit, images):
    """Geometric mean is 0 wherever either part is at its minimum; both means lie in [0, 1] and differ."""
    cap = capture(tiny_vit, images, {"attn", "attn_grad"})
    geo = get_method("hybrid:chefer_grad*rollout")(cap)
    ari = get_method("hybrid:chefer_grad+rollout")(cap)
    part = get_method("chefer_grad")(cap)
    at_min = part == part.amin(dim=(1, 2), keepdim=True)
    assert (geo[at_min] == 0).all()
    assert geo.min() >= 0 and geo.max() <= 1 and ari.min() >= 0 and ari.max() <= 1
    assert (geo <= ari + 1e-12).all()  # AM-GM
    assert not torch.allclose(geo, ari)


def test_properties_and_stored_name():
    m = get_method("hybrid:rollout(start_layer=0,head_fusion=max) * chefer_grad")
    assert m.key == "hybrid:chefer_grad*rollout(head_fusion=max)"
    assert get_method(m.key).key == m.key
    assert m.requires == {"attn", "attn_grad"}
    assert m.class_specific and m.resolution == "patch"
    p = get_method("hybrid:raw_attention+saliency")
    assert p.key == "hybrid:raw_attention+saliency"
    assert p.requires == {"attn", "input_grad"} and p.class_specific and p.resolution == "pixel"
    plain = get_method("hybrid:raw_attention*rollout")
    assert not plain.class_specific and plain.requires == {"attn"}
    assert get_method("hybrid:saw*rollout").key == "hybrid:rollout*saw"


def test_lists_and_parsing():
    assert PREFIX_FACTORIES["hybrid"].__doc__.strip().splitlines()[0]
    methods = parse_methods("rollout,hybrid:rollout(head_fusion=max,start_layer=1)+chefer_grad,"
                            "hybrid:chefer_grad+rollout(start_layer=1,head_fusion=max)")
    assert [m.key for m in methods] == ["rollout", "hybrid:chefer_grad+rollout(head_fusion=max,start_layer=1)"]
    assert "hybrid" not in REGISTRY  # "all" lists plain methods only


@pytest.mark.parametrize("spec,message", [
    ("hybrid:nonsense*rollout", "valid: .*chefer_grad"),
    ("hybrid:rollout*rollout(depth=2)", "no option"),
    ("hybrid:rollout", "exactly one operator"),
    ("hybrid:rollout*saw+chefer_grad", "exactly one operator"),
    ("hybrid:*rollout", "hybrid:<a>\\*<b>"),
])
def test_bad_specs_are_refused_with_valid_names(spec, message):
    with pytest.raises(MethodError, match=message):
        get_method(spec)

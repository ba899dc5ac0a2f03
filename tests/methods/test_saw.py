"""saw against a per-block, per-head, per-token transcription of the SAW formula, for every weighting option."""

from __future__ import annotations

import pytest
import torch

from compute.capture import Captured, capture
from compute.methods import MethodError, get_method
from tests.conftest import make_vit
from tests.methods.helpers import assert_matches_naive
from tests.naive import grads, grid, naive_forward


def naive_saw(model, image, head_weights="grad_mean", layer_weights="uniform"):
    out = naive_forward(model, image)
    logits = out["logits"]
    attns = out["attn"]
    gs = grads(logits[logits.argmax()], attns)
    depth = len(attns)
    heads, n, _ = attns[0].shape
    total = [0.0] * (n - 1)
    for layer in range(depth):
        a, g = attns[layer].tolist(), gs[layer].tolist()
        if layer_weights == "uniform":
            alpha = 1.0 / depth
        elif layer_weights == "linear":
            alpha = (layer + 1) / sum(k + 1 for k in range(depth))
        else:
            alpha = 1.0 if layer == depth - 1 else 0.0
        for j in range(1, n):
            if head_weights == "grad_mean":
                value = 0.0
                for h in range(heads):
                    w = sum(g[h][0][k] for k in range(1, n)) / (n - 1)
                    value += w * a[h][0][j]
                value = max(value / heads, 0.0)
            else:
                value = sum(max(g[h][0][j], 0.0) * a[h][0][j] for h in range(heads)) / heads
            total[j - 1] += alpha * value
    lo, hi = min(total), max(total)
    normalised = [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in total]
    return grid(torch.tensor(normalised, dtype=attns[0].dtype), model)


CASES = [
    ("saw", {}),
    ("saw(head_weights=grad_relu)", {"head_weights": "grad_relu"}),
    ("saw(layer_weights=linear)", {"layer_weights": "linear"}),
    ("saw(head_weights=grad_relu,layer_weights=last)", {"head_weights": "grad_relu", "layer_weights": "last"}),
]
SPECS = [c[0] for c in CASES]


@pytest.fixture(scope="module")
def vit():
    """In the session's ``tiny_vit`` (seed 0) every head of two of the three blocks has a negative mean
    class-token gradient, so ``grad_mean`` leaves those blocks empty and the layer weights hardly matter; with
    this seed all three blocks contribute for every image's top class."""
    return make_vit(seed=7)


@pytest.mark.parametrize("spec,options", CASES, ids=SPECS)
@pytest.mark.parametrize("which", ["vit", "tiny_vit"])
def test_matches_formula(spec, options, which, request, images):
    model = request.getfixturevalue(which)
    method = get_method(spec)
    maps = method(capture(model, images, method.requires))
    for i in range(images.shape[0]):
        assert_matches_naive(maps[i], naive_saw(model, images[i], **options), what=f"image {i}")
        assert maps[i].min() == 0 and maps[i].max() == 1, "min-max normalised, and not a vacuous zero map"


def test_weighting_options_change_the_map(vit, images):
    cap = capture(vit, images, {"attn", "attn_grad"})
    maps = {spec: get_method(spec)(cap) for spec in SPECS}
    for a in SPECS:
        for b in SPECS:
            if a < b:
                assert not torch.allclose(maps[a], maps[b], atol=1e-6), f"{a} and {b} agree"


def test_last_block_only_is_normalised_gradcam_attn(vit, images):
    cap = capture(vit, images, {"attn", "attn_grad"})
    saw = get_method("saw(layer_weights=last)")(cap)
    cam = get_method("gradcam_attn")(cap)
    lo = cam.amin(dim=(1, 2), keepdim=True)
    hi = cam.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(saw, (cam - lo) / (hi - lo), atol=1e-12, rtol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_constant_map_gives_zeros_not_nan(spec):
    """Uniform attention with zero gradients makes every block's map constant: no division by zero."""
    b, heads, n, depth = 2, 3, 17, 3
    attn = [torch.full((b, heads, n, n), 1.0 / n, dtype=torch.float64) for _ in range(depth)]
    zero = [torch.zeros(b, heads, n, n, dtype=torch.float64) for _ in range(depth)]
    cap = Captured(input=torch.zeros(b, 3, 64, 64), outputs=torch.zeros(b, 10), target_value=torch.zeros(b),
                   target_class=torch.zeros(b, dtype=torch.long), num_prefix_tokens=1, grid=(4, 4),
                   num_heads=heads, attn=attn, attn_grad=zero)
    maps = get_method(spec)(cap)
    assert maps.shape == (b, 4, 4)
    assert torch.equal(maps, torch.zeros_like(maps))


def test_options_are_validated_and_named():
    assert get_method("saw").key == "saw"
    assert get_method("saw(layer_weights=uniform)").key == "saw"
    assert get_method("saw(layer_weights=last)").key == "saw(layer_weights=last)"
    with pytest.raises(MethodError, match="head_weights"):
        get_method("saw(head_weights=max)")
    with pytest.raises(MethodError, match="layer_weights"):
        get_method("saw(layer_weights=exp)")

"""gradcam_attn against a per-head, per-token transcription of Chefer et al.'s Grad-CAM baseline for ViT."""

from __future__ import annotations

import pytest
import torch

from compute.capture import capture
from compute.methods import get_method
from tests.methods.helpers import assert_batch_invariant, assert_target_sensitive, assert_well_formed
from tests.conftest import make_vit
from tests.naive import grads, grid, naive_forward

ATOL = 1e-5


@pytest.fixture(scope="module")
def vit():
    """The session's ``tiny_vit`` (seed 0) has a negative mean class-token gradient in every head of its last
    block, so the ReLU zeroes the whole map; this seed has heads of both signs, so the map carries information."""
    return make_vit(seed=7)


def naive_gradcam_attn(model, image):
    out = naive_forward(model, image)
    logits = out["logits"]
    a = out["attn"][-1]  # [heads, N, N]
    (g,) = grads(logits[logits.argmax()], [a])
    a = a.detach()
    heads, n, _ = a.shape
    cam = []
    for j in range(1, n):
        total = 0.0
        for h in range(heads):
            w = sum(g[h, 0, k] for k in range(1, n)) / (n - 1)
            total = total + w * a[h, 0, j]
        cam.append(max(float(total) / heads, 0.0))
    return grid(torch.tensor(cam, dtype=a.dtype), model)


@pytest.mark.parametrize("which", ["vit", "tiny_vit"])
def test_matches_paper_formula(which, request, images):
    model = request.getfixturevalue(which)
    method = get_method("gradcam_attn")
    maps = method(capture(model, images, method.requires))
    for i in range(images.shape[0]):
        torch.testing.assert_close(maps[i], naive_gradcam_attn(model, images[i]), atol=ATOL, rtol=0)
    if which == "vit":
        assert (maps.amax(dim=(1, 2)) > 0).all(), "the comparison is vacuous on all-zero maps"
    else:  # every head weight is negative: the ReLU leaves nothing
        assert (maps == 0).all()


def test_batch_of_four_equals_four_batches_of_one(vit, images):
    assert_batch_invariant(get_method("gradcam_attn"), vit, images)


def test_maps_are_finite_shaped_and_not_constant(vit, images):
    assert_well_formed(get_method("gradcam_attn"), vit, images)


def test_class_specific_method_depends_on_the_target(vit, images):
    assert_target_sensitive(get_method("gradcam_attn"), vit, images)


def test_weights_are_per_head_not_shared(vit, images):
    """One weight for all heads (the mean gradient over heads too) gives a different map."""
    cap = capture(vit, images, {"attn", "attn_grad"})
    ours = get_method("gradcam_attn")(cap)
    a, g = cap.attn[-1][:, :, 0, 1:], cap.attn_grad[-1][:, :, 0, 1:]
    shared = torch.relu((g.mean(dim=(1, 2), keepdim=True) * a).mean(dim=1)).reshape(-1, 4, 4)
    assert not torch.allclose(ours, shared)

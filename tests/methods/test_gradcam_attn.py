"""gradcam_attn against a per-head, per-token transcription of Chefer et al.'s Grad-CAM baseline for ViT."""

from __future__ import annotations

import torch

from compute.capture import capture
from compute.methods import get_method
from tests.methods.helpers import assert_matches_naive
from tests.naive import grads, grid, naive_forward


def naive_head_weights(model, image):
    """Per head of the last block: the mean of the top-1 logit's gradient w.r.t. the class token's attention to
    the patches, w_h = mean_{j >= 1} dy/dA_h[0, j]; with the detached attention ``[heads, N, N]``."""
    out = naive_forward(model, image)
    logits = out["logits"]
    a = out["attn"][-1]  # [heads, N, N]
    (g,) = grads(logits[logits.argmax()], [a])
    heads, n, _ = a.shape
    weights = [sum(float(g[h, 0, k]) for k in range(1, n)) / (n - 1) for h in range(heads)]
    return weights, a.detach()


def naive_gradcam_attn(model, image, head_weights=None):
    weights, a = head_weights or naive_head_weights(model, image)
    heads, n, _ = a.shape
    cam = []
    for j in range(1, n):
        total = 0.0
        for h in range(heads):
            total = total + weights[h] * float(a[h, 0, j])
        cam.append(max(total / heads, 0.0))  # ReLU of the head mean, not of each head's weight
    return grid(torch.tensor(cam, dtype=a.dtype), model)


def test_matches_paper_formula_with_heads_of_both_signs(both_signs_vit, images):
    """In every image the last block has heads with a positive AND heads with a negative weight, so that
    ReLU(mean_h w_h A_h) and mean_h ReLU(w_h) A_h (or dropping the negative heads) give different maps."""
    method = get_method("gradcam_attn")
    maps = method(capture(both_signs_vit, images, method.requires))
    for i in range(images.shape[0]):
        weights, a = naive_head_weights(both_signs_vit, images[i])
        assert min(weights) < 0 < max(weights), f"image {i}: head weights {weights} do not have both signs"
        assert_matches_naive(maps[i], naive_gradcam_attn(both_signs_vit, images[i], (weights, a)), what=f"image {i}")


def test_all_negative_head_weights_give_an_all_zero_map(tiny_vit, images):
    """``tiny_vit`` (seed 0): every last-block head weight is negative, so the ReLU leaves nothing — exactly."""
    method = get_method("gradcam_attn")
    maps = method(capture(tiny_vit, images, method.requires))
    for i in range(images.shape[0]):
        weights, a = naive_head_weights(tiny_vit, images[i])
        assert max(weights) < 0, f"image {i}: head weights {weights}"
        assert torch.equal(naive_gradcam_attn(tiny_vit, images[i], (weights, a)), torch.zeros(4, 4, dtype=a.dtype))
    assert (maps == 0).all()


def test_weights_are_per_head_not_shared(both_signs_vit, images):
    """One weight for all heads (the mean gradient over heads too) gives a different map."""
    cap = capture(both_signs_vit, images, {"attn", "attn_grad"})
    ours = get_method("gradcam_attn")(cap)
    a, g = cap.attn[-1][:, :, 0, 1:], cap.attn_grad[-1][:, :, 0, 1:]
    shared = torch.relu((g.mean(dim=(1, 2), keepdim=True) * a).mean(dim=1)).reshape(-1, 4, 4)
    assert not torch.allclose(ours, shared)

"""chefer_grad against a per-image, per-token transcription of Chefer, Gur & Wolf's (ICCV 2021) gradient rule."""

from __future__ import annotations

import torch

from compute.capture import capture
from compute.methods import get_method
from tests.methods.helpers import assert_matches_naive
from tests.naive import grads, grid, naive_forward


def naive_chefer_grad(model, image):
    out = naive_forward(model, image)
    logits = out["logits"]
    attns = out["attn"]
    gs = grads(logits[logits.argmax()], attns)
    heads, n, _ = attns[0].shape
    r = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for layer in range(len(attns)):  # block l paired with block l's gradient
        a, g = attns[layer].tolist(), gs[layer].tolist()
        fused = [[sum(max(g[h][i][j] * a[h][i][j], 0.0) for h in range(heads)) / heads for j in range(n)]
                 for i in range(n)]
        added = [[sum(fused[i][k] * r[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
        r = [[r[i][j] + added[i][j] for j in range(n)] for i in range(n)]
    return grid(torch.tensor(r[0][1:], dtype=attns[0].dtype), model)


def test_matches_paper_formula(tiny_vit, images):
    method = get_method("chefer_grad")
    maps = method(capture(tiny_vit, images, method.requires))
    assert (maps.amax(dim=(1, 2)) > 0).all()
    for i in range(images.shape[0]):
        assert_matches_naive(maps[i], naive_chefer_grad(tiny_vit, images[i]), what=f"image {i}")


def _rule(attns, grad_list):
    n = attns[0].shape[-1]
    r = torch.eye(n, dtype=attns[0].dtype).expand(attns[0].shape[0], n, n)
    for a, g in zip(attns, grad_list):
        r = r + (g * a).clamp(min=0).mean(dim=1) @ r
    return r[:, 0, 1:].reshape(-1, 4, 4)


def test_each_block_uses_its_own_gradient(tiny_vit, images):
    """Regression: pairing block i's attention with block L-1-i's gradient (gradients gathered by backward
    hooks, in reverse order) gives another map; ours is the forward-order pairing."""
    cap = capture(tiny_vit, images, {"attn", "attn_grad"})
    ours = get_method("chefer_grad")(cap)
    torch.testing.assert_close(ours, _rule(cap.attn, cap.attn_grad), atol=1e-10, rtol=0)  # full-matrix R
    mismatched = _rule(cap.attn, cap.attn_grad[::-1])
    for i in range(images.shape[0]):
        assert not torch.allclose(ours[i], mismatched[i], atol=1e-6)


def test_heads_are_averaged_within_each_image(tiny_vit, images):
    """Regression: flattening batch and heads together before the head mean (valid for one image only) mixes
    the images of a batch and changes every map."""
    cap = capture(tiny_vit, images, {"attn", "attn_grad"})
    ours = get_method("chefer_grad")(cap)
    n = cap.attn[0].shape[-1]
    r = torch.eye(n, dtype=cap.attn[0].dtype)
    for a, g in zip(cap.attn, cap.attn_grad):
        mixed = (g * a).reshape(-1, n, n).clamp(min=0).mean(dim=0)  # batch and heads averaged together
        r = r + mixed @ r
    mixed_map = r[0, 1:].reshape(4, 4)
    for i in range(images.shape[0]):
        assert not torch.allclose(ours[i], mixed_map, atol=1e-6)

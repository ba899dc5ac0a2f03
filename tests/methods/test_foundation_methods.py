"""raw_attention, rollout, gradcam, agcam against per-image transcriptions of their papers' formulas."""

from __future__ import annotations

import pytest
import torch

from compute.capture import capture
from compute.methods import MethodError, get_method
from tests.methods.helpers import assert_matches_naive
from tests.naive import grads, grid, naive_forward


def _top1(out):
    return out["logits"][out["logits"].argmax()]


def naive_raw_attention(model, image):
    out = naive_forward(model, image)
    a = out["attn"][-1]  # [heads, N, N]
    heads, n, _ = a.shape
    row = [sum(a[h, 0, j] for h in range(heads)) / heads for j in range(1, n)]
    return grid(torch.stack(row), model)


def naive_rollout(model, image, fusion="mean", start=0):
    out = naive_forward(model, image)
    n = out["attn"][0].shape[-1]
    joint = None
    for a in out["attn"][start:]:
        fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion].tolist()
        rows = []
        for i in range(n):
            row = [fused[i][j] + (1.0 if i == j else 0.0) for j in range(n)]
            total = sum(row)
            rows.append([row[j] / total for j in range(n)])  # each row divided by its own sum
        m = torch.tensor(rows, dtype=a.dtype)
        joint = m if joint is None else m @ joint
    return grid(joint[0, 1:], model)


def naive_gradcam(model, image):
    out = naive_forward(model, image)
    t = out["norm1"][-1]
    (g,) = grads(_top1(out), [t])
    n, c = t.shape
    tv, gv = t.tolist(), g.tolist()
    cam = [0.0] * (n - 1)
    for ch in range(c):
        w = sum(gv[p][ch] for p in range(1, n)) / (n - 1)  # patch tokens only, not the class token
        for p in range(1, n):
            cam[p - 1] += w * tv[p][ch]
    return grid(torch.tensor([max(v, 0.0) for v in cam], dtype=t.dtype), model)


def naive_agcam(model, image):
    out = naive_forward(model, image, detach_attn_input=True)
    gs = grads(_top1(out), out["attn"])
    n = out["attn"][0].shape[-1]
    total = torch.zeros(n - 1, dtype=gs[0].dtype)
    for s, g in zip(out["scores"], gs):
        for h in range(s.shape[0]):
            for j in range(1, n):
                total[j - 1] += max(g[h, 0, j], 0.0) * torch.sigmoid(s[h, 0, j])
    return grid(total, model)


CASES = [
    ("raw_attention", naive_raw_attention),
    ("rollout", naive_rollout),
    ("rollout(head_fusion=max,start_layer=1)", lambda m, x: naive_rollout(m, x, "max", 1)),
    ("rollout(head_fusion=min)", lambda m, x: naive_rollout(m, x, "min", 0)),
    ("gradcam", naive_gradcam),
    ("agcam", naive_agcam),
]


@pytest.mark.parametrize("spec,naive", CASES, ids=[c[0] for c in CASES])
def test_matches_paper_formula(spec, naive, tiny_vit, images):
    method = get_method(spec)
    maps = method(capture(tiny_vit, images, method.requires))
    for i in range(images.shape[0]):
        assert_matches_naive(maps[i], naive(tiny_vit, images[i]), what=f"image {i}")


def test_agcam_uses_residual_only_gradients(tiny_vit, images):
    """Detaching the attention input changes the map (so the reference's gradient path matters)."""
    method = get_method("agcam")
    cap = capture(tiny_vit, images, {"scores", "attn_grad", "attn_grad_residual"})
    assert not torch.allclose(cap.attn_grad[0], cap.attn_grad_residual[0])
    # the last block's attention gradient has no later attention to pass through: identical either way
    torch.testing.assert_close(cap.attn_grad[-1], cap.attn_grad_residual[-1])
    assert method(cap).shape == (4, 4, 4)


def test_rollout_row_normalisation_is_per_row(tiny_vit, images):
    """Regression for the common bug a / a.sum(-1) (without keepdim). With the head mean every row of A + I sums
    to 2, so the bug is invisible there; with max fusion rows differ and the buggy map is wrong."""
    cap = capture(tiny_vit, images, {"attn"})
    ours = get_method("rollout(head_fusion=max)")(cap)
    n = cap.attn[0].shape[-1]
    eye = torch.eye(n, dtype=cap.attn[0].dtype)
    joint = None
    for a in cap.attn:
        a = a.amax(1) + eye
        a = a / a.sum(dim=-1)[:, None, :]  # wrong axis
        joint = a if joint is None else a @ joint
    buggy = cap.to_grid(joint[:, 0, :])
    assert not torch.allclose(ours, buggy)


def test_bad_options_are_refused():
    with pytest.raises(MethodError, match="head_fusion"):
        get_method("rollout(head_fusion=median)")
    with pytest.raises(MethodError, match="no option"):
        get_method("rollout(depth=3)")
    with pytest.raises(MethodError, match="valid: "):
        get_method("nonsense")

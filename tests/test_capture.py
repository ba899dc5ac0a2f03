"""The single capture point: same outputs as the model, every gradient equal to an independent computation,
and the model left exactly as it was."""

from __future__ import annotations

import gc

import pytest
import torch

from compute.capture import REQUIREMENTS, capture
from tests.naive import grads, naive_forward


def test_outputs_match_the_untouched_model(tiny_vit, images):
    ref = tiny_vit(images)
    cap = capture(tiny_vit, images, {"attn"})
    torch.testing.assert_close(cap.outputs, ref.float() if cap.outputs.dtype == torch.float32 else ref)
    assert cap.attn_grad is None and cap.input_grad is None  # nothing asked, nothing computed


def test_every_tensor_matches_the_naive_forward(tiny_vit, images):
    cap = capture(tiny_vit, images, set(REQUIREMENTS) - {"internals"})
    for i in range(images.shape[0]):
        out = naive_forward(tiny_vit, images[i])
        y = out["logits"][out["logits"].argmax()]
        assert int(cap.target_class[i]) == int(out["logits"].argmax())
        g_attn = grads(y, out["attn"])
        g_scores = grads(y, out["scores"])
        g_tok = grads(y, out["norm1"])
        (g_in,) = grads(y, [out["input"]])
        for layer in range(len(tiny_vit.blocks)):
            torch.testing.assert_close(cap.attn[layer][i], out["attn"][layer].detach())
            torch.testing.assert_close(cap.scores[layer][i], out["scores"][layer].detach())
            torch.testing.assert_close(cap.tokens[layer][i], out["norm1"][layer].detach())
            torch.testing.assert_close(cap.attn_grad[layer][i], g_attn[layer])
            torch.testing.assert_close(cap.scores_grad[layer][i], g_scores[layer])
            torch.testing.assert_close(cap.tokens_grad[layer][i], g_tok[layer])
        torch.testing.assert_close(cap.input_grad[i], g_in)


def test_residual_only_gradient_matches_a_detached_forward(tiny_vit, images):
    cap = capture(tiny_vit, images, {"attn_grad_residual"})
    for i in range(images.shape[0]):
        out = naive_forward(tiny_vit, images[i], detach_attn_input=True)
        y = out["logits"][out["logits"].argmax()]
        for layer, g in enumerate(grads(y, out["attn"])):
            torch.testing.assert_close(cap.attn_grad_residual[layer][i], g)


def test_blocks_are_restored_after_capture_and_after_an_error(tiny_vit, images):
    before = [type(b).forward for b in tiny_vit.blocks]
    capture(tiny_vit, images, {"attn", "attn_grad"})

    def broken_target(outputs):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        capture(tiny_vit, images, {"attn"}, target=broken_target)
    for block, fwd in zip(tiny_vit.blocks, before):
        assert "forward" not in block.__dict__
        assert type(block).forward is fwd
    assert not any(p.requires_grad for p in tiny_vit.parameters())


def test_unknown_requirement_is_refused(tiny_vit, images):
    with pytest.raises(ValueError, match="unknown capture requirement"):
        capture(tiny_vit, images, {"attention"})


def test_fused_attention_model_gives_the_same_numbers_in_float32():
    """timm's fused path (scaled_dot_product_attention) and the explicit capture path agree."""
    from tests.conftest import make_vit

    model = make_vit().float()
    for blk in model.blocks:
        blk.attn.fused_attn = True
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(capture(model, x, {"attn"}).outputs, model(x), atol=1e-5, rtol=1e-5)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


@pytest.mark.parametrize("requires", [set(REQUIREMENTS), {"attn", "attn_grad_residual"}, {"internals", "attn_grad"}])
def test_a_capture_leaves_nothing_alive_once_dropped(requires, tiny_vit, images):
    """Nothing in the graph may point back at the recorded tensors (a cycle through autograd's C++ nodes is
    invisible to the garbage collector: every batch's whole graph would stay in memory)."""
    capture(tiny_vit, images, requires)
    before = _live_tensors()
    for _ in range(3):
        cap = capture(tiny_vit, images, requires)
        del cap
    assert _live_tensors() <= before

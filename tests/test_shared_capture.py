"""One capture serves every method: each map equals the map from a capture with only that method's needs,
and a capture without gradient needs runs no backward pass."""

from __future__ import annotations

import torch

from compute.capture import GRADIENT_KEYS, capture
from compute.methods import REGISTRY, parse_methods


def test_every_method_is_identical_under_the_shared_capture(tiny_vit, images):
    methods = parse_methods("all")
    assert len(methods) == len(REGISTRY)
    shared = capture(tiny_vit, images, set().union(*(m.requires for m in methods)))
    for m in methods:
        alone = m(capture(tiny_vit, images, m.requires))
        together = m(shared)
        assert torch.equal(alone, together), m.key


def test_attention_only_methods_need_no_backward(tiny_vit, images, monkeypatch):
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    needs = set().union(*(m.requires for m in parse_methods("raw_attention,rollout,attention_flow")))
    assert not needs & GRADIENT_KEYS
    capture(tiny_vit, images, needs)
    assert calls == []
    capture(tiny_vit, images, {"attn", "attn_grad", "tokens_grad", "input_grad"})
    assert calls == [1]  # all true gradients from one backward
    calls.clear()
    capture(tiny_vit, images, {"attn_grad", "attn_grad_residual"})
    assert calls == [1, 1]  # the residual-only gradient is a second backward on the same graph

"""Relevance propagation (LRP) through a timm ViT, from the logits down to the blocks, for a whole batch.

The rules are those of :mod:`compute.layers.lrp`, chained as Chefer, Gur & Wolf (CVPR 2021) chain them. The
relevance starts at the head output as the gradient of the explained value w.r.t. the logits (capture key
``output_grad``): for a class logit the one-hot vector of the class (as in the authors' code, not the logit
value); for a log-sum-exp over member classes (a VOC class made of several ImageNet classes) their softmax
weights, which also sum to 1. It then passes, per image:

- linear layers (head, fc2, fc1, proj, qkv): LRP-αβ with α=1, β=0, biases ignored;
- LayerNorm (norm1, norm2, final norm, fc_norm, q/k norms, the attention and MLP inner norms), GELU, softmax,
  dropout, drop-path and LayerScale: identity (relevance passes unchanged);
- skip additions ``x_mid = x_in + attn_branch`` and ``x_out = x_mid + mlp_branch`` (the branch taken after
  LayerScale): gradient×input split, each branch rescaled to its ``|Σ|`` share of the image's total; the two
  relevances reaching a block input (skip + through norm1) are added;
- the matmuls ``ctx = A·V`` and ``S = Q·Kᵀ``: gradient×input on both operands, each halved; the relevance of
  ``A`` after the halving is ``R_A``. Gradient×input is invariant to the attention scale, so it does not matter
  that the recorded ``q`` is pre-scaled;
- pooling: the class token is pooled (the only pooling :func:`compute.models.check_architecture` admits), so
  the head's input relevance goes to token 0.

**Conservation.** Every rule passes on exactly the relevance it receives, so the total at every block's input
is, per image, the total at the head output, ``1`` — up to relevance lost at zero denominators (none in
practice). :func:`block_relevance_sums` returns these totals.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from compute.capture import Captured
from compute.layers.lrp import add_split, linear_alpha1_beta0, matmul_relevance


class RelevanceError(ValueError):
    """The model or the capture lies outside what the propagation rules cover; the message says what."""


def _layer_scale(module: torch.nn.Module, where: str) -> Tensor | None:
    """LayerScale's gamma (or None for an identity); the relevance rule for it is the identity."""
    if isinstance(module, torch.nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if gamma is None or getattr(module, "inplace", False):
        raise RelevanceError(f"unsupported layer-scale module {type(module).__name__} at {where} "
                             "(expected timm LayerScale, not in-place, or Identity)")
    return gamma.detach()


def check_propagatable(cap: Captured) -> None:
    """Refuse, with the reason, a capture whose model or target the rules do not cover."""
    model = cap.model
    if cap.internals is None or model is None:
        raise RelevanceError("needs the capture's 'internals' (per-block activations and the model)")
    if getattr(model, "head_dist", None) is not None:
        raise RelevanceError("does not support distilled models (class and distillation heads averaged, "
                             "e.g. deit_*_distilled): no relevance rule for that average is defined")
    if getattr(model, "attn_pool", None) is not None or model.global_pool != "token":
        pool = "attention pooling" if getattr(model, "attn_pool", None) is not None else repr(model.global_pool)
        raise RelevanceError(f"needs the class token pooled (global_pool='token'), not {pool}")
    if not isinstance(model.head, torch.nn.Linear):
        raise RelevanceError("needs a linear classification head (the model is headless)")
    if (cap.target_class < 0).any():
        raise RelevanceError("explains a class logit; the target is not a class (e.g. cls_norm)")
    if cap.output_grad is None or cap.output_grad.shape != cap.outputs.shape:
        raise RelevanceError("needs the capture's gradient of the target w.r.t. the logits (output_grad)")


def _head_relevance(cap: Captured) -> Tensor:
    """Relevance of the last block's output tokens ``[B, N, C]``: start -> head -> class token -> final norm."""
    model = cap.model
    with torch.no_grad():
        tokens = model.norm(cap.final_tokens)  # final norm: identity rule, its output is the pooling input
        features = model.fc_norm(tokens[:, 0])  # fc_norm / head_drop: identity rule
    start = cap.output_grad.to(dtype=features.dtype, device=features.device)
    relevance = torch.zeros_like(tokens)
    relevance[:, 0] = linear_alpha1_beta0(features, model.head.weight, start)
    return relevance


def propagate(cap: Captured, stop_layer: int = 0) -> Iterator[tuple[int, str, Tensor]]:
    """Propagate the relevance from the head down to block ``stop_layer``, lazily, last block first.

    Yields ``(l, "attn", R_A [B, heads, N, N])`` and then ``(l, "input", R [B, N, C])`` — the relevance at block
    ``l``'s input ``x_in`` — for ``l = L-1, …, stop_layer``. Work for block ``l``'s Q·Kᵀ and qkv rules is done
    only when the consumer asks for the ``"input"`` item, so a consumer that stops after the last ``"attn"``
    item it needs pays nothing more.
    """
    check_propagatable(cap)
    model = cap.model
    relevance = _head_relevance(cap)
    for l in range(len(cap.internals) - 1, stop_layer - 1, -1):
        it, block = cap.internals[l], model.blocks[l]
        attn, mlp = block.attn, block.mlp
        if mlp.fc1.out_features != mlp.fc2.in_features:
            raise RelevanceError(f"block {l} has a gated MLP (fc1 -> fc2 is not one-to-one); unsupported")
        gamma1, gamma2 = _layer_scale(block.ls1, f"block {l} ls1"), _layer_scale(block.ls2, f"block {l} ls2")
        B, N, _ = it["x_in"].shape
        heads, d = it["v"].shape[1], it["v"].shape[-1]

        # x_out = x_mid + ls2(mlp(norm2(x_mid)))
        mlp_branch = it["mlp_out"] if gamma2 is None else it["mlp_out"] * gamma2
        r_skip, r_branch = add_split(it["x_mid"], mlp_branch, relevance)
        r_hidden = linear_alpha1_beta0(it["fc2_in"], mlp.fc2.weight, r_branch)  # -> fc2_in = act(fc1_out)
        r_h2 = linear_alpha1_beta0(it["h2"], mlp.fc1.weight, r_hidden)  # GELU, dropout, inner norm: identity
        relevance = r_skip + r_h2  # norm2: identity

        # x_mid = x_in + ls1(proj(norm(A·V)))
        attn_branch = it["attn_out"] if gamma1 is None else it["attn_out"] * gamma1
        r_skip, r_branch = add_split(it["x_in"], attn_branch, relevance)
        r_ctx = linear_alpha1_beta0(it["ctx_n"], attn.proj.weight, r_branch)
        r_ctx = r_ctx.reshape(B, N, heads, d).transpose(1, 2)  # [B, heads, N, d]
        r_a, r_v = matmul_relevance(it["attn"], it["v"], r_ctx)
        r_a, r_v = r_a.mul_(0.5), r_v.mul_(0.5)
        yield l, "attn", r_a

        r_q, r_kt = matmul_relevance(it["q"], it["k"].transpose(-2, -1), r_a)  # softmax: identity
        r_q, r_k = r_q.mul_(0.5), r_kt.transpose(-2, -1).mul_(0.5)
        r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(B, N, -1)  # timm's qkv layout
        r_h1 = linear_alpha1_beta0(it["h1"], attn.qkv.weight, r_qkv)
        relevance = r_skip + r_h1  # norm1: identity
        yield l, "input", relevance


def attention_relevances(cap: Captured, stop_layer: int = 0) -> Iterator[tuple[int, Tensor]]:
    """``(l, R_A)`` for ``l = L-1, …, stop_layer``, stopping as soon as block ``stop_layer``'s ``R_A`` is out
    (the rules below it are never run)."""
    for l, kind, r_a in propagate(cap, stop_layer):
        if kind == "attn":
            yield l, r_a
            if l == stop_layer:
                return


def block_relevance_sums(cap: Captured) -> Tensor:
    """``[B, L]``: total relevance at each block's input, per image (``1`` everywhere by conservation)."""
    sums = {l: r.sum(dim=(1, 2)) for l, kind, r in propagate(cap) if kind == "input"}
    return torch.stack([sums[l] for l in range(len(cap.internals))], dim=1)


__all__ = ["RelevanceError", "check_propagatable", "propagate", "attention_relevances", "block_relevance_sums"]

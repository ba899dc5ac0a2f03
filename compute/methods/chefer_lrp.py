"""Transformer attribution (Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization",
CVPR 2021): relevance propagation to every attention map, weighted by the attention gradient, then rolled out.

**Relevance propagation** (rules in :mod:`compute.methods._lrp_rules`). The relevance starts at the head
output as the gradient of the explained value w.r.t. the logits (capture key ``output_grad``): for a class logit
that is the one-hot vector of the class (``R = one_hot(c)``, as in the authors' code, not the logit value); for
a log-sum-exp over member classes (a VOC class made of several ImageNet classes, ``--explain present``) it is
their softmax weights, which also sum to 1. It is propagated backwards, per image, with explicit matrix
products:

- linear layers (head, fc2, fc1, proj, qkv): LRP-αβ with α=1, β=0 — only positive contributions,
  ``z_ij = x⁺_i w⁺_ij + x⁻_i w⁻_ij``, ``R_i = Σ_j z_ij / Σ_i' z_i'j · R_j``, biases ignored;
- LayerNorm (norm1, norm2, final norm, fc_norm, q/k norms, the attention and MLP inner norms), GELU, softmax,
  dropout, drop-path and LayerScale: identity (relevance passes unchanged);
- skip additions ``x_mid = x_in + attn_branch`` and ``x_out = x_mid + mlp_branch`` (the branch taken after
  LayerScale): gradient×input split, then each branch rescaled to carry the ``|Σ|`` share of the image's total
  (sums per image; the reference sums over the whole batch); the two relevances reaching a block input (skip +
  through norm1) are added;
- the matmuls ``ctx = A·V`` and ``S = Q·Kᵀ``: gradient×input on both operands, each halved; the relevance of
  ``A`` after the halving is ``R_A``. Gradient×input is invariant to the attention scale, so it does not matter
  that the recorded ``q`` is pre-scaled;
- pooling: class-token pooling sends the relevance to token 0; mean pooling distributes it by
  gradient×input, ``R_nc = (x_nc / P) / pooled_c · R_c``.

Zero denominators: a division whose denominator is exactly 0 gives 0, i.e. that output's relevance is dropped
(the authors' ``safe_divide`` does the same but also adds 1e-9 to every other denominator; not done here).

**Conservation.** With α=1, β=0, identity rules and the per-image normalised skip split, every rule passes on
exactly the relevance it receives, so the total relevance at every block's input (and at the head input) is,
per image, the total at the head output, ``1`` — up to relevance lost at zero denominators (none in practice).
:func:`block_relevance_sums` returns these totals.

**Map.** Per block ``Ā_l = mean_h (R_A ⊙ ∇A)⁺`` with ``∇A`` the true gradient of the explained value w.r.t.
the post-softmax attention (capture key ``attn_grad``). Then the identity is added, ``Â_l = Ā_l + I`` (paper,
Eq. 13, "to avoid self inhibition for each token"), the blocks are multiplied, ``joint = Â_L ⋯ Â_s``
(Eq. 14; s = ``start_layer``, 0-based), and the map is the class token's row over the patches,
``joint[cls, patches]``. For a mean-pooled model the class token does not reach the head, so the map is the
mean of the rows of the pooled tokens instead. This is also the authors' ViT code, where a row-normalising
line is commented out; ``row_norm=true`` restores it (as their BERT code and attention rollout do):
``Â_l = (Ā_l + I) / rowsum(Ā_l + I)``, row sums taken with keepdim.

Only the class-token row (or pooled-row mean) of ``joint`` is needed, so it is carried as a vector
``r ← r · Â_l`` from the last block down to ``start_layer``; propagation stops there. Distilled DeiT models
(class and distillation heads averaged) are refused: the reference defines no rule for that average.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from compute.capture import Captured
from compute.methods._lrp_rules import add_split, linear_alpha1_beta0, matmul_relevance, safe_divide
from compute.methods.base import Method, MethodError, register

SUPPORTED_POOLS = ("token", "avg")


def _layer_scale(module: torch.nn.Module, where: str) -> Tensor | None:
    """LayerScale's gamma (or None for an identity); the relevance rule for it is the identity."""
    if isinstance(module, torch.nn.Identity):
        return None
    gamma = getattr(module, "gamma", None)
    if gamma is None or getattr(module, "inplace", False):
        raise MethodError(f"chefer_lrp: unsupported layer-scale module {type(module).__name__} at {where} "
                          "(expected timm LayerScale, not in-place, or Identity)")
    return gamma.detach()


def _check(cap: Captured) -> None:
    model = cap.model
    if cap.internals is None or model is None:
        raise MethodError("chefer_lrp needs the capture's 'internals' (per-block activations and the model)")
    if getattr(model, "head_dist", None) is not None:
        raise MethodError("chefer_lrp does not support distilled models (class and distillation heads averaged, "
                          "e.g. deit_*_distilled): no relevance rule for that average is defined")
    if getattr(model, "attn_pool", None) is not None or model.global_pool not in SUPPORTED_POOLS:
        pool = "attention pooling" if getattr(model, "attn_pool", None) is not None else repr(model.global_pool)
        raise MethodError(f"chefer_lrp supports global_pool in {SUPPORTED_POOLS}, not {pool}")
    if not isinstance(model.head, torch.nn.Linear):
        raise MethodError("chefer_lrp needs a linear classification head (the model is headless)")
    if (cap.target_class < 0).any():
        raise MethodError("chefer_lrp explains a class logit; the target is not a class (e.g. cls_norm)")
    if cap.output_grad is None or cap.output_grad.shape != cap.outputs.shape:
        raise MethodError("chefer_lrp needs the capture's gradient of the target w.r.t. the logits (output_grad)")


def _pooled_tokens(model: torch.nn.Module, n_tokens: int) -> list[int]:
    """Indices of the tokens the pooling reads."""
    if model.global_pool == "token":
        return [0]
    start = 0 if getattr(model, "pool_include_prefix", False) else int(model.num_prefix_tokens)
    return list(range(start, n_tokens))


def _head_relevance(cap: Captured) -> Tensor:
    """Relevance of the last block's output tokens ``[B, N, C]``: one-hot -> head -> pooling -> final norm."""
    model = cap.model
    with torch.no_grad():
        tokens = model.norm(cap.final_tokens)  # final norm: identity rule, its output is the pooling input
        rows = _pooled_tokens(model, tokens.shape[1])
        pooled = tokens[:, 0] if model.global_pool == "token" else tokens[:, rows].mean(dim=1)
        features = model.fc_norm(pooled)  # fc_norm / head_drop: identity rule
    # d target / d logits: the one-hot vector of the explained class (the authors' start), or for a log-sum-exp
    # over member classes (VOC classes made of several ImageNet classes) their softmax weights; both sum to 1
    start = cap.output_grad.to(dtype=features.dtype, device=features.device)
    r_pooled = linear_alpha1_beta0(features, model.head.weight, start)
    relevance = torch.zeros_like(tokens)
    if model.global_pool == "token":
        relevance[:, 0] = r_pooled
    else:  # mean over the pooled tokens: gradient×input, d pooled_c / d x_nc = 1 / P
        relevance[:, rows] = tokens[:, rows] / len(rows) * safe_divide(r_pooled, pooled)[:, None, :]
    return relevance


def propagate(cap: Captured, stop_layer: int = 0) -> Iterator[tuple[int, str, Tensor]]:
    """Propagate the relevance from the head down to block ``stop_layer``, lazily, last block first.

    Yields ``(l, "attn", R_A [B, heads, N, N])`` and then ``(l, "input", R [B, N, C])`` — the relevance at block
    ``l``'s input ``x_in`` — for ``l = L-1, …, stop_layer``. Work for block ``l``'s Q·Kᵀ and qkv rules is done
    only when the consumer asks for the ``"input"`` item, so a consumer that stops after the last ``"attn"``
    item it needs pays nothing more.
    """
    _check(cap)
    model = cap.model
    relevance = _head_relevance(cap)
    for l in range(len(cap.internals) - 1, stop_layer - 1, -1):
        it, block = cap.internals[l], model.blocks[l]
        attn, mlp = block.attn, block.mlp
        if mlp.fc1.out_features != mlp.fc2.in_features:
            raise MethodError(f"chefer_lrp: block {l} has a gated MLP (fc1 -> fc2 is not one-to-one); unsupported")
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


def block_relevance_sums(cap: Captured) -> Tensor:
    """``[B, L]``: total relevance at each block's input, per image (``1`` everywhere by conservation)."""
    sums = {l: r.sum(dim=(1, 2)) for l, kind, r in propagate(cap) if kind == "input"}
    return torch.stack([sums[l] for l in range(len(cap.internals))], dim=1)


@register
class CheferLRP(Method):
    name = "chefer_lrp"
    requires = frozenset({"internals", "attn_grad"})
    summary = "Chefer et al. transformer attribution: LRP relevance of attention x its gradient, rolled out"
    class_specific = True
    defaults = {"start_layer": 0, "row_norm": False}

    def __init__(self, **options):
        super().__init__(**options)
        if not isinstance(self.options["row_norm"], bool):
            raise MethodError(f"chefer_lrp row_norm must be true or false, not {self.options['row_norm']!r}")
        start = self.options["start_layer"]
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise MethodError(f"chefer_lrp start_layer must be an integer >= 0, not {self.options['start_layer']!r}")

    def __call__(self, cap: Captured) -> Tensor:
        _check(cap)
        start, depth = int(self.options["start_layer"]), len(cap.internals)
        if start >= depth:
            raise MethodError(f"chefer_lrp start_layer={start} leaves no block (the model has {depth})")
        first = cap.internals[0]["attn"]
        B, n = first.shape[0], first.shape[-1]
        eye = torch.eye(n, dtype=first.dtype, device=first.device)
        rows = _pooled_tokens(cap.model, n)
        r = torch.zeros(B, 1, n, dtype=first.dtype, device=first.device)
        r[:, 0, rows] = 1.0 / len(rows)  # e_cls, or the mean over the pooled tokens
        for l, kind, r_a in propagate(cap, stop_layer=start):
            if kind != "attn":
                continue
            a = (r_a * cap.attn_grad[l]).clamp_(min=0).mean(dim=1) + eye
            if self.options["row_norm"]:
                a = a / a.sum(dim=-1, keepdim=True)
            r = r @ a  # r = e_clsᵀ Â_L ⋯ Â_l
            if l == start:
                break
        return cap.to_grid(r[:, 0])

"""Attention-map arithmetic shared by the methods: head fusion, class-token row products, gradient weighting.

Shapes: per-block attention (and its gradient) ``[B, heads, N, N]``, token 0 the class token, the first
``prefix`` tokens not patches. Everything is batched and never mixes images: reductions run over heads or
tokens, never over dim 0. Each function is the single place of a formula that several methods use, written in
one fixed order of floating-point operations (stored maps depend on it, so it changes only deliberately).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: Tensor, how: str) -> Tensor:
    """``[B, heads, N, N]`` -> ``[B, N, N]``: the mean, maximum or minimum over the heads."""
    if how == "mean":
        return attn.mean(dim=1)
    if how == "max":
        return attn.amax(dim=1)
    if how == "min":
        return attn.amin(dim=1)
    raise ValueError(f"head fusion must be one of {FUSIONS}, not {how!r}")


def plus_identity(a: Tensor, row_norm: bool = False) -> Tensor:
    """``a + I`` (the residual connection's share of each token), optionally divided row by row by its own
    sum. The sum is taken with ``keepdim`` so that row i is divided by row i's sum; the widely copied
    ``a / a.sum(dim=-1)`` broadcasts the sums along the wrong axis (column j divided by row j's sum)."""
    a = a + torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    if row_norm:
        a = a / a.sum(dim=-1, keepdim=True)
    return a


def class_row_product(factors: Iterable[Tensor], like: Tensor, residual: bool = False) -> Tensor:
    """The class token's row of a product of per-image ``[B, N, N]`` matrices, ``e_clsᵀ M_1 M_2 ⋯`` -> ``[B, N]``.

    ``factors`` are given left to right, i.e. for a rollout ``R = Â_L ⋯ Â_s`` the LAST block first, and may be
    a lazy iterable (a consumer that stops early pays for no more). Only one row is needed, so it is carried
    from the left, ``r ← r·M``: O(N²) instead of O(N³) work per factor. With ``residual`` each factor ``M``
    stands for ``I + M`` without forming it, ``r ← r + r·M``. ``like`` gives batch size, tokens, dtype, device.
    """
    row = torch.zeros(like.shape[0], 1, like.shape[-1], dtype=like.dtype, device=like.device)
    row[:, 0, 0] = 1.0  # e_cls
    for m in factors:
        row = row + row @ m if residual else row @ m
    return row[:, 0, :]


def gradcam_row(attn: Tensor, grad: Tensor, prefix: int) -> Tensor:
    """Grad-CAM on one attention map: each head's class-token row over the patches weighted by the mean of its
    gradient there, averaged over heads, rectified -> ``[B, patches]``::

        w_h = mean_j ∇A_h[cls, j],     ReLU( mean_h w_h · A_h[cls, j] )        j over patch tokens

    The ReLU acts on the head mean, so heads of opposite weight can cancel before it."""
    a, g = attn[:, :, 0, prefix:], grad[:, :, 0, prefix:]
    weights = g.mean(dim=-1, keepdim=True)  # one weight per image and head
    return torch.relu((weights * a).mean(dim=1))


def positive_head_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_h (a ⊙ b)⁺``: the head mean of the positive part of an element-wise product (an attention
    weighted by its gradient or its relevance), ``[B, heads, ...]`` -> ``[B, ...]``."""
    return (a * b).clamp(min=0).mean(dim=1)


__all__ = ["FUSIONS", "fuse_heads", "plus_identity", "class_row_product", "gradcam_row", "positive_head_mean"]

"""Batched relevance-propagation rules (layer-wise relevance propagation, LRP), chained through a ViT by
:mod:`compute.layers.vit_relevance`.

Every rule maps the relevance of a layer's output to the relevance of its input(s), for a whole batch at once,
with explicit matrix products (no autograd). Leading dimensions are batch-like; images never mix: the only
rule that sums over more than one token, :func:`add_split`, sums per image (over every dimension but dim 0).

Zero denominators: every rule divides by the quantity it redistributes (an output activation, or the sum of
positive contributions). :func:`safe_divide` returns exactly 0 where that denominator is exactly 0, so the
relevance arriving at such an output is dropped; elsewhere it divides exactly. The authors' ``safe_divide``
also zeroes those entries but, in addition, adds 1e-9 to every denominator; that stabiliser is left out here so
that the rules conserve relevance exactly (up to floating point) wherever no denominator is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``; exactly 0 where ``den == 0`` (broadcasting as ``num / den``)."""
    zero = den == 0
    out = num / den.masked_fill(zero, 1)
    return out.masked_fill_(zero, 0)


def linear_alpha1_beta0(x: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """LRP-αβ with α=1, β=0 through ``y = x Wᵀ (+ b)``; the bias is ignored.

    ``x [..., I]``, ``weight [O, I]``, ``relevance [..., O]`` -> ``[..., I]``. Only the positive contributions
    are kept, ``z_ij = x⁺_i w⁺_ji + x⁻_i w⁻_ji ≥ 0``, and ``R_i = Σ_j z_ij / (Σ_i' z_i'j) · R_j``.
    Conservation: ``Σ_i R_i = Σ_j R_j`` over the outputs ``j`` whose denominator is not 0.
    """
    w = weight.detach()
    wp = w.clamp(min=0)
    wn = w - wp
    xp = x.clamp(min=0)
    xn = x - xp
    z = xp @ wp.T
    z += xn @ wn.T  # Σ_i z_ij, ≥ 0
    # Where Σ_i z_ij == 0 every z_ij is 0, so any finite quotient gives R_i = Σ_j z_ij · s_j the zero rule's
    # value (that output's relevance is dropped); dividing by 1 there is safe_divide without the extra passes.
    s = relevance / z.masked_fill_(z == 0, 1)
    out = xp * (s @ wp)
    out += xn * (s @ wn)
    return out


def matmul_relevance(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Gradient×input through ``Z = a @ b`` (batched matmul), for BOTH operands, not yet halved.

    ``R_a[n, m] = a_nm · Σ_e b_me · R_ne / Z_ne`` and ``R_b[m, e] = b_me · Σ_n a_nm · R_ne / Z_ne``: each
    operand alone receives the whole relevance (``Σ R_a = Σ R_b = Σ R`` where no ``Z_ne`` is 0), so a caller that
    keeps both halves them.
    """
    s = safe_divide(relevance, a @ b)
    return a * (s @ b.transpose(-2, -1)), b * (a.transpose(-2, -1) @ s)


def add_split(x0: Tensor, x1: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance through a skip addition ``z = x0 + x1``, renormalised per image (dim 0 indexes images).

    First gradient×input: ``a = x0 · R / z``, ``b = x1 · R / z``. Then each branch is rescaled so that it carries
    the share ``|Σa| / (|Σa| + |Σb|)`` (resp. ``|Σb| / …``) of the image's total ``ΣR``, sums taken over every
    dimension but the first: ``a ← a · (|Σa| / (|Σa| + |Σb|) · ΣR) / Σa``. Hence ``Σa + Σb = ΣR`` per image
    (unless a branch sum is exactly 0, whose share is then dropped). The authors take these sums over the whole
    batch, which lets images exchange relevance; here each image is split on its own sums.
    """
    s = safe_divide(relevance, x0 + x1)
    a, b = x0 * s, x1 * s
    dims = tuple(range(1, relevance.ndim))
    sum_a, sum_b = a.sum(dims, keepdim=True), b.sum(dims, keepdim=True)
    total = relevance.sum(dims, keepdim=True)
    both = sum_a.abs() + sum_b.abs()
    a = a * safe_divide(safe_divide(sum_a.abs(), both) * total, sum_a)
    b = b * safe_divide(safe_divide(sum_b.abs(), both) * total, sum_b)
    return a, b


__all__ = ["safe_divide", "linear_alpha1_beta0", "matmul_relevance", "add_split"]

"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

Per block l: fuse heads (mean by default), add the identity for the residual connection and re-normalise each
row to sum to one — ``Â_l = (Ā_l + I) / rowsum(Ā_l + I)``, i.e. ``0.5·Ā_l + 0.5·I`` for the mean fusion,
the paper's formula. Then multiply through the layers, ``R = Â_L · … · Â_s`` (s = ``start_layer``), and read
the class token's row over the patches, ``R[cls, patches]``.

The row sum is taken with ``keepdim`` so that row i is divided by its own sum; the widely copied
``a / a.sum(dim=-1)`` broadcasts the sums along the wrong axis (column j is divided by row j's sum).
Options: ``head_fusion`` in {mean, max, min}; ``start_layer`` (0-based, default 0 = all blocks).

Only the class token's row of R is read, so it is built from the left, ``r ← r·Â_l`` for l = L … s starting
from ``r = e_cls``: the same numbers with O(N²) instead of O(N³) work per block.
"""

import torch

from compute.methods.base import Method, MethodError, register

FUSIONS = ("mean", "max", "min")


def fuse_heads(attn: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        return attn.mean(dim=1)
    if how == "max":
        return attn.amax(dim=1)
    if how == "min":
        return attn.amin(dim=1)
    raise MethodError(f"head_fusion must be one of {FUSIONS}, not {how!r}")


@register
class Rollout(Method):
    name = "rollout"
    requires = frozenset({"attn"})
    summary = "attention rollout: (head-fused attention + I), row-normalised, multiplied through the blocks"
    defaults = {"head_fusion": "mean", "start_layer": 0}

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["head_fusion"] not in FUSIONS:
            raise MethodError(f"rollout head_fusion must be one of {FUSIONS}, not {self.options['head_fusion']!r}")

    def __call__(self, cap):
        layers = cap.attn[int(self.options["start_layer"]):]
        if not layers:
            raise MethodError(f"rollout start_layer={self.options['start_layer']} leaves no block "
                              f"(the model has {len(cap.attn)})")
        b, _, n, _ = layers[0].shape
        eye = torch.eye(n, dtype=layers[0].dtype, device=layers[0].device)
        row = torch.zeros(b, 1, n, dtype=layers[0].dtype, device=layers[0].device)
        row[:, 0, 0] = 1.0  # e_cls
        for attn in reversed(layers):  # R = Â_L ⋯ Â_s, its first row built from the left
            a = fuse_heads(attn, self.options["head_fusion"]) + eye
            a = a / a.sum(dim=-1, keepdim=True)
            row = row @ a
        return cap.to_grid(row[:, 0, :])

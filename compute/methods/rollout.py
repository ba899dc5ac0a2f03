"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

Per block l: fuse heads (mean by default), add the identity for the residual connection and re-normalise each
row to sum to one — ``Â_l = (Ā_l + I) / rowsum(Ā_l + I)``, i.e. ``0.5·Ā_l + 0.5·I`` for the mean fusion,
the paper's formula. Then multiply through the layers, ``R = Â_L · … · Â_s`` (s = ``start_layer``), and read
the class token's row over the patches, ``R[cls, patches]``.

The row sum is taken with ``keepdim`` (:func:`compute.layers.attention.plus_identity`).
Options: ``head_fusion`` in {mean, max, min}; ``start_layer`` (0-based, default 0 = all blocks).

Only the class token's row of R is read, so it is built from the left, ``r ← r·Â_l`` for l = L … s starting
from ``r = e_cls``: the same numbers with O(N²) instead of O(N³) work per block.
"""

from compute.layers.attention import FUSIONS, class_row_product, fuse_heads, plus_identity
from compute.methods.base import Method, Option, register


@register
class Rollout(Method):
    name = "rollout"
    requires = frozenset({"attn"})
    summary = "attention rollout: (head-fused attention + I), row-normalised, multiplied through the blocks"
    option_specs = (Option("head_fusion", str, "mean", choices=FUSIONS),
                    Option("start_layer", int, 0, low=0, below="depth", note="0-based; 0 = every block"))

    def __call__(self, cap):
        self.check_model(cap)
        layers = cap.attn[self.options["start_layer"]:]
        fused = (plus_identity(fuse_heads(a, self.options["head_fusion"]), row_norm=True) for a in reversed(layers))
        return cap.to_grid(class_row_product(fused, like=layers[0]))  # R = Â_L ⋯ Â_s, its first row

"""Transformer attribution (Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention Visualization",
CVPR 2021): relevance propagation to every attention map, weighted by the attention gradient, then rolled out.

**Relevance propagation**: the relevance starts at the logits (the one-hot vector of the explained class, or
the softmax weights of a log-sum-exp target's member classes) and is propagated backwards, per image, with
LRP-αβ (α=1, β=0) through linear layers, identity through norms, activations and LayerScale, a per-image
renormalised gradient×input split at the skip additions, and halved gradient×input through ``A·V`` and
``Q·Kᵀ``; see :mod:`compute.layers.vit_relevance` (rules in :mod:`compute.layers.lrp`). It yields ``R_A``, the
relevance of each block's attention map; the totals are conserved block by block.

Zero denominators: a division whose denominator is exactly 0 gives 0, i.e. that output's relevance is dropped
(the authors' ``safe_divide`` does the same but also adds 1e-9 to every other denominator; not done here).

**Map.** Per block ``Ā_l = mean_h (R_A ⊙ ∇A)⁺`` with ``∇A`` the true gradient of the explained value w.r.t.
the post-softmax attention (capture key ``attn_grad``). Then the identity is added, ``Â_l = Ā_l + I`` (paper,
Eq. 13, "to avoid self inhibition for each token"), the blocks are multiplied, ``joint = Â_L ⋯ Â_s``
(Eq. 14; s = ``start_layer``, 0-based), and the map is the class token's row over the patches,
``joint[cls, patches]``. This is also the authors' ViT code, where a row-normalising line is commented out;
``row_norm=true`` restores it (as their BERT code and attention rollout do): ``Â_l = (Ā_l + I) / rowsum(Ā_l + I)``.

Only the class-token row of ``joint`` is needed, so it is carried as a vector ``r ← r · Â_l`` from the last
block down to ``start_layer``; propagation stops there. Refused, with the reason: distilled DeiT models (class
and distillation heads averaged; the reference defines no rule for that average), headless backbones and
targets that are not a class logit.
"""

from __future__ import annotations

from torch import Tensor

from compute.capture import Captured
from compute.layers.attention import class_row_product, plus_identity, positive_head_mean
from compute.layers.vit_relevance import RelevanceError, attention_relevances
from compute.methods.base import Method, MethodError, Option, register


@register
class CheferLRP(Method):
    name = "chefer_lrp"
    requires = frozenset({"internals", "attn_grad"})
    summary = "Chefer et al. transformer attribution: LRP relevance of attention x its gradient, rolled out"
    class_specific = True
    option_specs = (Option("start_layer", int, 0, low=0, below="depth", note="0-based; 0 = every block"),
                    Option("row_norm", bool, False))

    def __call__(self, cap: Captured) -> Tensor:
        if cap.internals is None or cap.model is None:
            raise MethodError("chefer_lrp needs the capture's 'internals' (per-block activations and the model)")
        self.check_model(cap)
        start = self.options["start_layer"]
        blocks = attention_relevances(cap, stop_layer=start)  # (l, R_A), last block first
        weighted = (plus_identity(positive_head_mean(r_a, cap.attn_grad[l]), self.options["row_norm"])
                    for l, r_a in blocks)
        try:
            return cap.to_grid(class_row_product(weighted, like=cap.internals[0]["attn"]))
        except RelevanceError as exc:
            raise MethodError(f"chefer_lrp {exc}") from None

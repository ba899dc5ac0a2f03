"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021), the self-attention rule without LRP.

Starting from the identity, every block's head-averaged, positively gradient-weighted attention is propagated
through the relevance matrix in forward order::

    R = I                                    (N × N, one per image)
    for l = 1 … L:   Ā_l = mean_h (∇A_l ⊙ A_l)⁺      ∇A_l = ∂y/∂A_l, the gradient of THIS block's attention
                     R  = R + Ā_l · R
    map = R[cls, patches]

Batch and heads are kept as separate axes: the head mean never mixes images (the reference flattens batch and
heads together, which is only correct for a batch of one). Block l's attention is multiplied by block l's own
gradient (the capture lists both in forward order); pairing it with another block's gradient — e.g. a list of
gradients gathered by backward hooks, which fire in reverse — gives a different, wrong map.

Only the class token's row of R is read, and R = (I + Ā_L) ⋯ (I + Ā_1), so the row is computed from the left,
r ← r + r·Ā_l for l = L … 1 starting from r = e_cls: the same numbers with O(N²) instead of O(N³) work per block.
"""

from compute.layers.attention import class_row_product, positive_head_mean
from compute.methods.base import Method, register


@register
class CheferGrad(Method):
    name = "chefer_grad"
    requires = frozenset({"attn", "attn_grad"})
    summary = "Chefer et al. 2021 gradient rule: R += mean_h((dy/dA * A)+) @ R through the blocks, CLS row"
    class_specific = True

    def __call__(self, cap):
        if len(cap.attn) != len(cap.attn_grad):
            raise ValueError(f"{len(cap.attn)} attention maps but {len(cap.attn_grad)} gradients")
        pairs = list(zip(cap.attn, cap.attn_grad))  # block l with block l's own gradient
        # R = (I + Ā_L) ⋯ (I + Ā_1), heads averaged within each image
        fused = (positive_head_mean(grad, attn) for attn, grad in reversed(pairs))
        return cap.to_grid(class_row_product(fused, like=cap.attn[0], residual=True))

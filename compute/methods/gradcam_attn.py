"""Grad-CAM on the last attention map — the Grad-CAM baseline for ViT of Chefer, Gur & Wolf ("Transformer
Interpretability Beyond Attention Visualization", CVPR 2021).

With A = the last block's post-softmax attention ``[heads, N, N]`` and ∇A = ∂y/∂A, each head is weighted by the
mean of its class-token gradient over the patch columns, the weighted class-token rows are averaged over the
heads, and the result is rectified::

    w_h = mean_j ∇A_h[cls, j]                         j over patch tokens
    map = ReLU( mean_h  w_h · A_h[cls, patches] )

The map is returned unnormalised (the reference min-max normalises it for display). Grad-CAM on the last block's
tokens is ``gradcam``.
"""

from compute.layers.attention import gradcam_row
from compute.methods.base import Method, register


@register
class GradCAMAttention(Method):
    name = "gradcam_attn"
    requires = frozenset({"attn", "attn_grad"})
    summary = "Grad-CAM on the last attention map: ReLU(head mean of mean-gradient-weighted CLS attention rows)"
    class_specific = True

    def __call__(self, cap):
        gh, gw = cap.grid
        return gradcam_row(cap.attn[-1], cap.attn_grad[-1], cap.num_prefix_tokens).reshape(-1, gh, gw)

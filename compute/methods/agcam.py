"""Attention-Guided CAM (Leem & Seo, "Attention Guided CAM: Visual Explanations of Vision Transformer
Guided by Self-Attention", AAAI 2024).

For every block l and head h, the class token's row of the pre-softmax scores S (sigmoid-normalised, the
"feature map") is weighted by the positive part of the target's gradient w.r.t. the post-softmax attention A,
then summed over heads and layers::

    map = Σ_l Σ_h ReLU(∂y/∂A^(l)_h[cls, :]) ⊙ sigmoid(S^(l)_h[cls, :])      (patch columns)

As in the authors' code, each attention block's input is detached for the backward pass, so the gradient
reaches every attention map through the residual stream only (capture key ``attn_grad_residual``).
"""

import torch

from compute.methods.base import Method, register


@register
class AGCAM(Method):
    name = "agcam"
    requires = frozenset({"scores", "attn_grad_residual"})
    summary = "Attention-Guided CAM: sum over layers and heads of ReLU(dy/dA) * sigmoid(scores), CLS row"
    class_specific = True

    def __call__(self, cap):
        total = None
        for scores, grad in zip(cap.scores, cap.attn_grad_residual):
            term = (torch.relu(grad[:, :, 0, :]) * torch.sigmoid(scores[:, :, 0, :])).sum(dim=1)
            total = term if total is None else total + term
        return cap.to_grid(total)

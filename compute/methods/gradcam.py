"""Grad-CAM for ViT (Selvaraju et al., ICCV 2017, applied to transformer tokens).

The variant of pytorch-grad-cam's ViT recipe: the activations are the last block's ``norm1`` output (the
tokens entering its attention), reshaped to the patch grid as ``C`` channel maps; channel weights are the
spatial mean of the target's gradient w.r.t. those activations::

    w_c = mean_p ∂y/∂T[p, c]          T = norm1 output of the last block, p over patch tokens
    map = ReLU( Σ_c w_c · T[p, c] )

Chefer et al.'s attention-map variant (gradient-weighted heads of the last attention map) is ``gradcam_attn``.
"""

import torch

from compute.methods.base import Method, register


@register
class GradCAM(Method):
    name = "gradcam"
    requires = frozenset({"tokens", "tokens_grad"})
    summary = "Grad-CAM on the last block's norm1 tokens: ReLU(sum_c mean-gradient_c * activation_c)"
    class_specific = True

    def __call__(self, cap):
        p = cap.num_prefix_tokens
        acts = cap.tokens[-1][:, p:, :]
        weights = cap.tokens_grad[-1][:, p:, :].mean(dim=1, keepdim=True)
        cam = torch.relu((acts * weights).sum(dim=-1))
        gh, gw = cap.grid
        return cam.reshape(-1, gh, gw)

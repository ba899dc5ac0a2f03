"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising
Image Classification Models and Saliency Maps", ICLR 2014 workshop).

The magnitude of the target's gradient with respect to the input pixels, maximised over the colour channels::

    map[i, j] = max_c | ∂y / ∂x[c, i, j] |

The map is at pixel resolution (``[B, H, W]``); it is not pooled to the patch grid.
"""

from compute.methods.base import Method, register


@register
class Saliency(Method):
    name = "saliency"
    requires = frozenset({"input_grad"})
    summary = "vanilla gradient: |dy/dx| max over colour channels, at pixel resolution"
    class_specific = True
    resolution = "pixel"

    def __call__(self, cap):
        return cap.input_grad.abs().amax(dim=1)

"""Raw attention: the class token's attention row in the last block, averaged over heads.

    map = mean_h A^(L)_h[cls, patches]

The simplest attention map (Dosovitskiy et al., ICLR 2021, Fig. 6 visualises attention this way;
Caron et al., ICCV 2021 use the last-layer CLS attention of DINO).
"""

from compute.layers.attention import fuse_heads
from compute.methods.base import Method, register


@register
class RawAttention(Method):
    name = "raw_attention"
    requires = frozenset({"attn"})
    summary = "last block's class-token attention row, head mean (class-agnostic)"

    def __call__(self, cap):
        return cap.to_grid(fuse_heads(cap.attn[-1], "mean")[:, 0, :])

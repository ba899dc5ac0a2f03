"""Self-attention weighted map, SAW (Mallick et al., ICIP 2022).

The map is a weighted sum over the blocks of class-specific class-token attention rows::

    A_SAW^(c) = Σ_l α^(l) A_c^(l),      then min-max normalised per image (a constant map becomes all zeros)

where A_c^(l) is block l's attention from the class token to the patches with its heads weighted for class c
by the gradient ∇A^(l) = ∂y_c/∂A^(l). The paper gives this formula without code, so the weighting is a choice,
exposed as options:

``head_weights`` — how heads are weighted within a block:
  - ``grad_mean`` (default): one scalar per head, the mean of its class-token gradient over the patch columns,
    and a ReLU on the head-averaged weighted row (Grad-CAM's neuron-importance weights)::

        w_h = mean_j ∇A_h[cls, j],     A_c^(l) = ReLU( mean_h w_h · A_h[cls, patches] )

  - ``grad_relu``: element-wise positive gradient times attention, averaged over heads (the weighting of
    Chefer et al. 2021)::

        A_c^(l) = mean_h ReLU(∇A_h[cls, patches]) ⊙ A_h[cls, patches]

``layer_weights`` — α^(l) for blocks l = 1 … L:
  - ``uniform`` (default): α^(l) = 1/L;
  - ``linear``: α^(l) = l / Σ_k k, deeper blocks (whose class-token rows are closer to the decision) count more;
  - ``last``: only the last block (α^(L) = 1).

Why the defaults: the paper speaks of *heads* weighted by their class gradient, i.e. one importance per head,
which is the Grad-CAM construction (``grad_mean``); the per-block ReLU keeps each A_c^(l) a non-negative class
map, so blocks whose weighted attention is negative cannot cancel evidence from other blocks. With no stated
prior on blocks, ``uniform`` weights them equally (the 1/L only fixes the scale, which the final min-max removes
anyway). With ``layer_weights=last`` and the default heads, SAW is ``gradcam_attn`` min-max normalised.

A caveat of ``grad_mean``: a block whose head-weighted row is negative everywhere contributes nothing, and this
happens (the mean of a class-token gradient row includes a component along the all-ones direction, which the
softmax makes irrelevant to the output, yet which sets the weight's sign). ``grad_relu`` never drops a block
wholesale, at the price of weighting each attention entry rather than each head.
"""

from compute.layers.attention import gradcam_row, positive_head_mean
from compute.layers.maps import minmax
from compute.methods.base import Method, Option, register

HEAD_WEIGHTS = ("grad_mean", "grad_relu")
LAYER_WEIGHTS = ("uniform", "linear", "last")


def layer_weights(how: str, depth: int) -> list[float]:
    """α^(l) for blocks l = 1 … L."""
    if how == "uniform":
        return [1.0 / depth] * depth
    if how == "linear":
        total = depth * (depth + 1) / 2
        return [(l + 1) / total for l in range(depth)]
    if how == "last":
        return [0.0] * (depth - 1) + [1.0]
    raise ValueError(f"layer weights must be one of {LAYER_WEIGHTS}, not {how!r}")


@register
class SAW(Method):
    name = "saw"
    requires = frozenset({"attn", "attn_grad"})
    summary = "self-attention weighted: sum over blocks of gradient-weighted CLS attention rows, min-max normalised"
    class_specific = True
    option_specs = (Option("head_weights", str, "grad_mean", choices=HEAD_WEIGHTS),
                    Option("layer_weights", str, "uniform", choices=LAYER_WEIGHTS))

    def block_map(self, attn, grad, prefix: int):
        """One block's ``[B, heads, N, N]`` attention and gradient -> ``[B, P]`` A_c^(l) over the patches."""
        if self.options["head_weights"] == "grad_mean":
            return gradcam_row(attn, grad, prefix)
        return positive_head_mean(grad[:, :, 0, prefix:], attn[:, :, 0, prefix:])  # attention >= 0: ReLU(∇A) ⊙ A

    def __call__(self, cap):
        alphas = layer_weights(self.options["layer_weights"], len(cap.attn))
        total = None
        for alpha, attn, grad in zip(alphas, cap.attn, cap.attn_grad):
            if alpha == 0.0:
                continue
            term = alpha * self.block_map(attn, grad, cap.num_prefix_tokens)
            total = term if total is None else total + term
        gh, gw = cap.grid
        return minmax(total).reshape(-1, gh, gw)

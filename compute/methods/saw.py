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

import torch

from compute.methods.base import Method, MethodError, register

HEAD_WEIGHTS = ("grad_mean", "grad_relu")
LAYER_WEIGHTS = ("uniform", "linear", "last")


def layer_weights(how: str, depth: int) -> list[float]:
    if how == "uniform":
        return [1.0 / depth] * depth
    if how == "linear":
        total = depth * (depth + 1) / 2
        return [(l + 1) / total for l in range(depth)]
    if how == "last":
        return [0.0] * (depth - 1) + [1.0]
    raise MethodError(f"saw layer_weights must be one of {LAYER_WEIGHTS}, not {how!r}")


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of ``[B, ...]`` maps to [0, 1]; a constant map gives zeros."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.reshape(maps.shape)


@register
class SAW(Method):
    name = "saw"
    requires = frozenset({"attn", "attn_grad"})
    summary = "self-attention weighted: sum over blocks of gradient-weighted CLS attention rows, min-max normalised"
    class_specific = True
    defaults = {"head_weights": "grad_mean", "layer_weights": "uniform"}

    def __init__(self, **options):
        super().__init__(**options)
        if self.options["head_weights"] not in HEAD_WEIGHTS:
            raise MethodError(f"saw head_weights must be one of {HEAD_WEIGHTS}, "
                              f"not {self.options['head_weights']!r}")
        if self.options["layer_weights"] not in LAYER_WEIGHTS:
            raise MethodError(f"saw layer_weights must be one of {LAYER_WEIGHTS}, "
                              f"not {self.options['layer_weights']!r}")

    def block_map(self, attn: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``[B, heads, P]`` class-token attention and gradient over the patches -> ``[B, P]`` A_c^(l)."""
        if self.options["head_weights"] == "grad_mean":
            weights = grad.mean(dim=-1, keepdim=True)
            return torch.relu((weights * attn).mean(dim=1))
        return (torch.relu(grad) * attn).mean(dim=1)

    def __call__(self, cap):
        p = cap.num_prefix_tokens
        alphas = layer_weights(self.options["layer_weights"], len(cap.attn))
        total = None
        for alpha, attn, grad in zip(alphas, cap.attn, cap.attn_grad):
            if alpha == 0.0:
                continue
            term = alpha * self.block_map(attn[:, :, 0, p:], grad[:, :, 0, p:])
            total = term if total is None else total + term
        gh, gw = cap.grid
        return minmax(total).reshape(-1, gh, gw)

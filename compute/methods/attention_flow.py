"""Attention flow (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

The attention graph has one node per token and layer, layers 0..L (layer 0 = the input tokens, layer l = the
output of block l). Block l contributes the arcs from token i of layer l-1 to token j of layer l with capacity
``Â_l[j, i]``, where ``Â_l`` is the head-fused attention mixed with the identity for the residual connection
and row-normalised: ``Â_l = rownorm((1 - w)·fuse(A_l) + w·I)`` (``w = residual``, 0.5 by default, which is
the paper's ``0.5·A + 0.5·I`` and the same matrix attention rollout multiplies). The map value of patch p is
the value of a maximum flow from node (layer 0, token p) to node (layer L, class token).

Every value is exact (see :mod:`compute.layers.maxflow`: each is either proved equal to the capacity of a cut
by an integer certificate, or bracketed between a feasible flow and a cut to 1e-12 relative). At the ViT-B/16
shape (12 blocks, 197 tokens: 196 maximum flows over ~390k arcs per image) that costs about 0.4-0.5 s of one
core per image for mean or max head fusion (networkx: ~6 s per patch, ~20 min per image); min fusion, whose
minimum cuts lie inside the network, ~15 s. ``workers`` processes share the images (or one image's patches).

Options: ``head_fusion`` in {mean, max, min}; ``residual`` in [0, 1]; ``workers`` (0 = automatic: every
available core, at most 32, when the batch is big enough to pay for the processes, else 1). ``workers`` never
changes the numbers, so it is not part of the method's stored name. The processes start by "forkserver", so a
script that runs the method with several workers needs the usual ``if __name__ == "__main__":`` guard. The
batch job runs the max-flows in the background (:meth:`deferred`) while the GPU explains the next batches.
"""

from __future__ import annotations

import numpy as np
import torch

from compute.layers.flow_pool import available_cores, batched_layered_max_flows
from compute.layers.attention import FUSIONS, fuse_heads
from compute.methods.base import Method, MethodError, Option, register

# Below this much work (sources x arcs) a process pool costs more than it saves.
_PARALLEL_WORK = 2e7


def flow_capacities(attn: list[torch.Tensor], head_fusion: str = "mean", residual: float = 0.5) -> np.ndarray:
    """Per-block ``[B, heads, N, N]`` attention -> ``[B, L, N, N]`` float64 capacities ``Â_l[j, i]``.

    Heads are fused in float64 on the attention's own device (a GPU does it in a moment; moving every head
    to the CPU first would copy ``heads`` times more), and only the fused matrices are copied to the CPU."""
    mats = []
    for a in attn:
        fused = fuse_heads(a.detach().to(torch.float64), head_fusion)
        n = fused.shape[-1]
        m = (1.0 - residual) * fused + residual * torch.eye(n, dtype=torch.float64, device=fused.device)
        rows = m.sum(dim=-1, keepdim=True)
        mats.append(torch.where(rows > 0, m / torch.where(rows > 0, rows, torch.ones_like(rows)), m).cpu())
    return torch.stack(mats, dim=1).numpy()


@register
class AttentionFlow(Method):
    name = "attention_flow"
    requires = frozenset({"attn"})
    summary = ("attention flow: maximum flow from each patch (input layer) to the class token (last layer) "
               "through the residual-mixed, head-fused attention graph")
    option_specs = (Option("head_fusion", str, "mean", choices=FUSIONS),
                    Option("residual", float, 0.5, low=0.0, high=1.0),
                    Option("workers", int, 0, low=0, execution=True, note="0 = automatic"))

    def _workers(self, batch: int, sources: int, layers: int, tokens: int) -> int:
        if self.options["workers"]:
            return int(self.options["workers"])
        if batch * sources * layers * tokens * tokens < _PARALLEL_WORK:
            return 1
        return min(available_cores(), 32)

    def deferred(self, cap):
        """Capacities now (on the capture's device), the maximum flows later, always in worker processes: the
        batch job finishes them on a background thread, where solving in this process would hold the
        interpreter lock against the main thread's work."""
        return self._solver(cap, in_process=False)

    def _solver(self, cap, in_process: bool | None):
        if not cap.attn:
            raise MethodError("attention_flow needs the attention of at least one block")
        caps = flow_capacities(cap.attn, self.options["head_fusion"], self.options["residual"])
        prefix, (gh, gw), dtype = cap.num_prefix_tokens, cap.grid, cap.attn[0].dtype
        B, L, N, _ = caps.shape
        if N != prefix + gh * gw:
            raise MethodError(f"{N} tokens do not make {prefix} prefix tokens and a {gh}x{gw} patch grid")

        def solve() -> torch.Tensor:
            sources = np.arange(prefix, N)
            values = batched_layered_max_flows(caps, sources, sink=0, workers=self._workers(B, sources.size, L, N),
                                               in_process=in_process)
            return torch.from_numpy(values).to(dtype).reshape(B, gh, gw)

        return solve

    def __call__(self, cap):
        return self._solver(cap, in_process=None)().to(cap.attn[0].device)

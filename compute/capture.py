"""The one place where the model is instrumented.

:func:`capture` runs one forward pass over a whole batch with every ViT block replaced (for the duration of the
call only) by an instrumented twin that computes attention explicitly — i.e. timm's fused attention is off while
capturing and only then — and records what the requested methods need. It then runs the fewest backward passes
that provide the requested gradients, all from that single forward graph:

- one backward for the true gradients (attention, pre-softmax scores, block tokens, input pixels);
- one more, on the same graph, for ``attn_grad_residual``: gradients of the attention maps with every attention
  block's input cut off from the graph, so that they reach each map through the residual stream (and MLPs) only.
  This is what Attention-Guided CAM's reference implementation does (``x = x.detach()`` at the top of its
  attention module); here a gate that zeroes the gradient at that point in the second backward gives the same
  numbers without a second forward.

The explained quantity is one scalar per image (a class logit by default, see :mod:`compute.targets`); the
backward differentiates the batch sum, which gives each image its own gradient because images never interact
in a ViT (LayerNorm works per token, attention within an image).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

# What a method may ask for. Each key is one kind of tensor; see Captured for shapes.
REQUIREMENTS: dict[str, str] = {
    "attn": "post-softmax attention of every block",
    "scores": "pre-softmax attention scores (q·k/sqrt(d)) of every block",
    "attn_grad": "gradient of the target w.r.t. each block's post-softmax attention",
    "scores_grad": "gradient of the target w.r.t. each block's pre-softmax scores",
    "attn_grad_residual": "attention gradient with each attention block's input detached (AGCAM)",
    "tokens": "each block's norm1 output (the attention input tokens)",
    "tokens_grad": "gradient of the target w.r.t. each block's norm1 output",
    "input_grad": "gradient of the target w.r.t. the input pixels",
    "internals": "per-block activations for relevance propagation (LRP), and the target's gradient w.r.t. the outputs",
}
GRADIENT_KEYS = frozenset({"attn_grad", "scores_grad", "attn_grad_residual", "tokens_grad", "input_grad"})
_RECORDED = {"attn_grad": "attn", "scores_grad": "scores", "tokens_grad": "tokens", "attn_grad_residual": "attn"}


@dataclass
class Captured:
    """Everything one capture recorded for a batch. Lists are indexed by block, tensors are detached.

    Shapes: ``attn``/``scores`` and their gradients ``[B, heads, N, N]``; ``tokens`` ``[B, N, C]``;
    ``input``/``input_grad`` ``[B, 3, H, W]``; ``outputs`` ``[B, K]`` (logits, or pooled features for a
    headless model); ``target_value`` ``[B]``; ``target_class`` ``[B]`` (-1 where the target is not a class).
    N = num_prefix_tokens + gh * gw; token 0 is the class token. With ``internals``, ``output_grad`` ``[B, K]``
    is the gradient of the explained value w.r.t. the outputs: the one-hot vector of the class for a logit
    target, the softmax over the member classes for a log-sum-exp target (where relevance propagation starts).
    """

    input: Tensor
    outputs: Tensor
    target_value: Tensor
    target_class: Tensor
    num_prefix_tokens: int
    grid: tuple[int, int]
    num_heads: int
    attn: list[Tensor] | None = None
    scores: list[Tensor] | None = None
    attn_grad: list[Tensor] | None = None
    scores_grad: list[Tensor] | None = None
    attn_grad_residual: list[Tensor] | None = None
    tokens: list[Tensor] | None = None
    tokens_grad: list[Tensor] | None = None
    input_grad: Tensor | None = None
    internals: list[dict[str, Tensor]] | None = None
    final_tokens: Tensor | None = None  # output of the last block, before the final norm
    output_grad: Tensor | None = None  # d target_value / d outputs, with internals
    model: torch.nn.Module | None = field(default=None, repr=False)  # weights, for relevance propagation

    @property
    def batch_size(self) -> int:
        return int(self.input.shape[0])

    def to_grid(self, token_values: Tensor) -> Tensor:
        """``[B, N]`` values per token -> ``[B, gh, gw]`` patch map (prefix tokens dropped)."""
        gh, gw = self.grid
        if token_values.shape[-1] != self.num_prefix_tokens + gh * gw:
            raise ValueError(f"{token_values.shape[-1]} tokens do not make {self.num_prefix_tokens} prefix tokens "
                             f"and a {gh}x{gw} patch grid (input of another size than the model's?)")
        return token_values[:, self.num_prefix_tokens:].reshape(-1, gh, gw)


def _kept(t: Tensor) -> Tensor:
    """Detached, and in float32 when computed in half precision (under autocast), so methods never do
    arithmetic in bfloat16."""
    t = t.detach()
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _Gate:
    """Whether the residual gate lets gradients through. Holds nothing else: the autograd graph keeps it (in
    the gate nodes' context), so a reference from it to the recorded tensors would close a cycle through the
    C++ graph that Python's garbage collector cannot see — the whole graph of every capture would leak."""

    __slots__ = ("open",)

    def __init__(self) -> None:
        self.open = True


class _Recorder:
    def __init__(self, keep: set[str], residual_gate: bool):
        self.keep = keep
        self.residual_gate = residual_gate
        self.gate = _Gate()
        self.store: dict[str, list[Tensor]] = {k: [] for k in ("attn", "scores", "tokens")}
        self.internals: list[dict[str, Tensor]] = []


class _ResidualGate(torch.autograd.Function):
    """Identity forward; backward passes the gradient only while the gate is open."""

    @staticmethod
    def forward(ctx, x: Tensor, gate: _Gate) -> Tensor:  # type: ignore[override]
        ctx.gate = gate
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return (grad if ctx.gate.open else torch.zeros_like(grad)), None


def _instrumented_block_forward(block: torch.nn.Module, rec: _Recorder) -> Callable[..., Tensor]:
    attn_mod, mlp = block.attn, block.mlp
    want_internals = "internals" in rec.keep
    # timm before 1.0.22 has neither Attention.attn_dim nor its optional inner norm (`scale_norm`)
    attn_dim = getattr(attn_mod, "attn_dim", attn_mod.num_heads * attn_mod.head_dim)
    attn_norm = getattr(attn_mod, "norm", torch.nn.Identity())

    def forward(x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise NotImplementedError("vitlens capture does not support attention masks")
        B, N, C = x.shape
        h = block.norm1(x)
        if "tokens" in rec.keep:
            rec.store["tokens"].append(h)
        h_in = _ResidualGate.apply(h, rec.gate) if rec.residual_gate else h
        qkv = attn_mod.qkv(h_in).reshape(B, N, 3, attn_mod.num_heads, attn_mod.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
        q = q * attn_mod.scale
        scores = q @ k.transpose(-2, -1)
        attn = scores.softmax(dim=-1)
        if "scores" in rec.keep:
            rec.store["scores"].append(scores)
        if "attn" in rec.keep:
            rec.store["attn"].append(attn)
        ctx = (attn_mod.attn_drop(attn) @ v).transpose(1, 2).reshape(B, N, attn_dim)
        ctx_n = attn_norm(ctx)
        attn_out = attn_mod.proj_drop(attn_mod.proj(ctx_n))
        x_mid = x + block.drop_path1(block.ls1(attn_out))
        h2 = block.norm2(x_mid)
        if want_internals:
            fc1_out = mlp.fc1(h2)
            fc2_in = mlp.norm(mlp.drop1(mlp.act(fc1_out)))
            mlp_out = mlp.drop2(mlp.fc2(fc2_in))
            rec.internals.append({
                "x_in": _kept(x), "h1": _kept(h), "q": _kept(q), "k": _kept(k), "v": _kept(v),
                "attn": _kept(attn), "ctx": _kept(ctx), "ctx_n": _kept(ctx_n), "attn_out": _kept(attn_out),
                "x_mid": _kept(x_mid), "h2": _kept(h2), "fc1_out": _kept(fc1_out),
                "fc2_in": _kept(fc2_in), "mlp_out": _kept(mlp_out),
            })
            x_out = x_mid + block.drop_path2(block.ls2(mlp_out))
            rec.internals[-1]["x_out"] = _kept(x_out)
            return x_out
        return x_mid + block.drop_path2(block.ls2(mlp(h2)))

    return forward


@contextmanager
def instrumented(model: torch.nn.Module, rec: _Recorder):
    """Swap every block's forward for its instrumented twin; restore on exit, also after an error."""
    blocks = list(model.blocks)
    try:
        for block in blocks:
            block.forward = _instrumented_block_forward(block, rec)
        yield
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


# Target: outputs [B, K] -> (value [B] to explain, class index [B] or -1); see compute.targets
TargetFn = Callable[[Tensor], tuple[Tensor, Tensor]]


def capture(model: torch.nn.Module, x: Tensor, requires: set[str] | frozenset[str],
            target: TargetFn | None = None) -> Captured:
    """One forward over the batch ``x`` (and the backward passes ``requires`` implies); see the module doc.
    ``target`` defaults to the top-1 logit (:func:`compute.targets.parse_target`)."""
    if target is None:
        from compute.targets import parse_target

        target = parse_target("top1", headless=False)
    unknown = set(requires) - set(REQUIREMENTS)
    if unknown:
        raise ValueError(f"unknown capture requirement(s) {sorted(unknown)}; known: {sorted(REQUIREMENTS)}")
    grads = set(requires) & GRADIENT_KEYS
    keep = {k for k in requires if k in ("attn", "scores", "tokens", "internals")}
    keep |= {_RECORDED[g] for g in grads if g in _RECORDED}
    rec = _Recorder(keep, residual_gate="attn_grad_residual" in grads)

    # The graph must start somewhere: the input is the only leaf (weights stay frozen). autograd.grad then
    # differentiates only along the paths to the tensors asked for.
    x = x.detach().requires_grad_(bool(grads))
    with torch.set_grad_enabled(bool(grads)), instrumented(model, rec):
        outputs = model(x)
        value, classes = target(outputs)

    cap = Captured(input=x.detach(), outputs=outputs.detach().float(), target_value=value.detach().float(),
                   target_class=classes.detach().long(), num_prefix_tokens=int(model.num_prefix_tokens),
                   grid=tuple(int(g) for g in model.patch_embed.grid_size), num_heads=int(model.blocks[0].attn.num_heads),
                   model=model)
    true_grads = sorted(grads - {"attn_grad_residual"})
    if true_grads:
        wrt: list[Tensor] = []
        spans: dict[str, slice] = {}
        for g in true_grads:
            src = [x] if g == "input_grad" else rec.store[_RECORDED[g]]
            spans[g] = slice(len(wrt), len(wrt) + len(src))
            wrt += src
        rec.gate.open = True
        got = torch.autograd.grad(value.sum(), wrt, retain_graph="attn_grad_residual" in grads)
        for g in true_grads:
            part = [_kept(t) for t in got[spans[g]]]
            if g == "input_grad":
                cap.input_grad = part[0]
            else:
                setattr(cap, g, part)
    if "attn_grad_residual" in grads:
        rec.gate.open = False
        got = torch.autograd.grad(value.sum(), rec.store["attn"])
        cap.attn_grad_residual = [_kept(t) for t in got]
        rec.gate.open = True
    for key in ("attn", "scores", "tokens"):
        if key in requires:
            setattr(cap, key, [_kept(t) for t in rec.store[key]])
    if "internals" in keep:
        cap.internals = rec.internals
        cap.final_tokens = rec.internals[-1]["x_out"]
        cap.output_grad = _output_grad(target, outputs)
    return cap


def _output_grad(target: TargetFn, outputs: Tensor) -> Tensor:
    """``d target(outputs) / d outputs`` ``[B, K]``, on a detached copy (the model is not run again)."""
    with torch.enable_grad():
        out = outputs.detach().requires_grad_(True)
        value, _ = target(out)
        (grad,) = torch.autograd.grad(value.sum(), out, allow_unused=True)
    return torch.zeros_like(out) if grad is None else _kept(grad)


__all__ = ["REQUIREMENTS", "GRADIENT_KEYS", "Captured", "capture", "instrumented", "TargetFn"]

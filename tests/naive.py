"""An independent, one-image, loop-by-loop transcription of the ViT forward pass for the formula tests.

It shares no code with compute.capture: it reads the timm weights directly and writes every product out per
head, so that a method test compares the package's batched implementation against the paper's formula
evaluated on quantities computed a second, simpler way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, mod):
    return F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def naive_forward(model, image: torch.Tensor, detach_attn_input: bool = False) -> dict:
    """Forward ONE image ``[3, H, W]``; returns logits and per-block tensors that stay in the autograd graph.

    Keys: ``logits`` [K]; ``attn``/``scores`` lists of [heads, N, N]; ``norm1`` list of [N, C];
    ``input`` the leaf image tensor (requires grad). With ``detach_attn_input`` the attention's input tokens are
    detached in every block (Attention-Guided CAM's gradient path).
    """
    x_img = image.detach().clone().requires_grad_(True)
    pe = model.patch_embed.proj
    tokens = F.conv2d(x_img[None], pe.weight, pe.bias, stride=pe.stride)[0]  # [C, gh, gw]
    tokens = tokens.flatten(1).T  # [P, C]
    prefix = [model.cls_token[0]]
    if getattr(model, "dist_token", None) is not None:
        prefix.append(model.dist_token[0])
    if getattr(model, "reg_token", None) is not None:
        prefix.append(model.reg_token[0])
    if getattr(model, "no_embed_class", False):
        tokens = tokens + model.pos_embed[0]
        x = torch.cat(prefix + [tokens], dim=0)
    else:
        x = torch.cat(prefix + [tokens], dim=0) + model.pos_embed[0]
    out = {"input": x_img, "attn": [], "scores": [], "norm1": []}
    for blk in model.blocks:
        at = blk.attn
        h = _ln(x, blk.norm1)
        out["norm1"].append(h)
        h_in = h.detach() if detach_attn_input else h
        n, c = h_in.shape
        heads, d = at.num_heads, at.head_dim
        qkv = h_in @ at.qkv.weight.T + (at.qkv.bias if at.qkv.bias is not None else 0)
        q_all, k_all, v_all = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        s_list, v_list = [], []
        for hd in range(heads):
            q = q_all[:, hd * d:(hd + 1) * d]
            k = k_all[:, hd * d:(hd + 1) * d]
            v_list.append(v_all[:, hd * d:(hd + 1) * d])
            s_list.append((q @ k.T) / math.sqrt(d))
        scores = torch.stack(s_list)  # [heads, N, N]
        attn = torch.softmax(scores, dim=-1)
        if detach_attn_input:  # a constant of the input now; make it a leaf so dy/dA can still be taken
            attn = attn.detach().requires_grad_(True)
        out["scores"].append(scores)
        out["attn"].append(attn)
        ctx_heads = [attn[hd] @ v_list[hd] for hd in range(heads)]
        ctx = torch.cat(ctx_heads, dim=1)
        attn_out = ctx @ at.proj.weight.T + at.proj.bias
        gamma1 = blk.ls1.gamma if hasattr(blk.ls1, "gamma") else 1.0
        x = x + gamma1 * attn_out
        h2 = _ln(x, blk.norm2)
        hidden = F.gelu(h2 @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias)
        mlp_out = hidden @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
        gamma2 = blk.ls2.gamma if hasattr(blk.ls2, "gamma") else 1.0
        x = x + gamma2 * mlp_out
    x = _ln(x, model.norm)
    out["tokens_final"] = x
    pooled = x[0]
    if isinstance(model.fc_norm, torch.nn.LayerNorm):
        pooled = _ln(pooled, model.fc_norm)
    out["logits"] = pooled @ model.head.weight.T + model.head.bias if model.num_classes else pooled
    return out


def grads(scalar: torch.Tensor, tensors) -> list[torch.Tensor]:
    return list(torch.autograd.grad(scalar, list(tensors), retain_graph=True))


def grid(values_per_patch: torch.Tensor, model) -> torch.Tensor:
    gh, gw = model.patch_embed.grid_size
    return values_per_patch.reshape(gh, gw)

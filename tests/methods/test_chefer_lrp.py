"""chefer_lrp against a per-image, loop-by-loop transcription of the relevance rules.

The transcription below recomputes the forward pass of ONE image (per head, explicit products), takes the
attention gradients with autograd on that forward, and then writes every relevance rule out from its formula:
a linear layer is a loop over tokens and output neurons with the contributions ``z_ij`` materialised, a matmul is
a loop over heads and rows with every product ``a_nm b_me`` materialised, a skip split uses the image's own sums.
It imports nothing from the implementation.

Tolerances: on a random tiny model the maps are ~1e-5 in absolute value, so the 1e-5 bound is applied relative to
the expected map's spread (max - min), and the attention relevances are compared relative to their largest
entry; float64 throughout.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from compute.capture import capture
from compute.methods import MethodError, get_method
from compute.layers.vit_relevance import block_relevance_sums, propagate
from compute.targets import per_image_classes, voc_logsumexp
from tests.conftest import make_vit
from tests.methods.helpers import assert_batch_invariant

REL = 1e-5


# ----------------------------------------------------------------------------------------------- naive forward
def _norm(x, mod):
    if isinstance(mod, torch.nn.Identity):
        return x
    return F.layer_norm(x, (x.shape[-1],), mod.weight, mod.bias, mod.eps)


def _gamma(mod, dim, dtype):
    return mod.gamma if hasattr(mod, "gamma") else torch.ones(dim, dtype=dtype)


def naive_forward(model, image):
    """One image: logits, the per-block activations (detached) and the attention maps (in the graph)."""
    for blk in model.blocks:  # the transcription covers the plain timm block only
        for mod in (blk.attn.q_norm, blk.attn.k_norm, blk.attn.norm, blk.mlp.norm):
            assert isinstance(mod, torch.nn.Identity)
    image = image.detach().clone().requires_grad_(True)  # the graph's leaf, so that dy/dA can be taken
    pe = model.patch_embed.proj
    x = F.conv2d(image[None], pe.weight, pe.bias, stride=pe.stride)[0].flatten(1).T  # [P, C]
    prefix = [model.cls_token[0]] + ([model.reg_token[0]] if getattr(model, "reg_token", None) is not None else [])
    assert not getattr(model, "no_embed_class", False)
    x = torch.cat(prefix + [x], dim=0) + model.pos_embed[0]
    n, c = x.shape
    blocks, attn_maps = [], []
    for blk in model.blocks:
        at, mlp = blk.attn, blk.mlp
        heads, d = at.num_heads, at.head_dim
        rec = {"x_in": x}
        h1 = _norm(x, blk.norm1)
        qkv = h1 @ at.qkv.weight.T + at.qkv.bias
        q = torch.stack([qkv[:, hd * d:(hd + 1) * d] for hd in range(heads)])  # unscaled
        k = torch.stack([qkv[:, c + hd * d:c + (hd + 1) * d] for hd in range(heads)])
        v = torch.stack([qkv[:, 2 * c + hd * d:2 * c + (hd + 1) * d] for hd in range(heads)])
        attn = torch.stack([torch.softmax(q[hd] @ k[hd].T / math.sqrt(d), dim=-1) for hd in range(heads)])
        attn_maps.append(attn)
        ctx = torch.cat([attn[hd] @ v[hd] for hd in range(heads)], dim=1)
        attn_out = ctx @ at.proj.weight.T + at.proj.bias
        attn_branch = _gamma(blk.ls1, c, x.dtype) * attn_out
        x_mid = x + attn_branch
        h2 = _norm(x_mid, blk.norm2)
        hidden = F.gelu(h2 @ mlp.fc1.weight.T + mlp.fc1.bias)
        mlp_branch = _gamma(blk.ls2, c, x.dtype) * (hidden @ mlp.fc2.weight.T + mlp.fc2.bias)
        x = x_mid + mlp_branch
        rec.update(h1=h1, q=q, k=k, v=v, attn=attn, ctx=ctx, attn_branch=attn_branch, x_mid=x_mid, h2=h2,
                   hidden=hidden, mlp_branch=mlp_branch)
        blocks.append(rec)
    final = _norm(x, model.norm)
    assert model.global_pool == "token"  # the transcription covers class-token pooling only
    features = _norm(final[0], model.fc_norm)
    logits = features @ model.head.weight.T + model.head.bias
    detached = [{key: t.detach() for key, t in rec.items()} for rec in blocks]
    return {"logits": logits, "attn": attn_maps, "blocks": detached,
            "final": final.detach(), "features": features.detach()}


# ------------------------------------------------------------------------------------------------ naive rules
def _ratio(num, den):
    """num / den, 0 where den == 0 (elementwise)."""
    return torch.where(den == 0, torch.zeros_like(num), num / torch.where(den == 0, torch.ones_like(den), den))


def naive_linear(x, weight, relevance):
    """LRP alpha=1 beta=0, token by token, output neuron by output neuron; biases ignored."""
    tokens, outputs = relevance.shape
    out = torch.zeros_like(x)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    for t in range(tokens):
        xp, xn = x[t].clamp(min=0), x[t].clamp(max=0)
        for j in range(outputs):
            if relevance[t, j] == 0:
                continue
            z = xp * wp[j] + xn * wn[j]  # z_ij for every input i
            den = z.sum()
            if den != 0:
                out[t] += z / den * relevance[t, j]
    return out


def naive_av(attn, v, relevance):
    """ctx = A V per head; each product A_nm V_me is a contribution to ctx_ne. Returns (R_A, R_V), halved."""
    r_a, r_v = torch.zeros_like(attn), torch.zeros_like(v)
    for hd in range(attn.shape[0]):
        for n in range(attn.shape[1]):
            contrib = attn[hd, n][:, None] * v[hd]  # [m, e]
            share = contrib * _ratio(relevance[hd, n], contrib.sum(dim=0))[None, :]
            r_a[hd, n] = share.sum(dim=1) / 2
            r_v[hd] += share / 2
    return r_a, r_v


def naive_qk(q, k, relevance):
    """S = Q Kᵀ per head; each product q_ne k_me is a contribution to S_nm. Returns (R_Q, R_K), halved."""
    r_q, r_k = torch.zeros_like(q), torch.zeros_like(k)
    for hd in range(q.shape[0]):
        for n in range(q.shape[1]):
            contrib = q[hd, n][None, :] * k[hd]  # [m, e]
            share = contrib * _ratio(relevance[hd, n], contrib.sum(dim=1))[:, None]
            r_q[hd, n] = share.sum(dim=0) / 2
            r_k[hd] += share / 2
    return r_q, r_k


def naive_add(x0, x1, relevance):
    """Gradient×input split of x0 + x1, each branch rescaled to its |sum| share of this image's total."""
    z = x0 + x1
    a, b = x0 * _ratio(relevance, z), x1 * _ratio(relevance, z)
    sa, sb, total = a.sum(), b.sum(), relevance.sum()
    a = a * (sa.abs() / (sa.abs() + sb.abs()) * total / sa)
    b = b * (sb.abs() / (sa.abs() + sb.abs()) * total / sb)
    return a, b


def naive_relevances(model, image, members=None):
    """Per block (first to last): R_A [heads, N, N], dy/dA [heads, N, N], relevance total at the block input.

    ``members=None`` explains the top-1 logit, relevance starting as its one-hot vector. A list of classes
    explains y = log Σ_k exp(logit_k) over them, relevance starting as dy/dlogit_k = exp(logit_k) / Σ_j exp(logit_j)
    on each member k (0 elsewhere)."""
    out = naive_forward(model, image)
    logits = out["logits"]
    r_out = torch.zeros(model.num_classes, dtype=image.dtype)
    if members is None:
        cls = int(logits.argmax())
        y = logits[cls]
        r_out[cls] = 1.0
    else:
        exps = [torch.exp(logits[k]) for k in members]
        y = torch.log(sum(exps))
        for k, e in zip(members, exps):
            r_out[k] = (e / sum(exps)).detach()
    grads = [g.detach() for g in torch.autograd.grad(y, out["attn"])]
    r_features = naive_linear(out["features"][None], model.head.weight, r_out[None])[0]
    final = out["final"]
    relevance = torch.zeros_like(final)
    relevance[0] = r_features
    r_attn, totals = [None] * len(model.blocks), [None] * len(model.blocks)
    for l in reversed(range(len(model.blocks))):
        blk, rec = model.blocks[l], out["blocks"][l]
        r_mid, r_branch = naive_add(rec["x_mid"], rec["mlp_branch"], relevance)
        r_hidden = naive_linear(rec["hidden"], blk.mlp.fc2.weight, r_branch)
        r_mid = r_mid + naive_linear(rec["h2"], blk.mlp.fc1.weight, r_hidden)
        r_in, r_branch = naive_add(rec["x_in"], rec["attn_branch"], r_mid)
        r_ctx = naive_linear(rec["ctx"], blk.attn.proj.weight, r_branch)
        heads, d = blk.attn.num_heads, blk.attn.head_dim
        r_ctx = torch.stack([r_ctx[:, hd * d:(hd + 1) * d] for hd in range(heads)])
        r_a, r_v = naive_av(rec["attn"], rec["v"], r_ctx)
        r_attn[l] = r_a
        r_q, r_k = naive_qk(rec["q"], rec["k"], r_a)
        r_qkv = torch.cat([torch.cat(list(r), dim=1) for r in (r_q, r_k, r_v)], dim=1)  # [N, 3C]
        relevance = r_in + naive_linear(rec["h1"], blk.attn.qkv.weight, r_qkv)
        totals[l] = relevance.sum()
    return r_attn, grads, torch.stack(totals)


def naive_map(model, r_attn, grads, start_layer=0, row_norm=False):
    n = r_attn[0].shape[-1]
    joint = None
    for r_a, g in list(zip(r_attn, grads))[start_layer:]:
        heads = r_a.shape[0]
        a_bar = sum(torch.clamp(r_a[hd] * g[hd], min=0) for hd in range(heads)) / heads
        m = torch.zeros(n, n, dtype=a_bar.dtype)
        for i in range(n):
            row = [a_bar[i, j] + (1.0 if i == j else 0.0) for j in range(n)]
            total = sum(row) if row_norm else 1.0
            for j in range(n):
                m[i, j] = row[j] / total
        joint = m if joint is None else m @ joint
    gh, gw = model.patch_embed.grid_size
    return joint[0, model.num_prefix_tokens:].reshape(gh, gw)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def naive_for(model, images, i, members=None):
    """naive_relevances, computed once per (model, image, members) for the tests that share them."""
    per_model = _CACHE.setdefault(model, {})
    key = (tuple(images[i].shape), float(images[i].sum()), float(images[i].abs().max()),
           None if members is None else tuple(members))
    if key not in per_model:
        per_model[key] = naive_relevances(model, images[i], members)
    return per_model[key]


def _assert_map(actual, expected):
    spread = float(expected.max() - expected.min())
    assert spread > 0
    torch.testing.assert_close(actual, expected, atol=REL * spread, rtol=0)


def _check_against_naive(model, images, spec="chefer_lrp", start_layer=0, row_norm=False, member_sets=None):
    method = get_method(spec)
    target = None if member_sets is None else voc_logsumexp(member_sets, list(range(1, len(member_sets) + 1)))
    cap = capture(model, images, method.requires, target=target)
    maps = method(cap)
    ours_attn = {l: r for l, kind, r in propagate(cap) if kind == "attn"}
    for i in range(images.shape[0]):
        r_attn, grads, _ = naive_for(model, images, i, None if member_sets is None else member_sets[i])
        _assert_map(maps[i], naive_map(model, r_attn, grads, start_layer, row_norm))
        for l, expected in enumerate(r_attn):
            torch.testing.assert_close(ours_attn[l][i], expected, atol=REL * float(expected.abs().max()), rtol=0)
            torch.testing.assert_close(cap.attn_grad[l][i], grads[l], atol=1e-12, rtol=1e-9)


@pytest.fixture(scope="module")
def layerscale_vit():
    model = make_vit(init_values=0.1)
    with torch.no_grad():  # per-channel gammas, so that a gamma applied on the wrong axis cannot pass
        for blk in model.blocks:
            blk.ls1.gamma.add_(0.05 * torch.randn_like(blk.ls1.gamma))
            blk.ls2.gamma.add_(0.05 * torch.randn_like(blk.ls2.gamma))
    return model


@pytest.fixture(scope="module")
def wide_images():
    return torch.randn(4, 3, 32, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- tests
SPECS = [("chefer_lrp", {}), ("chefer_lrp(start_layer=1)", {"start_layer": 1}),
         ("chefer_lrp(row_norm=true)", {"row_norm": True})]


@pytest.mark.parametrize("spec,kwargs", SPECS, ids=[s for s, _ in SPECS])
def test_matches_naive_transcription(spec, kwargs, tiny_vit, images):
    _check_against_naive(tiny_vit, images, spec, **kwargs)


def test_log_sum_exp_target_matches_naive_transcription(tiny_vit, images):
    """A VOC class made of several ImageNet classes (``--explain present``): the relevance starts on every member,
    weighted by its softmax share, and the attention gradients are those of the log-sum-exp; members differ per
    image, one of them a single class."""
    member_sets = [[0, 1], [2], [1, 3, 4], [4, 0]]
    _check_against_naive(tiny_vit, images, member_sets=member_sets)
    cap = capture(tiny_vit, images, get_method("chefer_lrp").requires, target=voc_logsumexp(member_sets, [1, 2, 3, 4]))
    sums = block_relevance_sums(cap)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-10, rtol=0)
    single = capture(tiny_vit, images[1:2], get_method("chefer_lrp").requires, target=per_image_classes([2]))
    torch.testing.assert_close(get_method("chefer_lrp")(cap)[1:2], get_method("chefer_lrp")(single), atol=1e-12, rtol=0)


def test_layerscale_model_matches_naive_transcription(layerscale_vit, images):
    _check_against_naive(layerscale_vit, images)


def test_mean_pooled_model_is_refused(images):
    """vitlens admits class-token pooling only (compute.models.check_architecture), so the rules stop there."""
    model = make_vit(global_pool="avg")
    method = get_method("chefer_lrp")
    with pytest.raises(MethodError, match="class token pooled"):
        method(capture(model, images[:1], method.requires))


def test_register_tokens_and_non_square_grid_match_naive_transcription(wide_images):
    model = make_vit(img_size=(32, 64), reg_tokens=2)
    _check_against_naive(model, wide_images)
    cap = capture(model, wide_images, get_method("chefer_lrp").requires)
    assert get_method("chefer_lrp")(cap).shape == (4, 2, 4)
    sums = block_relevance_sums(cap)
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-10, rtol=0)
    assert_batch_invariant(get_method("chefer_lrp"), model, wide_images)


@pytest.mark.parametrize("model_name", ["tiny_vit", "layerscale_vit"])
def test_relevance_is_conserved_at_every_block_input(model_name, images, request):
    """With alpha=1/beta=0, identity rules, halved gradient×input matmuls and per-image normalised skip splits,
    every rule passes on exactly what it receives: the relevance total at each block input is, per image, the
    total at the head output, 1 (no denominator is exactly 0 on these inputs)."""
    model = request.getfixturevalue(model_name)
    cap = capture(model, images, get_method("chefer_lrp").requires)
    sums = block_relevance_sums(cap)
    assert sums.shape == (images.shape[0], len(model.blocks))
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-10, rtol=0)
    if model_name == "tiny_vit":  # the transcription's totals agree
        for i in range(images.shape[0]):
            torch.testing.assert_close(sums[i], naive_for(model, images, i)[2], atol=1e-10, rtol=0)


def test_start_layer_and_row_norm_change_the_map(tiny_vit, images):
    cap = capture(tiny_vit, images, get_method("chefer_lrp").requires)
    base = get_method("chefer_lrp")(cap)
    for spec in ("chefer_lrp(start_layer=2)", "chefer_lrp(row_norm=true)"):
        assert not torch.allclose(base, get_method(spec)(cap), atol=1e-12, rtol=0)


def test_refusals(tiny_vit, images):
    method = get_method("chefer_lrp")
    with pytest.raises(MethodError, match="start_layer=3"):
        get_method("chefer_lrp(start_layer=3)")(capture(tiny_vit, images[:1], method.requires))
    with pytest.raises(MethodError, match="row_norm"):
        get_method("chefer_lrp(row_norm=2)")
    with pytest.raises(MethodError, match="internals"):
        method(capture(tiny_vit, images[:1], {"attn_grad"}))

    def norm_target(out):
        return out.norm(dim=-1), torch.full((out.shape[0],), -1, dtype=torch.long)

    with pytest.raises(MethodError, match="not a class"):
        method(capture(tiny_vit, images[:1], method.requires, target=norm_target))


def test_distilled_model_is_refused():
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    model = VisionTransformerDistilled(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2,
                                       num_classes=5).eval().requires_grad_(False).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    method = get_method("chefer_lrp")
    with pytest.raises(MethodError, match="distilled"):
        method(capture(model, x, method.requires, target=per_image_classes([0, 1])))

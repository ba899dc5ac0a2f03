"""Every registered method on ViT families other than the plain 224-px ViT: a distilled DeiT (two prefix tokens,
output = mean of two heads), a DINOv2 with four register tokens (headless), and a ViT at a non-default input size.
Sizes are kept small (a few dozen patches) so that float64 gradients stay quick on a CPU; the native sizes are
checked without gradients.

Random weights (timm's init, with biases, norms and layer scales perturbed so that no term is negligible), float64.
For each model and each method: the map has the model's own patch grid (or the input size for pixel maps), is
finite and not constant (a rectified map may be all zero for an image on random weights, but not for every
image), and does not depend on the other images of the batch. The methods are taken from the
registry, so a method added later is covered without editing this file. A method may decline a model only where
:data:`REFUSALS` says so, with a :class:`MethodError`; any other refusal fails, and so does a listed refusal that
no longer happens (the table is then out of date, or the method lost its guard).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from PIL import Image

from compute.capture import capture
from compute.methods import REGISTRY, MethodError
from compute.models import LoadedModel, load_model
from compute.targets import Target, parse_target
from tests.methods.helpers import assert_batch_invariant


@dataclass
class Case:
    kind: str
    name: str
    img_size: int | tuple[int, int] | None
    prefix: int
    grid: tuple[int, int]
    headless: bool


CASES = [
    Case("deit-distilled-96", "deit_tiny_distilled_patch16_224", 96, 2, (6, 6), False),  # class + distillation token
    Case("dinov2-reg4-70", "vit_small_patch14_reg4_dinov2", 70, 5, (5, 5), True),  # 4 registers, 14-px, headless
    Case("vit-tiny-64x112", "vit_tiny_patch16_224", (64, 112), 1, (4, 7), False),  # non-square input (H != W)
]
IDS = [c.kind for c in CASES]
# (model kind, method) -> why the method must refuse that model (a word its MethodError says)
REFUSALS = {
    ("deit-distilled-96", "chefer_lrp"): "distilled",  # no relevance rule for the mean of two heads
    ("dinov2-reg4-70", "chefer_lrp"): "head",  # relevance propagation starts at a classification head
}
NATIVE = [  # name, prefix tokens, grid, input size, headless
    ("deit_tiny_distilled_patch16_224", 2, (14, 14), (224, 224), False),
    ("vit_small_patch14_reg4_dinov2", 5, (37, 37), (518, 518), True),
    ("vit_small_patch14_dinov2", 1, (37, 37), (518, 518), True),
    ("vit_tiny_patch16_224", 1, (14, 14), (224, 224), False),
]


@pytest.mark.parametrize("name,prefix,grid,size,headless", NATIVE, ids=[n[0] for n in NATIVE])
def test_native_size_tokens_and_grid(name, prefix, grid, size, headless):
    loaded = load_model(name, random_init=True)
    assert (loaded.num_prefix_tokens, loaded.grid, loaded.input_size, loaded.headless) == (prefix, grid, size, headless)
    with torch.no_grad():
        cap = capture(loaded.model, torch.zeros(1, 3, *size), {"attn"}, target=parse_target(None, headless))
    assert cap.attn[-1].shape[-1] == prefix + grid[0] * grid[1]
    assert REGISTRY["raw_attention"]()(cap).shape == (1, *grid)


def _perturbed(loaded: LoadedModel) -> LoadedModel:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith("gamma"):
                p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    loaded.model.double()
    return loaded


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def case(request):
    c: Case = request.param
    loaded = _perturbed(load_model(c.name, random_init=True, img_size=c.img_size, seed=0))
    h, w = loaded.input_size
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return c, loaded, x


def test_the_model_reports_its_own_tokens_grid_and_size(case):
    c, loaded, x = case
    assert loaded.num_prefix_tokens == c.prefix
    assert loaded.grid == c.grid
    assert loaded.headless is c.headless
    assert loaded.input_size == tuple(g * p for g, p in zip(c.grid, loaded.patch_size))
    assert loaded.preprocess()(Image.new("RGB", (37, 23))).shape == (3, *loaded.input_size)
    cap = capture(loaded.model, x, {"attn"})
    n = c.prefix + c.grid[0] * c.grid[1]
    assert cap.num_prefix_tokens == c.prefix and cap.grid == c.grid
    assert cap.attn[-1].shape[-2:] == (n, n)


def test_maps_read_the_class_row_over_patch_tokens_only(case):
    """Registers and the distillation token take part in attention but have no place on the map."""
    c, loaded, x = case
    cap = capture(loaded.model, x, {"attn"})
    row = cap.attn[-1].mean(dim=1)[:, 0, :]
    expected = row[:, c.prefix:].reshape(-1, *c.grid)
    torch.testing.assert_close(REGISTRY["raw_attention"]()(cap), expected)
    assert (row[:, 1:c.prefix] > 0).all()  # the other prefix tokens are attended to, just not mapped
    with pytest.raises(ValueError, match="prefix tokens"):
        cap.to_grid(row[:, 1:])


def _target_for(loaded: LoadedModel, x: torch.Tensor) -> Target | None:
    """Headless: cosine similarity to a fixed reference vector (a scalar that depends on the whole feature)."""
    if not loaded.headless:
        return None
    dim = loaded.model.num_features
    return parse_target("cosine:ref", headless=True).bind(torch.randn(dim, generator=torch.Generator().manual_seed(9)))


def _negated(target: Target | None) -> Target:
    base = target or parse_target("top1", headless=False)

    def fn(outputs):
        value, classes = base(outputs)
        return -value, classes

    return Target(base.kind, f"-{base.spec}", fn)


def _maps(method, loaded, x, target):
    return method(capture(loaded.model, x, method.requires, **({"target": target} if target else {})))


@pytest.mark.slow
@pytest.mark.parametrize("method_name", sorted(REGISTRY))
def test_every_method_has_the_models_grid_and_is_batch_invariant(case, method_name):
    c, loaded, x = case
    method = REGISTRY[method_name]()
    target = _target_for(loaded, x)  # None: a classifier's default, the top-1 logit
    expected = c.grid if method.resolution == "patch" else loaded.input_size
    why = REFUSALS.get((c.kind, method_name))
    if why is not None:
        with pytest.raises(MethodError, match=why):
            _maps(method, loaded, x, target)
        return
    maps = _maps(method, loaded, x, target)  # any other refusal fails
    assert maps.shape == (x.shape[0], *expected)
    assert torch.isfinite(maps).all()
    varied = [bool(m.max() > m.min()) for m in maps]
    assert all(v or bool((m == 0).all()) for v, m in zip(varied, maps)), "a map is constant but not zero"
    if not any(varied):
        # a rectified map (ReLU of gradient-weighted terms) can be zero for every image of a random model when
        # its gradients all point one way; the opposite target flips every gradient, so it must then show a map
        flipped = _maps(method, loaded, x, _negated(target))
        varied = [bool(m.max() > m.min()) for m in flipped]
    assert any(varied), "every map of the batch is constant"
    if target is None:
        assert_batch_invariant(method, loaded.model, x, atol=1e-9)
    else:
        alone = torch.cat([_maps(method, loaded, x[i:i + 1], target) for i in range(x.shape[0])])
        torch.testing.assert_close(maps, alone, atol=1e-9, rtol=1e-7)


def test_headless_default_target_is_the_feature_norm(case):
    c, loaded, x = case
    target = parse_target(None, loaded.headless)
    cap = capture(loaded.model, x, {"attn"}, target=target)
    if c.headless:
        assert target.kind == "cls_norm"
        torch.testing.assert_close(cap.target_value, loaded.model(x).norm(dim=-1).float())
        assert (cap.target_class == -1).all()
    else:
        assert target.kind == "logit"
        assert cap.outputs.shape == (x.shape[0], loaded.num_classes)


def test_distilled_output_averages_both_heads():
    """What the gradient-based maps of a distilled DeiT explain: the mean of the class and distillation heads."""
    loaded = load_model("deit_tiny_distilled_patch16_224", random_init=True, img_size=64)
    m = loaded.model
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tokens = m.forward_features(x)
    torch.testing.assert_close(m(x), (m.head(tokens[:, 0]) + m.head_dist(tokens[:, 1])) / 2)
    assert loaded.num_prefix_tokens == 2 and loaded.grid == (4, 4)


def test_the_refusal_table_names_real_cases_and_methods():
    kinds = {c.kind for c in CASES}
    assert all(kind in kinds and method in REGISTRY for kind, method in REFUSALS), sorted(REFUSALS)

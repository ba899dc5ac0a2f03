"""The contract every registered method keeps, checked on a small random-init ViT for every method of the registry
(at its defaults and at each declared alternative of its options) and for a hybrid of each kind. A method gets
these checks by registering; its own test file holds only its formula (a naive transcription) and its quirks.

- well formed: ``[B, h, w]`` at patch resolution (``[B, H, W]`` at pixel resolution), floating point, finite,
  and not constant on a random image;
- batch invariant: a batch gives the maps of its images explained one at a time, to 1e-5 of each map's spread
  (the maps of these tiny models span 1e-5 to 1e-3, so an absolute bound would prove nothing);
- the target: a class-specific method gives other maps for other classes, and a batch whose images each explain
  a different class equals the images explained alone; a class-agnostic method ignores the target.
"""

from __future__ import annotations

import pytest
import torch

from compute.methods import REGISTRY, Method, get_method
from tests.methods.helpers import (REL, assert_per_image_targets, assert_target_sensitive, batched_maps,
                                   spread)

# ``both_signs_vit`` (see conftest): every class-specific method gives every image a non-constant map there
MODEL = "both_signs_vit"
HYBRIDS = ["hybrid:chefer_grad*rollout(head_fusion=max)", "hybrid:raw_attention+saliency"]


def _variants(cls: type[Method]) -> list[str]:
    """The method at its defaults, then one spec per declared alternative: every other choice, the other
    boolean, the second block for a block index. Numbers in a range and execution options are left out."""
    specs = [cls.name]
    for o in cls.option_specs:
        if o.execution:
            continue
        if o.choices:
            others = [c for c in o.choices if c != o.default]
        elif o.kind is bool:
            others = [str(not o.default).lower()]
        elif o.below is not None:
            others = [o.default + 1]
        else:
            others = []
        specs += [f"{cls.name}({o.name}={v})" for v in others]
    return specs


SPECS = [s for name in sorted(REGISTRY) for s in _variants(REGISTRY[name])] + HYBRIDS
CLASS_SPECIFIC = [s for s in SPECS if get_method(s).class_specific]


def test_every_registered_method_is_under_contract():
    assert {s.split("(")[0] for s in SPECS} >= set(REGISTRY)
    assert "rollout(start_layer=1)" in SPECS and "saw(layer_weights=last)" in SPECS  # options are varied too


@pytest.mark.parametrize("spec", SPECS)
def test_maps_are_well_formed(spec, request, images):
    model, method = request.getfixturevalue(MODEL), get_method(spec)
    maps = batched_maps(method, model, images)
    expected = model.patch_embed.grid_size if method.resolution == "patch" else images.shape[2:]
    assert maps.shape == (images.shape[0], *expected)
    assert maps.dtype.is_floating_point
    assert torch.isfinite(maps).all()
    for i, m in enumerate(maps):
        assert m.max() > m.min(), f"image {i}: the map is constant on a random input"


@pytest.mark.parametrize("spec", SPECS)
def test_a_batch_gives_the_maps_of_its_images_one_at_a_time(spec, request, images):
    model, method = request.getfixturevalue(MODEL), get_method(spec)
    together = batched_maps(method, model, images)
    for i in range(images.shape[0]):
        alone = batched_maps(method, model, images[i:i + 1])[0]
        err, s = float((together[i] - alone).abs().max()), spread(alone)
        assert s > 0, f"image {i}: constant map, the comparison proves nothing"
        assert err <= REL * s, f"image {i}: batch and alone differ by {err:.3e} = {err / s:.2e} x spread"


@pytest.mark.parametrize("spec", CLASS_SPECIFIC)
def test_class_specific_maps_depend_on_the_target(spec, request, images):
    assert_target_sensitive(get_method(spec), request.getfixturevalue(MODEL), images)


@pytest.mark.parametrize("spec", CLASS_SPECIFIC)
def test_a_batch_with_a_class_per_image_equals_one_image_at_a_time(spec, request, images):
    # sqrt near 0 turns rounding noise of order 1e-16 in a part into ~1e-8 (d sqrt(x) = dx / 2 sqrt(x))
    rel = 1e-6 if spec.startswith("hybrid:") and "*" in spec else 1e-9
    assert_per_image_targets(get_method(spec), request.getfixturevalue(MODEL), images, rel=rel)


@pytest.mark.parametrize("spec", [s for s in SPECS if s not in CLASS_SPECIFIC])
def test_class_agnostic_maps_ignore_the_target(spec, request, images):
    model, method = request.getfixturevalue(MODEL), get_method(spec)
    a = batched_maps(method, model, images, classes=[0] * images.shape[0])
    b = batched_maps(method, model, images, classes=[1] * images.shape[0])
    assert torch.equal(a, b)

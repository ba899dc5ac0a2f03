"""Shared checks every method test runs: batch invariance, shape/finiteness, target sensitivity."""

from __future__ import annotations

import torch

from compute.capture import capture
from compute.targets import per_image_classes


def batched_maps(method, model, images, classes=None) -> torch.Tensor:
    target = per_image_classes(classes) if classes is not None else None
    kwargs = {"target": target} if target is not None else {}
    return method(capture(model, images, method.requires, **kwargs))


def assert_batch_invariant(method, model, images, atol=1e-10):
    together = batched_maps(method, model, images)
    alone = torch.cat([batched_maps(method, model, images[i:i + 1]) for i in range(images.shape[0])])
    torch.testing.assert_close(together, alone, atol=atol, rtol=1e-7)


def assert_well_formed(method, model, images):
    maps = batched_maps(method, model, images)
    gh, gw = model.patch_embed.grid_size
    if method.resolution == "patch":
        assert maps.shape == (images.shape[0], gh, gw)
    else:
        assert maps.shape == (images.shape[0], images.shape[2], images.shape[3])
    assert torch.isfinite(maps).all()
    for m in maps:
        assert m.max() > m.min(), "map is constant on a random input"


def assert_target_sensitive(method, model, images):
    a = batched_maps(method, model, images, classes=[0] * images.shape[0])
    b = batched_maps(method, model, images, classes=[1] * images.shape[0])
    for i in range(images.shape[0]):
        assert not torch.allclose(a[i], b[i], atol=1e-9), f"image {i}: classes 0 and 1 give the same map"

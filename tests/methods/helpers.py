"""Shared checks of the method tests: agreement with a naive transcription relative to the map's spread (each
method's own file), and the batch and target checks of the registry-wide contract (test_contract.py)."""

from __future__ import annotations

import torch

from compute.capture import capture
from compute.targets import per_image_classes

# The project's rule: a map agrees with the naive transcription of its formula to 1e-5 — relative to that image's
# map spread (max - min), since on the tiny random models a whole map spans only 1e-5 to 1e-3: an absolute 1e-5
# would accept a map that is wrong everywhere.
REL = 1e-5

# One target class per image of the 4-image `images` fixture, all different, so that a batch which explained one
# image's class for every image is caught (the top-1 class is the same for all four random images).
PER_IMAGE_CLASSES = (3, 0, 8, 5)


def spread(m: torch.Tensor) -> float:
    return float(m.detach().max() - m.detach().min())


def assert_matches_naive(got: torch.Tensor, want: torch.Tensor, rel: float = REL, what: str = "map"):
    """ONE image's map against its naive transcription: ``max |got - want| <= rel * (max(want) - min(want))``.

    The expected map must vary (spread > 0): against a constant or all-zero map the bound would be vacuous (zero
    tolerance then fails loudly rather than passing)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != naive {tuple(want.shape)}"
    assert torch.isfinite(got).all(), f"{what}: not finite"
    got, want = got.detach(), want.detach().to(got.dtype)
    s = spread(want)
    assert s > 0, f"{what}: the naive map is constant ({float(want.max()):.3e}), so the comparison proves nothing"
    err = float((got - want).abs().max())
    assert err <= rel * s, (f"{what}: max |got - naive| = {err:.3e} > {rel:g} x spread {s:.3e} "
                            f"(= {err / s:.2e} x spread)")


def batched_maps(method, model, images, classes=None) -> torch.Tensor:
    target = per_image_classes(list(classes)) if classes is not None else None
    kwargs = {"target": target} if target is not None else {}
    return method(capture(model, images, method.requires, **kwargs))


def assert_batch_invariant(method, model, images, atol=1e-10):
    together = batched_maps(method, model, images)
    alone = torch.cat([batched_maps(method, model, images[i:i + 1]) for i in range(images.shape[0])])
    torch.testing.assert_close(together, alone, atol=atol, rtol=1e-7)


def assert_per_image_targets(method, model, images, classes=PER_IMAGE_CLASSES, rel=1e-9):
    """A batch whose images each explain a DIFFERENT class equals every image explained alone with its own class.

    Non-vacuous by construction: every image's map varies, and on images 1.. it differs (by far more than the
    tolerance) from the map of image 0's class — so a method or capture that explained image 0's class (or any one
    class) for the whole batch fails. Tolerance: ``rel`` times each image's map spread."""
    classes = list(classes)
    assert method.class_specific, f"{method.key} does not depend on the target class"
    assert len(classes) == images.shape[0] and len(set(classes)) == len(classes), "one distinct class per image"
    together = batched_maps(method, model, images, classes)
    alone = torch.cat([batched_maps(method, model, images[i:i + 1], classes[i:i + 1])
                       for i in range(images.shape[0])])
    first = batched_maps(method, model, images, [classes[0]] * len(classes))
    for i in range(images.shape[0]):
        s = spread(alone[i])
        assert s > 0, f"image {i} (class {classes[i]}): constant map, the comparison proves nothing"
        err = float((together[i] - alone[i]).abs().max())
        assert err <= rel * s, (f"image {i} explained in a batch with a class per image differs from alone: "
                                f"max |diff| = {err:.3e} = {err / s:.2e} x spread")
        if i:
            gap = float((first[i] - alone[i]).abs().max())
            assert gap > 1e-3 * s, (f"image {i}: class {classes[i]} and class {classes[0]} give the same map "
                                    f"(max |diff| = {gap:.3e}), so the classes are not told apart")


def assert_target_sensitive(method, model, images):
    a = batched_maps(method, model, images, classes=[0] * images.shape[0])
    b = batched_maps(method, model, images, classes=[1] * images.shape[0])
    for i in range(images.shape[0]):
        assert not torch.allclose(a[i], b[i], atol=1e-9), f"image {i}: classes 0 and 1 give the same map"

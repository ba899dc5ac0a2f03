"""saliency against a per-pixel transcription of Simonyan et al.'s vanilla gradient."""

from __future__ import annotations

import torch

from compute.capture import capture
from compute.methods import get_method
from tests.methods.helpers import assert_matches_naive
from tests.naive import grads, naive_forward


def naive_saliency(model, image):
    out = naive_forward(model, image)
    logits = out["logits"]
    (g,) = grads(logits[logits.argmax()], [out["input"]])  # [3, H, W]
    channels, height, width = g.shape
    values = g.tolist()
    result = [[max(abs(values[c][i][j]) for c in range(channels)) for j in range(width)] for i in range(height)]
    return torch.tensor(result, dtype=g.dtype)


def test_matches_paper_formula(tiny_vit, images):
    method = get_method("saliency")
    maps = method(capture(tiny_vit, images, method.requires))
    assert maps.shape == (4, 64, 64)
    for i in range(images.shape[0]):
        assert_matches_naive(maps[i], naive_saliency(tiny_vit, images[i]), what=f"image {i}")


def test_map_is_at_pixel_resolution_not_pooled(tiny_vit, images):
    """Pixels inside one 16 x 16 patch differ: the map is not a patch map repeated."""
    method = get_method("saliency")
    assert method.resolution == "pixel"
    maps = method(capture(tiny_vit, images, method.requires))
    patch = maps[0, :16, :16]
    assert patch.max() > patch.min()
    assert (maps >= 0).all()

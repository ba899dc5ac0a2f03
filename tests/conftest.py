"""Shared fixtures: small random-init ViTs, the read-only real data in ../shared, helpers for method tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VOC_MINI = SHARED / "voc-mini"
DINOV2 = SHARED / "models" / "dinov2-vits14" / "dinov2_vits14_224_fp16.safetensors"


def make_vit(depth: int = 3, embed_dim: int = 48, num_heads: int = 3, img_size: int = 64, patch_size: int = 16,
             num_classes: int = 10, seed: int = 0, **kwargs) -> torch.nn.Module:
    """A small timm VisionTransformer with random weights, in eval mode, in float64 for exact comparisons."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                              num_heads=num_heads, num_classes=num_classes, **kwargs)
    # timm's init leaves biases zero and LayerNorm affine at identity; randomise them so that formulas which
    # ignore a term cannot pass by accident.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval().requires_grad_(False).double()


@pytest.fixture(scope="session")
def tiny_vit() -> torch.nn.Module:
    return make_vit()


@pytest.fixture(scope="session")
def both_signs_vit() -> torch.nn.Module:
    """Seed 33: for the top-1 class of every image of ``images``, the last block has heads whose mean class-token
    attention gradient is positive AND heads where it is negative (in ``tiny_vit``, seed 0, all are negative), and
    with the classes ``tests.methods.helpers.PER_IMAGE_CLASSES`` every class-specific method gives a non-constant
    map. The tests that rely on this assert it."""
    return make_vit(seed=33)


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 64, generator=g, dtype=torch.float64)


@pytest.fixture(scope="session")
def voc_mini() -> Path:
    if not (VOC_MINI / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"real VOC sample not found at {VOC_MINI}")
    return VOC_MINI


@pytest.fixture(scope="session")
def dinov2_weights() -> Path:
    if not DINOV2.is_file():
        pytest.skip(f"DINOv2 weights not found at {DINOV2}")
    return DINOV2

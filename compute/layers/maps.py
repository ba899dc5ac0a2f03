"""Operations on finished maps ``[B, ...]``, image by image."""

from __future__ import annotations

import torch


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of ``[B, ...]`` maps to [0, 1]; a constant map gives zeros (not NaN)."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = flat.amax(dim=1, keepdim=True) - lo
    out = torch.where(span > 0, (flat - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                      torch.zeros_like(flat))
    return out.reshape(maps.shape)


__all__ = ["minmax"]

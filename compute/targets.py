"""What is explained: one scalar per image, computed from the model's output.

- ``top1``: the logit of the predicted class (the default for a classifier);
- ``class:<i>``: the logit of class ``i`` for every image;
- ``cls_norm``: the L2 norm of the pooled feature vector (for a headless backbone, whose output is that vector).

A target is a function ``outputs [B, K] -> (value [B], class index [B], -1 where not a class)`` plus a ``kind``
stored with every row so that readers know what was explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Target:
    kind: str  # stored in metrics.target_kind
    spec: str  # as given on the command line
    fn: Callable[[Tensor], tuple[Tensor, Tensor]]

    def __call__(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.fn(outputs)


def _top1(outputs: Tensor) -> tuple[Tensor, Tensor]:
    classes = outputs.argmax(dim=-1)
    return outputs.gather(1, classes[:, None])[:, 0], classes


def _fixed(index: int) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        if not 0 <= index < outputs.shape[1]:
            raise ValueError(f"target class {index} is outside the head's 0..{outputs.shape[1] - 1}")
        classes = torch.full((outputs.shape[0],), index, dtype=torch.long, device=outputs.device)
        return outputs[:, index], classes

    return fn


def per_image_classes(classes: Tensor | list[int]) -> Target:
    """Explain a given class per image (used by protocols that explain each present class)."""
    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(classes, device=outputs.device, dtype=torch.long)
        return outputs.gather(1, idx[:, None])[:, 0], idx

    return Target("logit", "per-image", fn)


def _cls_norm(outputs: Tensor) -> tuple[Tensor, Tensor]:
    return outputs.norm(dim=-1), torch.full((outputs.shape[0],), -1, dtype=torch.long, device=outputs.device)


TARGET_HELP = "top1 (predicted class), class:<index>, or cls_norm (pooled-feature norm, for headless backbones)"


def parse_target(spec: str | None, headless: bool) -> Target:
    """``None`` picks the default: ``top1`` for a classifier, ``cls_norm`` for a headless backbone."""
    spec = (spec or ("cls_norm" if headless else "top1")).strip()
    if spec == "top1":
        if headless:
            raise ValueError("target 'top1' needs a classification head; this model is headless: use cls_norm")
        return Target("logit", spec, _top1)
    if spec.startswith("class:"):
        if headless:
            raise ValueError(f"target {spec!r} needs a classification head; this model is headless: use cls_norm")
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad target {spec!r}: write class:<integer index>") from None
        return Target("logit", spec, _fixed(index))
    if spec == "cls_norm":
        return Target("cls_norm", spec, _cls_norm)
    raise ValueError(f"unknown target {spec!r}; choose {TARGET_HELP}")

"""The captures of a batch: one :class:`Pass` per target set, planned from the work left, and what scoring
keeps of each capture (:class:`PassOutputs`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compute.data.classmap import ClassMap
from compute.runner.config import RunConfig
from compute.runner.resume import TARGET_PASS, target_pass_protocols
from compute.targets import Target, voc_logsumexp


@dataclass
class Pass:
    """One capture: a target over a subset of the batch's images, scored under some protocols."""

    target: Target
    positions: list[int]            # positions in the batch's item list
    protocols: list[str]
    voc: list[int] | None = None    # VOC class explained per image (``voc_lse`` passes only)

    def unit(self, j: int):
        """The unit of work (see :mod:`compute.runner.resume`) of the pass's ``j``-th image."""
        return self.voc[j] if self.voc is not None else TARGET_PASS


def plan_passes(items: list[dict], todo: dict[str, dict], target: Target, config: RunConfig,
                cmap: ClassMap | None) -> list[Pass]:
    """One capture per target set, for the images that still owe rows of it: the ``--target`` pass, then
    (``explain="present"``) pass ``r`` explains each image's ``r``-th class still missing (the ``r``-th present
    class in a run from scratch); images with fewer classes sit it out."""
    passes: list[Pass] = []
    target_positions = [i for i, it in enumerate(items) if TARGET_PASS in todo[it["image_id"]]]
    if target_positions:
        passes.append(Pass(target, target_positions, target_pass_protocols(config)))
    if config.explain == "present":
        classes_left = [[u for u in todo[it["image_id"]] if u is not TARGET_PASS] for it in items]
        for r in range(max((len(v) for v in classes_left), default=0)):
            positions = [i for i, v in enumerate(classes_left) if len(v) > r]
            vocs = [classes_left[i][r] for i in positions]
            passes.append(Pass(voc_logsumexp([cmap.indices_of(v) for v in vocs], vocs), positions, ["clean"], vocs))
    return passes


@dataclass
class PassOutputs:
    """What scoring needs of a capture besides the maps, on the CPU (one copy per pass, not a sync per row)."""

    logits: torch.Tensor           # [B, classes] float32
    target_class: list[int]
    target_value: list[float]

    @classmethod
    def of(cls, cap) -> "PassOutputs":
        return cls(cap.outputs.detach().float().cpu(), [int(c) for c in cap.target_class.tolist()],
                   [float(v) for v in cap.target_value.detach().float().cpu().tolist()])

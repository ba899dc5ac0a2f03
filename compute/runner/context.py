"""What every batch of one run shares (:class:`RunContext`), and where its time goes (:class:`StageTimes`)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from compute.data.classmap import ClassMap
from compute.models import LoadedModel
from compute.runner.background import Background
from compute.runner.config import RunConfig
from compute.runner.resume import CommittedKeys
from compute.targets import Target
from store.writer import StoreWriter


@dataclass
class StageTimes:
    """Seconds spent per stage of the batch loop (GPU work included: a timed stage ends with a device sync)."""

    capture: float = 0.0
    methods: float = 0.0
    scoring: float = 0.0
    faithfulness: float = 0.0
    counterfactuals: float = 0.0
    writing: float = 0.0
    background: float = 0.0  # deferred method work, run alongside the main loop

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time the block takes to ``stage`` (one of the fields)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, stage, getattr(self, stage) + time.perf_counter() - t0)


@dataclass
class RunContext:
    """What every batch of one run shares: the model, target and class map, the writer, and what is committed
    (the keys found at the start plus those this session commits)."""

    config: RunConfig
    loaded: LoadedModel
    target: Target
    device: torch.device
    class_names: tuple[str, ...]
    cmap: ClassMap | None
    writer: StoreWriter
    images_done: set
    done: CommittedKeys = field(default_factory=CommittedKeys)
    background: Background | None = None
    times: StageTimes = field(default_factory=StageTimes)
    map_skips: dict[str, int] = field(default_factory=dict)  # method -> maps not made or not scored this session

    def stages(self) -> dict[str, float]:
        """Seconds per stage, by the names the run manifest gives them. ``in the background`` ran alongside the
        others; only ``waiting for the background`` added to the run."""
        t = self.times
        return {"capture": t.capture, "methods": t.methods, "scoring": t.scoring, "faithfulness": t.faithfulness,
                "counterfactuals": t.counterfactuals, "writing": t.writing, "in the background": t.background,
                "waiting for the background": self.background.wait_seconds if self.background else 0.0}

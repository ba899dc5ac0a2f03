"""What a run is: its options (:class:`RunConfig`), the identity whose hash is the run id, and the checks that
refuse bad options before any work."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from compute import DEFAULT_MODEL
from compute.counterfactuals import FILLS
from compute.data.classmap import ClassMap
from compute.metrics import PROTOCOLS
from compute.metrics.faithfulness import BASELINES
from compute.models import LoadedModel
from store.schema import check_min_confidence


@dataclass
class RunConfig:
    out: str
    voc_root: str | None = None
    split: str = "val"
    model: str = DEFAULT_MODEL
    weights: str | None = None
    random_init: bool = False
    img_size: int | None = None
    methods: str = "all"
    protocols: tuple[str, ...] = ("report", "clean")
    target: str | None = None
    batch_size: int = 16
    device: str = "auto"
    limit: int | None = None
    seed: int = 0
    num_workers: int | None = None
    shard: str | None = None  # "i/n": every n-th image from the i-th; default from RANK/WORLD_SIZE if set
    precision: str = "fp32"  # "bf16": capture under bfloat16 autocast (methods still compute in float32)
    explain: str = "top1"  # "top1": the --target; "present": clean explains every present VOC class
    min_confidence: float | None = None  # only images whose top-1 probability is above it
    faithfulness: bool = False
    faithfulness_steps: int = 10
    faithfulness_baseline: str = "zero"
    # counterfactual variants per explained target (compute.runner.variants); not part of the run id: they
    # change no metric, and every variant row records its fill
    counterfactuals: bool = True
    cf_fill: str = "blur"

    def identity(self) -> dict:
        """What makes two runs' rows comparable; its hash is the run id (methods, limits and the confidence
        filter are not part of it: they choose which rows are computed, not their values)."""
        ident = {"model": self.model, "weights": fingerprint(self.weights), "random_init": self.random_init,
                 "seed": self.seed if self.random_init else None, "img_size": self.img_size, "split": self.split,
                 "protocols": sorted(self.protocols), "target": self.target}
        # only when not the default, so that the run ids of earlier stores stay what they were
        if self.explain != "top1":
            ident["explain"] = self.explain
        if self.target and self.target.startswith("cosine:"):  # the reference decides the values
            ref = self.target.split(":", 1)[1]
            ident["target"] = f"cosine:{fingerprint(ref)}" if ref != "mean" else "cosine:mean"
            if ref == "mean":
                ident["limit"] = self.limit
        if self.precision != "fp32":
            ident["precision"] = self.precision
        if self.faithfulness:
            ident["faithfulness"] = {"steps": self.faithfulness_steps, "baseline": self.faithfulness_baseline}
        if self.voc_root:  # the images themselves: the same command on other images is another run
            from compute.data.voc import data_fingerprint

            ident["data"] = data_fingerprint(self.voc_root, self.split)
        return ident

    def run_id(self) -> str:
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]


def fingerprint(path: str | None) -> str | None:
    """A file or folder as it is now: resolved path, sizes and modification times (not a content hash, which
    would mean reading gigabytes of weights at every start). Anything else is returned as given."""
    if not path or not Path(path).exists():
        return path
    p = Path(path).resolve()
    if p.is_file():
        st = p.stat()
        return f"{p}:{st.st_size}:{int(st.st_mtime)}"
    listing = "|".join(f"{f.relative_to(p)}:{f.stat().st_size}:{int(f.stat().st_mtime)}"
                       for f in sorted(p.rglob("*")) if f.is_file())
    return f"{p}|{hashlib.sha1(listing.encode()).hexdigest()[:16]}"


def check_config(config: RunConfig) -> None:
    """The checks that need neither the model nor the data (the Ray driver runs them before any actor)."""
    for p in config.protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    if config.precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown --precision {config.precision!r}; choose fp32 or bf16")
    if config.explain not in ("top1", "present"):
        raise ValueError(f"unknown --explain {config.explain!r}; choose top1 or present")
    if config.explain == "present" and "clean" not in config.protocols:
        raise ValueError("--explain present applies to the clean protocol; add clean to --protocol")
    check_min_confidence(config.min_confidence)
    if config.cf_fill not in FILLS:
        raise ValueError(f"unknown --cf-fill {config.cf_fill!r}; choose one of {', '.join(FILLS)}")
    if config.faithfulness:
        if config.faithfulness_baseline not in BASELINES:
            raise ValueError(f"unknown faithfulness baseline {config.faithfulness_baseline!r}; "
                             f"choose one of {', '.join(BASELINES)}")
        if config.faithfulness_steps < 1:
            raise ValueError("--faithfulness-steps must be at least 1")


def check_model_options(config: RunConfig, loaded: LoadedModel, cmap: ClassMap | None, reason: str | None) -> None:
    """The checks that need the loaded model and its class map (``reason``: why there is none)."""
    if config.explain == "present" and cmap is None:
        raise ValueError(f"--explain present needs the ImageNet-1k → VOC class map, which this run cannot use: "
                         f"{reason}")
    if config.min_confidence is not None and loaded.headless:
        raise ValueError("--min-confidence needs class probabilities; this model is headless")


def versions() -> dict:
    """The software that computed a run's rows, for its manifest."""
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "vitlens": __import__("compute").__version__}

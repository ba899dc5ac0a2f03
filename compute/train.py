"""Train a small timm ViT on a VOC-layout classification set (one object per image) and save it for vitlens.

Made for the synthetic planted-cue set (:mod:`compute.data.synthetic`), but it only needs what the VOC reader
gives: the label of an image is the single object class in its mask (mask index ``c`` → head class ``c - 1``).

The model is timm's ``test_vit`` (patch 16, width 64, depth 6, 2 heads, MLP ratio 3, ~0.3 M parameters) at
96 × 96 pixels, i.e. a 6 × 6 patch grid: small enough to train on a CPU core in a few minutes, with
the plain ViT blocks and class token every vitlens method reads. It is a stock timm name, so the checkpoint is
loaded back exactly as a user loads one::

    load_model("test_vit", weights="demo_vit.safetensors", img_size=96)
    vitlens compute --model test_vit --img-size 96 --weights demo_vit.safetensors --voc-root ...

The ``.safetensors`` file carries the class names under ``vitlens.labels`` (read by
:func:`compute.models.read_state_dict`) and, for reference, ``vitlens.model``, ``vitlens.img_size`` and
``vitlens.train`` (this module's config and results).

Training is seeded and deterministic on a given machine: a fixed number of threads,
``torch.use_deterministic_algorithms``, a seeded shuffle and no data augmentation.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from compute.models import LABELS_METADATA_KEY, LoadedModel, Preprocess, load_model

DEMO_MODEL = "test_vit"
DEMO_IMG_SIZE = 96


@dataclass(frozen=True)
class TrainConfig:
    model: str = DEMO_MODEL
    img_size: int = DEMO_IMG_SIZE
    epochs: int = 4
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 20
    seed: int = 0
    threads: int = 2
    limit: int | None = None   # only the first N training images


@dataclass
class TrainResult:
    weights: Path
    labels: list[str]
    config: TrainConfig
    seconds: float
    train_accuracy: float | None
    losses: list[float] = field(default_factory=list)   # mean training loss per epoch
    accuracy: dict[str, float] = field(default_factory=dict)  # eval group -> top-1 accuracy
    cue_following: dict[str, float] = field(default_factory=dict)  # eval group -> share predicted as the cue

    def summary(self) -> dict:
        return {"config": asdict(self.config), "seconds": round(self.seconds, 2),
                "losses": [round(x, 4) for x in self.losses], "train_accuracy": self.train_accuracy,
                "accuracy": self.accuracy, "cue_following": self.cue_following}


@contextmanager
def deterministic(threads: int):
    """Fixed thread count and deterministic kernels for the duration of the block (restored afterwards)."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def single_label(mask: np.ndarray) -> int:
    """Head class of an image with exactly one object class in its mask (mask index c → class c - 1)."""
    present = [int(v) for v in np.unique(mask) if v not in (0, 255)]
    if len(present) != 1:
        raise ValueError(f"expected one object class per image, found mask values {present}")
    return present[0] - 1


def load_split(dataset, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Every image of a dataset, preprocessed: (x [N, 3, H, W], labels [N], metas)."""
    xs, ys, metas = [], [], []
    for i in range(len(dataset)):
        s = dataset[i]
        xs.append(preprocess(s.image))
        ys.append(single_label(s.mask))
        metas.append({**s.meta, "image_id": s.image_id})
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long), metas


def create(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(config.seed)
    return timm.create_model(config.model, pretrained=False, num_classes=num_classes, img_size=config.img_size)


def preprocess_for(model: torch.nn.Module, img_size: int) -> Preprocess:
    """The same preprocessing :func:`compute.models.load_model` derives for this model."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return Preprocess((img_size, img_size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"))


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + np.cos(np.pi * t))


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
        progress: Callable[[int, int, float], None] | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay; returns the mean loss of each epoch."""
    model.train().requires_grad_(True)

    def decays(name: str, p: torch.Tensor) -> bool:  # weight matrices only: no biases, norms, embeddings
        return p.ndim > 1 and "pos_embed" not in name and "token" not in name

    params = list(model.named_parameters())
    opt = torch.optim.AdamW([{"params": [p for n, p in params if decays(n, p)], "weight_decay": config.weight_decay},
                             {"params": [p for n, p in params if not decays(n, p)], "weight_decay": 0.0}],
                            lr=config.lr)
    n = x.shape[0]
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    warmup = min(config.warmup_steps, total)
    gen = torch.Generator().manual_seed(config.seed)
    losses, step = [], 0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, warmup, config.lr)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            running += loss.item() * len(idx)
            step += 1
        losses.append(running / n)
        if progress:
            progress(epoch + 1, config.epochs, losses[-1])
    model.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, x.shape[0], batch_size)])


def save_checkpoint(model: torch.nn.Module, path: str | Path, labels: list[str], config: TrainConfig,
                    extra: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {LABELS_METADATA_KEY: json.dumps(list(labels)), "vitlens.model": config.model,
            "vitlens.img_size": str(config.img_size), "vitlens.train": json.dumps(extra or {}, sort_keys=True)}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def group_accuracy(preds: torch.Tensor, labels: torch.Tensor, metas: list[dict], names: list[str]
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """Per group: top-1 accuracy, and the share of images predicted as their cue's class (where one exists)."""
    acc, follow = {}, {}
    groups = sorted({m.get("group") for m in metas if m.get("group")})
    for g in groups:
        idx = [i for i, m in enumerate(metas) if m.get("group") == g]
        acc[g] = round(float((preds[idx] == labels[idx]).float().mean()), 4)
        cue = [(i, names.index(metas[i]["cue_class"])) for i in idx if metas[i].get("cue_class") in names]
        if cue:
            follow[g] = round(float(np.mean([int(preds[i]) == c for i, c in cue])), 4)
    return acc, follow


def evaluate(loaded: LoadedModel, dataset) -> tuple[dict[str, float], dict[str, float]]:
    """Accuracy and cue-following per group of ``dataset`` for a model loaded through ``load_model``."""
    x, y, metas = load_split(dataset, loaded.preprocess())
    preds = predict(loaded.model, x.to(next(loaded.model.parameters()).device)).cpu()
    return group_accuracy(preds, y, metas, list(loaded.labels or []))


def train(voc_root: str | Path, weights: str | Path, labels: list[str] | tuple[str, ...],
          config: TrainConfig = TrainConfig(), eval_split: str | None = "val",
          progress: Callable[[int, int, float], None] | None = None) -> TrainResult:
    """Train on ``<voc_root>``'s ``train`` split, save to ``weights`` (.safetensors), reload it through
    :func:`compute.models.load_model` and report accuracy per group of ``eval_split``."""
    from compute.data.voc import VOCSegmentation

    t0 = time.perf_counter()
    labels = list(labels)
    with deterministic(config.threads):
        train_set = VOCSegmentation(voc_root, split="train", limit=config.limit)
        model = create(config, len(labels))
        x, y, _ = load_split(train_set, preprocess_for(model, config.img_size))
        if int(y.max()) >= len(labels):
            raise ValueError(f"mask class {int(y.max()) + 1} has no label; labels: {labels}")
        losses = fit(model, x, y, config, progress)
        train_acc = round(float((predict(model, x) == y).float().mean()), 4)
        seconds = time.perf_counter() - t0
        result = TrainResult(weights=Path(weights), labels=labels, config=config, seconds=seconds,
                             train_accuracy=train_acc, losses=losses)
        save_checkpoint(model, weights, labels, config, extra=result.summary())
        if eval_split:
            loaded = load_model(config.model, weights=weights, img_size=config.img_size)
            result.accuracy, result.cue_following = evaluate(
                loaded, VOCSegmentation(voc_root, split=eval_split))
        save_checkpoint(model, weights, labels, config, extra=result.summary())
    return result


__all__ = ["DEMO_MODEL", "DEMO_IMG_SIZE", "TrainConfig", "TrainResult", "train", "fit", "evaluate", "predict",
           "save_checkpoint", "load_split", "single_label", "deterministic", "group_accuracy", "create"]

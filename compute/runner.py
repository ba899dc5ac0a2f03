"""The batch job: images → model → capture → methods → metrics → store, resumable, one batch at a time.

For each batch the runner asks every method what it ``requires``, runs one capture that provides the union
(one forward, and only the backward passes some method needs), hands the same captured tensors to every
method, scores each map under every protocol, and commits the batch's rows as one set of part files.
Work already committed for the same run (same config hash) is skipped, so a rerun into the same ``--out``
neither repeats work nor duplicates rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from compute.capture import capture
from compute.data.voc import VOC_CLASSES, SampleError
from compute.methods import Method, parse_methods
from compute.metrics import PROTOCOLS, score
from compute.models import LoadedModel, Preprocess, load_model
from compute.targets import Target, parse_target
from store.schema import THUMBNAIL_SIZE, encode_heatmap
from store.writer import StoreWriter


@dataclass
class RunConfig:
    out: str
    voc_root: str | None = None
    split: str = "val"
    model: str = "vit_base_patch16_224.orig_in21k_ft_in1k"
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

    def identity(self) -> dict:
        """What makes two runs' rows comparable; its hash is the run id (methods and limits are not part of it)."""
        weights = self.weights
        if weights and Path(weights).is_file():
            st = Path(weights).stat()
            weights = f"{Path(weights).resolve()}:{st.st_size}:{int(st.st_mtime)}"
        return {"model": self.model, "weights": weights, "random_init": self.random_init,
                "seed": self.seed if self.random_init else None, "img_size": self.img_size, "split": self.split,
                "protocols": sorted(self.protocols), "target": self.target}

    def run_id(self) -> str:
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class RunSummary:
    run_id: str
    out: str
    images: int = 0
    skipped: int = 0
    already_done: int = 0
    methods: list[str] = field(default_factory=list)
    rows: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.images} images × {len(self.methods)} methods in {self.seconds:.1f} s "
                f"({self.images_per_second:.2f} img/s); {self.rows} metric rows, {self.skipped} skipped, "
                f"{self.already_done} already done → {self.out} (run {self.run_id})")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is visible; use --device cpu or auto")
    return torch.device(device)


class _Prepared:
    """Decodes and preprocesses one sample; runs in DataLoader workers. Never raises: errors become skips."""

    def __init__(self, dataset, preprocess: Preprocess):
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        image_id = self.dataset.ids[index] if hasattr(self.dataset, "ids") else str(index)
        try:
            sample = self.dataset[index]
        except SampleError as exc:
            return {"image_id": image_id, "error": str(exc)}
        except Exception as exc:  # a corrupt file must not stop the run
            return {"image_id": image_id, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "image_id": sample.image_id, "error": None, "x": self.preprocess(sample.image), "mask": sample.mask,
            "extra_masks": sample.extra_masks, "meta": sample.meta, "width": sample.image.width,
            "height": sample.image.height, "classes": sample.classes_present,
            "thumbnail": _jpeg_thumbnail(sample.image), "mask_png": _png(sample.mask),
            "cue_png": _png(sample.extra_masks["cue"]) if "cue" in sample.extra_masks else None,
        }


def _collate(items: list[dict]) -> list[dict]:
    return items


def _jpeg_thumbnail(image: Image.Image) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BICUBIC)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def versions() -> dict:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "vitlens": __import__("compute").__version__}


def run(config: RunConfig, dataset=None, loaded: LoadedModel | None = None,
        progress: Callable[[int, int], None] | None = None, class_names: tuple[str, ...] = VOC_CLASSES) -> RunSummary:
    """Run the job described by ``config``; ``dataset``/``loaded`` may be given to bypass VOC / timm loading.

    ``progress(done_images, total_images)`` is called after every batch.
    """
    t_start = time.perf_counter()
    methods = parse_methods(config.methods)
    for p in config.protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    device = resolve_device(config.device)
    if dataset is None:
        from compute.data.voc import VOCSegmentation

        if not config.voc_root:
            raise ValueError("no images: pass --voc-root (a VOCdevkit folder)")
        dataset = VOCSegmentation(config.voc_root, split=config.split, limit=config.limit)
    if loaded is None:
        loaded = load_model(config.model, weights=config.weights, random_init=config.random_init,
                            img_size=config.img_size, device=device, seed=config.seed)
    else:
        loaded.model.to(device)
    target = parse_target(config.target, loaded.headless)

    run_id = config.run_id()
    writer = StoreWriter(config.out, run_id)
    done = writer.done_keys()
    images_done = writer.images_done()
    summary = RunSummary(run_id=run_id, out=str(config.out), methods=[m.key for m in methods])
    writer.write_manifest({
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": {**asdict(config), **config.identity(),
                                                                   "weights": loaded.weights},
        "versions": versions(), "methods": summary.methods,
        "sessions": [{"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "methods": summary.methods,
                      "device": str(device)}],
    })

    workers = config.num_workers if config.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    loader = torch.utils.data.DataLoader(
        _Prepared(dataset, loaded.preprocess()), batch_size=config.batch_size, shuffle=False,
        num_workers=workers, collate_fn=_collate, pin_memory=device.type == "cuda",
        persistent_workers=False)
    total = len(dataset)
    seen = 0
    capture_seconds = 0.0
    for items in loader:
        seen += len(items)
        skips = [{"image_id": it["image_id"], "stage": "load", "reason": it["error"]} for it in items if it["error"]]
        good = [it for it in items if not it["error"]]
        key = hashlib.sha1("|".join([it["image_id"] for it in items] + summary.methods).encode()).hexdigest()[:16]
        summary.skipped += len(skips)
        todo = _work_left(good, methods, config.protocols, done)
        if todo:
            rows, t_cap = _explain_batch(good, todo, loaded, target, config.protocols, device, config.split,
                                         class_names, writer, key, images_done, skips)
            capture_seconds += t_cap
            summary.images += len(todo)
            summary.rows += rows
        else:
            writer.write_skips(key, skips)
        summary.already_done += len(good) - len(todo)
        if progress:
            progress(seen, total)

    summary.seconds = time.perf_counter() - t_start
    writer.write_manifest({
        "counts": {"images": summary.images, "skipped": summary.skipped, "already_done": summary.already_done,
                   "rows": summary.rows},
        "timings": {"total_seconds": round(summary.seconds, 3), "capture_seconds": round(capture_seconds, 3),
                    "images_per_second": round(summary.images_per_second, 3)},
    })
    return summary


def _work_left(good: list[dict], methods: list[Method], protocols, done: set) -> dict[str, list[Method]]:
    """image_id -> methods still missing a committed row (for any protocol). The target class is not known
    before the forward pass, so an image counts as done for a method when any target was committed."""
    done_pairs = {(k[0], k[1], k[3]) for k in done}
    left = {}
    for it in good:
        missing = [m for m in methods if any((it["image_id"], m.key, p) not in done_pairs for p in protocols)]
        if missing:
            left[it["image_id"]] = missing
    return left


def _explain_batch(good, todo, loaded: LoadedModel, target: Target, protocols, device, split, class_names,
                   writer: StoreWriter, key: str, images_done: set, skip_rows: list[dict]) -> tuple[int, float]:
    items = [it for it in good if it["image_id"] in todo]
    methods: list[Method] = []
    for it in items:
        for m in todo[it["image_id"]]:
            if m.key not in {x.key for x in methods}:
                methods.append(m)
    x = torch.stack([it["x"] for it in items]).to(device, non_blocking=True)
    requires = set().union(*(m.requires for m in methods))
    t0 = time.perf_counter()
    cap = capture(loaded.model, x, requires, target=target)
    t_cap = time.perf_counter() - t0

    probs = None if loaded.headless else torch.softmax(cap.outputs, dim=-1)
    top = probs.topk(min(5, probs.shape[1]), dim=-1) if probs is not None else None
    metric_rows, heatmap_rows, image_rows = [], [], []
    for b, it in enumerate(items):
        if it["image_id"] in images_done:
            continue
        image_rows.append({
            "image_id": it["image_id"], "split": split, "width": it["width"], "height": it["height"],
            "gt_classes": [_name(class_names, c) for c in it["classes"]],
            "top_classes": top.indices[b].tolist() if top is not None else [],
            "top_labels": [loaded.label(c) for c in top.indices[b].tolist()] if top is not None else [],
            "top_probs": top.values[b].tolist() if top is not None else [],
            "thumbnail": it["thumbnail"], "mask_png": it["mask_png"], "cue_png": it["cue_png"],
            "meta": json.dumps(it["meta"], default=str) if it["meta"] else None,
        })
    for m in methods:
        t1 = time.perf_counter()
        try:
            maps = m(cap).float()
            if maps.shape[0] != len(items) or maps.ndim != 3:
                raise RuntimeError(f"returned shape {tuple(maps.shape)}, expected [{len(items)}, h, w]")
        except Exception as exc:  # one failing method must not lose the others' work
            skip_rows += [{"image_id": it["image_id"], "stage": f"method:{m.key}", "reason": f"{type(exc).__name__}: {exc}"}
                          for it in items]
            continue
        maps_np = maps.detach().cpu().numpy()
        seconds = (time.perf_counter() - t1) / len(items)
        for b, it in enumerate(items):
            if m not in todo[it["image_id"]]:
                continue
            tc = int(cap.target_class[b])
            pred = int(cap.outputs[b].argmax()) if probs is not None else None
            common = {
                "image_id": it["image_id"], "split": split, "model": loaded.name, "method": m.key,
                "target_kind": target.kind, "target_class": tc if tc >= 0 else None,
                "target_label": loaded.label(tc) if tc >= 0 else target.kind,
                "target_value": float(cap.target_value[b]), "pred_class": pred,
                "pred_label": loaded.label(pred) if pred is not None else None,
                "confidence": float(probs[b, pred]) if probs is not None else None,
                "gt_classes": ",".join(_name(class_names, c) for c in it["classes"]), "seconds": seconds,
                "image_group": it["meta"].get("group"),
            }
            for protocol in protocols:
                metric_rows.append({**common, "protocol": protocol,
                                    **score(maps_np[b], it["mask"], protocol, extra_masks=it["extra_masks"])})
            heatmap_rows.append({"image_id": it["image_id"], "method": m.key, "target_kind": target.kind,
                                 "target_class": common["target_class"], "height": maps_np.shape[1],
                                 "width": maps_np.shape[2], "data": encode_heatmap(maps_np[b])})
    writer.write_skips(key, skip_rows)
    writer.write_batch(key, {"heatmaps": heatmap_rows, "images": image_rows, "metrics": metric_rows})
    images_done.update(r["image_id"] for r in image_rows)
    return len(metric_rows), t_cap


def _name(class_names, c: int) -> str:
    return class_names[c] if 0 <= c < len(class_names) else f"class_{c}"

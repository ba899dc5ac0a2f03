"""The batch job: images → model → capture → methods → metrics → store, resumable, one batch at a time.

For each batch the runner asks every method what it ``requires``, runs one capture that provides the union
(one forward, and only the backward passes some method needs), hands the same captured tensors to every
method, scores each map under every protocol, and commits the batch's rows as one set of part files.
Work already committed for the same run (same config hash) is skipped, row key by row key (image, method,
explained target, protocol: see :class:`_Done`), so a rerun into the same ``--out`` computes exactly the
missing rows, neither repeating work nor duplicating rows.

What is explained: by default one target per image (``--target``, top-1 for a classifier), one capture per
batch. With ``explain="present"`` the ``clean`` protocol instead explains every VOC class present in the
image (target: log-sum-exp of the logits of the ImageNet classes mapped to it, see
:mod:`compute.data.classmap`), one row per present class; that needs one capture per distinct target set, i.e.
capture ``r`` explains each image's ``r``-th present class (images with fewer classes sit it out; on a rerun,
the ``r``-th class still missing), plus the top-1 capture when ``report`` is also asked for.
``min_confidence`` drops images whose top-1 probability is not above it before any capture (one
gradient-free forward). ``faithfulness`` adds deletion/insertion curves
(:mod:`compute.metrics.faithfulness`) for every map, i.e. per capture (once per explained class with
``explain="present"``), timed separately in the run manifest (``timings.faithfulness_seconds``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import queue
import re
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from compute.capture import capture
from compute.data.classmap import ClassMap, classmap_for
from compute.data.voc import VOC_CLASSES, SampleError
from compute.methods import Method, parse_methods
from compute.metrics import PROTOCOLS
from compute.metrics.batched import score_image
from compute.metrics.faithfulness import BASELINES, deletion_insertion, probability_score, value_score
from compute.models import LoadedModel, Preprocess, load_model
from compute.targets import Target, resolve_target, voc_logsumexp
from store.schema import THUMBNAIL_SIZE, check_min_confidence, encode_heatmap
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
    shard: str | None = None  # "i/n": every n-th image from the i-th; default from RANK/WORLD_SIZE if set
    precision: str = "fp32"  # "bf16": capture under bfloat16 autocast (methods still compute in float32)
    explain: str = "top1"  # "top1": the --target; "present": clean explains every present VOC class
    min_confidence: float | None = None  # only images whose top-1 probability is above it
    faithfulness: bool = False
    faithfulness_steps: int = 10
    faithfulness_baseline: str = "zero"

    def identity(self) -> dict:
        """What makes two runs' rows comparable; its hash is the run id (methods, limits and the confidence
        filter are not part of it: they choose which rows are computed, not their values)."""
        ident = {"model": self.model, "weights": _fingerprint(self.weights), "random_init": self.random_init,
                 "seed": self.seed if self.random_init else None, "img_size": self.img_size, "split": self.split,
                 "protocols": sorted(self.protocols), "target": self.target}
        # only when not the default, so that the run ids of earlier stores stay what they were
        if self.explain != "top1":
            ident["explain"] = self.explain
        if self.target and self.target.startswith("cosine:"):  # the reference decides the values
            ref = self.target.split(":", 1)[1]
            ident["target"] = f"cosine:{_fingerprint(ref)}" if ref != "mean" else "cosine:mean"
            if ref == "mean":
                ident["limit"] = self.limit
        if self.precision != "fp32":
            ident["precision"] = self.precision
        if self.faithfulness:
            ident["faithfulness"] = {"steps": self.faithfulness_steps, "baseline": self.faithfulness_baseline}
        return ident

    def run_id(self) -> str:
        return hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]


def _fingerprint(path: str | None) -> str | None:
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
    faithfulness_seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage, "waiting for images" included
    notes: list[str] = field(default_factory=list)  # e.g. why the class-aware protocol does not apply

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        faith = f", {self.faithfulness_seconds:.1f} s of it faithfulness" if self.faithfulness_seconds else ""
        return (f"{self.images} images × {len(self.methods)} methods in {self.seconds:.1f} s "
                f"({self.images_per_second:.2f} img/s{faith}); {self.rows} metric rows, {self.skipped} skipped, "
                f"{self.already_done} already done → {self.out} (run {self.run_id})"
                + ("\ntime: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items() if v >= 0.05)
                   if self.images and self.stages else "")
                + "".join(f"\nnote: {n}" for n in self.notes))


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timed stage's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_device(device: str) -> str:
    """``--device`` normalised (auto, cpu, mps, cuda, cuda:<i>), or a ValueError naming the choices; the spelling
    only: whether this machine has it is :func:`resolve_device`'s question."""
    spec = device.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", spec):
        raise ValueError(f"unknown --device {device!r}; choose auto, cpu, cuda or cuda:<i>")
    return spec


def resolve_device(device: str) -> torch.device:
    """The torch device ``--device`` names on this machine, or a ValueError saying what it lacks (torch's own
    errors for these are tracebacks, or come only at the first tensor moved)."""
    spec = parse_device(device)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps asked for, but this PyTorch has no usable MPS (Apple GPU) backend; "
                         "use --device cpu or auto")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} asked for, but no CUDA device is visible; use --device cpu or auto")
        index = torch.device(spec).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device(spec)


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


def collate(items: list[dict]) -> dict:
    """Stack the good items' inputs into one tensor (in the worker process, so that the DataLoader can pin
    it); each good item keeps its ``row`` in that tensor."""
    xs = []
    for it in items:
        if not it["error"]:
            it["row"] = len(xs)
            xs.append(it.pop("x"))
    return {"items": items, "x": torch.stack(xs) if xs else None}


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


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` (0-based) -> (i, n); ``None`` -> the torchrun / SLURM environment's rank, or no sharding."""
    if spec:
        try:
            i, n = (int(v) for v in spec.split("/"))
        except ValueError:
            raise ValueError(f"bad --shard {spec!r}: write i/n with 0 <= i < n, e.g. 0/4") from None
        if not 0 <= i < n:
            raise ValueError(f"bad --shard {spec!r}: need 0 <= i < n")
        return i, n
    env = os.environ
    if env.get("WORLD_SIZE", "1") not in ("", "1") and env.get("RANK"):  # torchrun
        return parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
    if env.get("SLURM_ARRAY_TASK_COUNT", "1") not in ("", "1") and env.get("SLURM_ARRAY_TASK_ID"):
        return slurm_array_shard(env)
    return None


def slurm_array_shard(env) -> tuple[int, int]:
    """The shard of a SLURM array task: its position among the array's task ids, of SLURM_ARRAY_TASK_COUNT.

    Array ids need not start at 0 nor be consecutive (``--array=1-4`` gives ids 1..4, ``--array=0-6:2`` gives
    0, 2, 4, 6): the position is ``(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP``
    (MIN 0 and STEP 1 when not set). An array that is no such range (``--array=1,5,7``, or a resubmission of
    some tasks) has no position that SLURM tells; that is refused, with a pointer to ``--shard``."""
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
             "SLURM_ARRAY_TASK_STEP")
    try:
        task, count, low, high, step = (int(env[k]) if env.get(k, "") != "" else None for k in names)
    except ValueError:
        raise ValueError("the SLURM_ARRAY_TASK_* environment holds a value that is not a whole number: "
                         + ", ".join(f"{k}={env.get(k)!r}" for k in names if k in env)) from None
    low = 0 if low is None else low
    step = 1 if step is None else step
    pos, rest = divmod(task - low, step) if step > 0 else (-1, 1)
    if rest or not 0 <= pos < count or (high is not None and high != low + (count - 1) * step):
        described = ", ".join(f"{k.removeprefix('SLURM_ARRAY_TASK_')}={env[k]}" for k in names if env.get(k))
        raise ValueError(f"cannot tell this SLURM array task's shard from its environment ({described}): the "
                         f"array ids are not the range MIN, MIN+STEP, ... of COUNT ids (e.g. --array=1,5,7, or a "
                         f"resubmission of single tasks); pass --shard i/n explicitly, e.g. "
                         f"--shard \"<0-based position>/<number of shards>\"")
    return pos, count


def _shard_device(device: str) -> str:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and os.environ.get("LOCAL_RANK"):
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


class Job:
    """One run's shared state — model, methods, target, class map, writer, committed keys — and
    :meth:`process`, which explains, scores and commits one batch of prepared items.

    The local loop (:func:`run`) and the Ray backend (:mod:`compute.distributed`) both drive a Job.
    """

    def __init__(self, config: RunConfig, dataset=None, loaded: LoadedModel | None = None,
                 class_names: tuple[str, ...] | None = None, writer: StoreWriter | None = None,
                 background: bool = False):
        self.t_start = time.perf_counter()
        self.waiting_seconds = 0.0  # for the next batch of decoded images (set by the loop that feeds the job)
        self.config = config
        self.methods = parse_methods(config.methods)
        check_config(config)
        self.shard = parse_shard(config.shard)
        self.device = resolve_device(_shard_device(config.device))
        if dataset is None:
            from compute.data.voc import VOCSegmentation

            if not config.voc_root:
                raise ValueError("no images: pass --voc-root (a VOCdevkit folder)")
            dataset = VOCSegmentation(config.voc_root, split=config.split, limit=config.limit)
        self.dataset = dataset
        self.class_names = tuple(class_names or getattr(dataset, "class_names", None) or VOC_CLASSES)
        if loaded is None:
            loaded = load_model(config.model, weights=config.weights, random_init=config.random_init,
                                img_size=config.img_size, device=self.device, seed=config.seed)
        else:
            loaded.model.to(self.device)
        self.loaded = loaded
        self.prepared = _Prepared(dataset, loaded.preprocess())
        target = resolve_target(config.target, loaded, images=self._all_batches, batch_size=config.batch_size)
        cmap, cmap_reason = classmap_for(loaded.num_classes, loaded.labels, self.class_names)
        _check_options(config, loaded, cmap, cmap_reason)

        self.run_id = config.run_id()
        self.writer = writer if writer is not None else StoreWriter(config.out, self.run_id)
        self.summary = RunSummary(run_id=self.run_id, out=str(config.out), methods=[m.key for m in self.methods])
        if cmap is None:
            self.summary.notes.append(cmap_reason)
        self.ctx = _Context(config=config, loaded=loaded, target=target, device=self.device,
                            class_names=self.class_names, cmap=cmap, writer=self.writer,
                            images_done=self.writer.images_done(), done=_Done(self.writer.done_keys()),
                            background=_Background() if background else None)
        ident = config.identity()
        self.writer.write_manifest({
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": {**asdict(config), **ident, "weights": loaded.weights,
                       "input_size": list(loaded.input_size)},
            "versions": versions(), "methods": self.summary.methods, "class_names": list(self.class_names),
            "target": {"spec": target.spec, "kind": target.kind},
            "class_map": ({"name": cmap.name, "version": cmap.version} if cmap is not None
                          else {"unsupported": cmap_reason}),
            # what this session chose that the run id does not fix (methods, limit, batch size, ...)
            "sessions": [{"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "methods": self.summary.methods,
                          "device": str(self.device), "shard": list(self.shard) if self.shard else None,
                          "config": {k: v for k, v in asdict(config).items() if k not in ident}}],
        })

    def _all_batches(self):
        """Preprocessed batches of every image (only iterated for a ``cosine:mean`` reference)."""
        batch = []
        for i in range(len(self.prepared)):
            it = self.prepared[i]
            if not it["error"]:
                batch.append(it["x"])
            if len(batch) == self.config.batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)

    @property
    def indices(self) -> list[int]:
        """This process's images: all, or every n-th from i for ``--shard i/n`` (deterministic)."""
        every = list(range(len(self.dataset)))
        return every[self.shard[0]::self.shard[1]] if self.shard else every

    def process(self, batch: dict) -> None:
        """Explain, score and commit one :func:`collate`d batch (updates :attr:`summary`)."""
        summary, config = self.summary, self.config
        items = batch["items"]
        skips = [{"image_id": it["image_id"], "stage": "load", "reason": it["error"]} for it in items if it["error"]]
        good = [it for it in items if not it["error"]]
        summary.skipped += len(skips)
        todo = _work_left(good, self.methods, config, self.ctx.cmap, self.ctx.done, self.ctx.images_done)
        # The part name says exactly what the batch computes, so a rerun that finishes part of a batch (one
        # method failed, a background commit was lost) writes new parts instead of replacing committed ones,
        # and a retried batch replaces its own.
        work = [it["image_id"] for it in items] + summary.methods + _work_names(todo, config)
        key = hashlib.sha1("|".join(work).encode()).hexdigest()[:16]
        if todo:
            x = batch["x"].to(self.device, non_blocking=True)
            rows, filtered = _explain_batch(good, todo, x, self.ctx, key, skips, self.methods)
            summary.images += len(todo) - filtered
            summary.skipped += filtered
            summary.rows += rows
        else:
            self.writer.write_skips(key, skips)
        summary.already_done += len(good) - len(todo)
        if self.ctx.background is not None:
            summary.rows += self.ctx.background.drain(self.ctx, block=False)

    def close(self) -> None:
        """Stop the background without waiting, after an error or an interrupt (see :meth:`_Background.close`):
        the process can exit at once; committed work stays, what the background had not committed is redone by
        a rerun."""
        if self.ctx.background is not None:
            self.ctx.background.close()

    def finish(self) -> RunSummary:
        summary = self.summary
        if self.ctx.background is not None:
            summary.rows += self.ctx.background.drain(self.ctx, block=True)
            self.ctx.background.close()
        summary.seconds = time.perf_counter() - self.t_start
        summary.faithfulness_seconds = self.ctx.faithfulness_seconds
        summary.stages = {"waiting for images": self.waiting_seconds, **self.ctx.stages()}
        write_report(self.writer, summary, self.shard, self.ctx.capture_seconds)
        return summary


def write_report(writer: StoreWriter, summary: RunSummary, shard: tuple[int, int] | None,
                 capture_seconds: float) -> dict:
    """Counts and timings of a finished session: appended to the run manifest's ``reports``, whose run-level
    ``counts``/``timings`` then describe the whole run (:meth:`store.writer.StoreWriter.write_report`); a
    shard also writes them to its own file. Returns the session's report."""
    timings = {"total_seconds": round(summary.seconds, 3), "capture_seconds": round(capture_seconds, 3),
               "faithfulness_seconds": round(summary.faithfulness_seconds, 3),
               "images_per_second": round(summary.images_per_second, 3)}
    if summary.stages:
        timings["stages"] = {k: round(v, 3) for k, v in summary.stages.items()}
    report = {"counts": {"images": summary.images, "skipped": summary.skipped,
                         "already_done": summary.already_done, "rows": summary.rows},
              "timings": timings}
    if shard:
        writer.write_shard_report(f"shard-{shard[0]}-of-{shard[1]}", report)
    session = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "methods": summary.methods,
               "shard": list(shard) if shard else None, **report}
    writer.write_report(session)
    return report


def run(config: RunConfig, dataset=None, loaded: LoadedModel | None = None,
        progress: Callable[[int, int], None] | None = None, class_names: tuple[str, ...] | None = None) -> RunSummary:
    """Run the job described by ``config`` on this process's shard; ``dataset``/``loaded`` may be given to
    bypass VOC / timm loading, ``class_names`` to name a data source's classes (default: the source's own, or
    VOC's). ``progress(done_images, total_images)`` is called after every batch.

    Decoding and resizing happen in DataLoader worker processes; batches are pinned and copied without
    blocking when the device is a GPU. Methods with a CPU-bound tail (attention flow's max-flows) finish in
    the background while the device explains the next batches; their rows are committed as they finish.
    """
    job = Job(config, dataset=dataset, loaded=loaded, class_names=class_names, background=True)
    workers = config.num_workers if config.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    indices = job.indices
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(job.prepared, indices), batch_size=config.batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=job.device.type == "cuda", persistent_workers=False)
    seen = 0
    batches = iter(loader)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            job.waiting_seconds += time.perf_counter() - t0
            if batch is None:
                break
            job.process(batch)
            seen += len(batch["items"])
            if progress:
                progress(seen, len(indices))
        return job.finish()
    except BaseException:
        job.close()
        raise


TOP = None  # the unit of work of the ``--target`` pass (top-1 by default); a present VOC class is an ``int``


class _Done:
    """The committed ``(image_id, method, target_class, protocol)`` keys of a run, asked per unit of work.

    A unit is what one capture explains for one image: the ``--target`` pass (:data:`TOP`), whose class is
    only known after the forward pass (the model's top-1) but is one per image and method, so any committed
    target counts; or, with ``explain="present"``, one present VOC class, which is known before any forward
    (from the mask) and is matched exactly — so the class explained is part of done-ness.
    """

    def __init__(self, keys=()):
        self.exact: set[tuple] = set()
        self.any_target: set[tuple] = set()
        self.add(keys)

    def add(self, keys) -> None:
        for image_id, method, target_class, protocol in keys:
            self.exact.add((image_id, method, target_class, protocol))
            self.any_target.add((image_id, method, protocol))

    def add_rows(self, rows: list[dict]) -> None:
        self.add((r["image_id"], r["method"], r["target_class"], r["protocol"]) for r in rows)

    def has(self, image_id: str, method: str, unit, protocol: str) -> bool:
        if unit is TOP:
            return (image_id, method, protocol) in self.any_target
        return (image_id, method, unit, protocol) in self.exact


def _top_protocols(config: RunConfig) -> list[str]:
    """The protocols the ``--target`` pass is scored under (with ``explain="present"`` clean has passes of its
    own, one per present class)."""
    return [p for p in config.protocols if config.explain == "top1" or p != "clean"]


def _units(it: dict, config: RunConfig, cmap: ClassMap | None) -> dict:
    """unit -> the protocols it is scored under, for one image (see :class:`_Done`)."""
    units = {}
    top = _top_protocols(config)
    if top:
        units[TOP] = tuple(top)
    if config.explain == "present":
        for v in cmap.explainable(it["classes"]):
            units[v] = ("clean",)
    return units


def _work_left(good: list[dict], methods: list[Method], config: RunConfig, cmap: ClassMap | None, done: _Done,
               images_done: set) -> dict[str, dict]:
    """image_id -> {unit -> {method key -> protocols still missing a committed row}}: exactly the rows a run
    still owes, per (image, method, target, protocol). An image with nothing left but no committed ``images``
    row is listed with no units, for that row."""
    left = {}
    for it in good:
        image_id, units = it["image_id"], {}
        for unit, protocols in _units(it, config, cmap).items():
            ms = {}
            for m in methods:
                missing = tuple(p for p in protocols if not done.has(image_id, m.key, unit, p))
                if missing:
                    ms[m.key] = missing
            if ms:
                units[unit] = ms
        if units or image_id not in images_done:
            left[image_id] = units
    return left


def _work_names(todo: dict[str, dict], config: RunConfig) -> list[str]:
    """The work of a batch as sorted strings, for its part name (for the ``--target`` pass with every protocol
    left: ``image:method,method``, the names earlier versions gave such a batch)."""
    top = tuple(_top_protocols(config))
    names = []
    for image_id, units in todo.items():
        if not units:
            names.append(f"{image_id}:")
        for unit, ms in units.items():
            tag = "" if unit is TOP else f"@{unit}"
            full = top if unit is TOP else ("clean",)
            names.append(f"{image_id}{tag}:" + ",".join(k if ps == full else f"{k}[{'+'.join(ps)}]"
                                                      for k, ps in ms.items()))
    return sorted(names)


@dataclass
class _Context:
    """What every batch of one run shares."""

    config: RunConfig
    loaded: LoadedModel
    target: Target
    device: torch.device
    class_names: tuple[str, ...]
    cmap: ClassMap | None
    writer: StoreWriter
    images_done: set
    done: _Done = field(default_factory=_Done)  # committed keys (those this session commits added)
    capture_seconds: float = 0.0
    faithfulness_seconds: float = 0.0
    methods_seconds: float = 0.0
    scoring_seconds: float = 0.0
    writing_seconds: float = 0.0
    background: "_Background | None" = None
    background_seconds: float = 0.0       # deferred method work, run alongside the main loop
    background_wait_seconds: float = 0.0  # main loop blocked on it

    def stages(self) -> dict[str, float]:
        """Seconds spent per stage of the batch loop (GPU work included: each stage ends with a sync).
        ``in the background`` ran alongside the others; only ``waiting for the background`` added to the run."""
        return {"capture": self.capture_seconds, "methods": self.methods_seconds, "scoring": self.scoring_seconds,
                "faithfulness": self.faithfulness_seconds, "writing": self.writing_seconds,
                "in the background": self.background_seconds,
                "waiting for the background": self.background_wait_seconds}


@dataclass
class _Pass:
    """One capture: a target over a subset of the batch's images, scored under some protocols."""

    target: Target
    rows: list[int]                 # positions in the batch's item list
    protocols: list[str]
    voc: list[int] | None = None    # VOC class explained per image (``voc_lse`` passes only)

    def unit(self, j: int):
        """The unit of work (see :class:`_Done`) of the pass's ``j``-th image."""
        return self.voc[j] if self.voc is not None else TOP


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
    if config.faithfulness:
        if config.faithfulness_baseline not in BASELINES:
            raise ValueError(f"unknown faithfulness baseline {config.faithfulness_baseline!r}; "
                             f"choose one of {', '.join(BASELINES)}")
        if config.faithfulness_steps < 1:
            raise ValueError("--faithfulness-steps must be at least 1")


def _check_options(config: RunConfig, loaded: LoadedModel, cmap: ClassMap | None, reason: str | None) -> None:
    """The checks that need the loaded model and its class map."""
    if config.explain == "present" and cmap is None:
        raise ValueError(f"--explain present needs the ImageNet-1k → VOC class map, which this run cannot use: "
                         f"{reason}")
    if config.min_confidence is not None and loaded.headless:
        raise ValueError("--min-confidence needs class probabilities; this model is headless")


def _ground_truth(protocol: str, present: list[int], explained: int | None, voc: int | None,
                  cmap: ClassMap | None, class_names) -> tuple[list[int] | None, str | None]:
    """(classes of the object mask or None for all objects, ``gt_target``) of one row.

    ``report``: all objects. ``clean``: the VOC class explained (``voc_lse``) or the VOC class the explained
    head class maps to; an empty list (row not scored) when that class has no pixel in the image or the
    explained class maps to no VOC class; all objects only when no class map applies (non-ImageNet-1k head,
    headless target, non-VOC data), as there is then no way to tell which object the map is about.
    """
    everything = ",".join(_name(class_names, c) for c in present)
    if protocol == "report":
        return None, everything
    if voc is not None:
        return [voc], _name(class_names, voc)
    if cmap is None or explained is None:
        return None, everything
    mapped = cmap.voc_of(explained)
    if mapped is None or mapped not in present:
        return [], None
    return [mapped], _name(class_names, mapped)


def _explain_batch(good, todo, x_batch: torch.Tensor, ctx: _Context, key: str, skip_rows: list[dict],
                   all_methods: list[Method]) -> tuple[int, int]:
    """Explain, score and commit one batch's work left (``todo``, see :func:`_work_left`); returns (metric rows
    written, images dropped by the confidence filter)."""
    config, loaded, cmap, class_names = ctx.config, ctx.loaded, ctx.cmap, ctx.class_names
    items = [it for it in good if it["image_id"] in todo]
    wanted = {k for units in todo.values() for ms in units.values() for k in ms}
    methods = [m for m in all_methods if m.key in wanted]
    x = x_batch[torch.tensor([it["row"] for it in items], device=x_batch.device)]
    requires = set().union(*(m.requires for m in methods))

    filtered = 0
    outputs: torch.Tensor | None = None
    if config.min_confidence is not None:
        with torch.inference_mode():
            outputs = loaded.model(x).float()
        conf = torch.softmax(outputs, dim=-1).max(dim=-1).values
        keep = [i for i in range(len(items)) if float(conf[i]) > config.min_confidence]
        for i in range(len(items)):
            if i not in keep:
                skip_rows.append({"image_id": items[i]["image_id"], "stage": "confidence",
                                  "reason": f"top-1 probability {float(conf[i]):.4f} is not above "
                                            f"--min-confidence {config.min_confidence}"})
        filtered = len(items) - len(keep)
        items, x, outputs = [items[i] for i in keep], x[keep], outputs[keep]
        if not items:
            ctx.writer.write_skips(key, skip_rows)
            return 0, filtered

    # One capture per target set, for the images that still owe rows of it: the --target pass, then (present)
    # pass r explains each image's r-th class still missing (the r-th present class in a run from scratch).
    passes: list[_Pass] = []
    top_rows = [i for i, it in enumerate(items) if TOP in todo[it["image_id"]]]
    if top_rows:
        passes.append(_Pass(ctx.target, top_rows, _top_protocols(config)))
    if config.explain == "present":
        per_item = [[u for u in todo[it["image_id"]] if u is not TOP] for it in items]
        for r in range(max((len(v) for v in per_item), default=0)):
            rows = [i for i, v in enumerate(per_item) if len(v) > r]
            vocs = [per_item[i][r] for i in rows]
            passes.append(_Pass(voc_logsumexp([cmap.indices_of(v) for v in vocs], vocs), rows, ["clean"], vocs))

    metric_rows, heatmap_rows = [], []
    covered = torch.full((len(items),), outputs is not None, dtype=torch.bool)  # whose logits are known
    for ps in passes:
        t0 = time.perf_counter()
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            cap = capture(loaded.model, x[ps.rows], requires, target=ps.target)
        sync_device(ctx.device)
        ctx.capture_seconds += time.perf_counter() - t0
        if outputs is None:
            outputs = torch.zeros(len(items), cap.outputs.shape[1])
        outputs[ps.rows] = cap.outputs.to(outputs.device, outputs.dtype)
        covered[ps.rows] = True
        metric_rows += _score_pass(ps, cap, items, todo, methods, ctx, skip_rows, heatmap_rows, key)
    if outputs is None or not bool(covered.all()):  # images no capture saw (no explainable class)
        with torch.inference_mode():
            full = loaded.model(x).float()
        outputs = full if outputs is None else torch.where(covered[:, None].to(full.device), outputs.to(full.device), full)

    image_rows = _image_rows(items, outputs, loaded, config.split, class_names, ctx.images_done)
    t0 = time.perf_counter()
    ctx.writer.write_skips(key, skip_rows)
    ctx.writer.write_batch(key, {"heatmaps": heatmap_rows, "images": image_rows, "metrics": metric_rows})
    ctx.writing_seconds += time.perf_counter() - t0
    ctx.images_done.update(r["image_id"] for r in image_rows)
    ctx.done.add_rows(metric_rows)
    return len(metric_rows), filtered


def _image_rows(items, outputs: torch.Tensor, loaded: LoadedModel, split, class_names, images_done) -> list[dict]:
    probs = None if loaded.headless else torch.softmax(outputs.float(), dim=-1)
    top = probs.topk(min(5, probs.shape[1]), dim=-1) if probs is not None else None
    rows = []
    for b, it in enumerate(items):
        if it["image_id"] in images_done:
            continue
        rows.append({
            "image_id": it["image_id"], "split": split, "width": it["width"], "height": it["height"],
            "gt_classes": [_name(class_names, c) for c in it["classes"]],
            "top_classes": top.indices[b].tolist() if top is not None else [],
            "top_labels": [loaded.label(c) for c in top.indices[b].tolist()] if top is not None else [],
            "top_probs": top.values[b].tolist() if top is not None else [],
            "thumbnail": it["thumbnail"], "mask_png": it["mask_png"], "cue_png": it["cue_png"],
            "meta": json.dumps(it["meta"], default=str) if it["meta"] else None,
        })
    return rows


def _faithfulness(ps: _Pass, cap, maps: dict[str, torch.Tensor], ctx: _Context) -> dict:
    """{method key: Curves} for one pass (timed into the context)."""
    t0 = time.perf_counter()
    loaded = ctx.loaded
    if ps.voc is not None:
        score_fn = probability_score([ctx.cmap.indices_of(v) for v in ps.voc], cap.outputs.shape[1])
    elif not loaded.headless and bool((cap.target_class >= 0).all()):
        score_fn = probability_score([[int(c)] for c in cap.target_class], cap.outputs.shape[1])
    else:
        score_fn = value_score(ps.target)
    curves = deletion_insertion(loaded.model, cap.input, maps, score_fn,
                                patch_size=tuple(loaded.model.patch_embed.patch_size),
                                steps=ctx.config.faithfulness_steps, baseline=ctx.config.faithfulness_baseline,
                                chunk=256 if ctx.device.type == "cuda" else 64)
    ctx.faithfulness_seconds += time.perf_counter() - t0
    return curves


@dataclass
class _PassOutputs:
    """What scoring needs of a capture besides the maps, on the CPU (one copy per pass, not a sync per row)."""

    logits: torch.Tensor           # [B, classes] float32
    target_class: list[int]
    target_value: list[float]

    @classmethod
    def of(cls, cap) -> "_PassOutputs":
        return cls(cap.outputs.detach().float().cpu(), [int(c) for c in cap.target_class.tolist()],
                   [float(v) for v in cap.target_value.detach().float().cpu().tolist()])


@dataclass
class _Later:
    """Some methods' maps of one pass, finished in the background: scored and committed as a part set of
    their own (``key``) once done."""

    key: str
    ps: _Pass
    outputs: _PassOutputs
    pass_items: list[dict]
    todo: dict
    jobs: dict[str, tuple[Method, Callable[[], torch.Tensor]]]


def _finish_jobs(jobs: dict[str, tuple[Method, Callable[[], torch.Tensor]]], stop=None) -> dict:
    """{method key: (method, map or the exception it raised, seconds)} (runs on a background thread; once
    ``stop`` is set it starts no further method: the result is then never committed)."""
    done = {}
    for key, (m, fn) in jobs.items():
        if stop is not None and stop.is_set():
            break
        t0 = time.perf_counter()
        try:
            result: torch.Tensor | Exception = fn().float()
        except Exception as exc:  # reported as skips when committed
            result = exc
        done[key] = (m, result, time.perf_counter() - t0)
    return done


class _Background:
    """Finishes deferred methods (:meth:`compute.methods.Method.deferred`, e.g. attention flow's max-flows,
    which run in the method's own process pool) while the main loop explains the next batches.

    Results are scored and committed on the main thread, oldest first, by :meth:`drain`; at most
    ``max_pending`` passes wait (each holds its CPU inputs), beyond that the main loop waits for the oldest.

    The work runs on daemon threads (not a ``ThreadPoolExecutor``, whose threads the interpreter joins at
    exit), so that an interrupted run exits without waiting for it; see :meth:`close`.
    """

    def __init__(self, max_pending: int = 3, workers: int = 2):
        self.pending: deque = deque()
        self.max_pending = max_pending
        self.workers = workers
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list = []
        self.busy = 0  # tasks running now
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def submit(self, later: _Later) -> None:
        if self.stop.is_set():
            raise RuntimeError("the background of this job was closed")
        if len(self.threads) < self.workers:  # started on first use, as a ThreadPoolExecutor does
            t = threading.Thread(target=self._work, name=f"vitlens-deferred-{len(self.threads)}", daemon=True)
            t.start()
            self.threads.append(t)
        fut: Future = Future()
        self.queue.put((fut, later.jobs))
        self.pending.append((later, fut))

    def _work(self) -> None:
        while True:
            task = self.queue.get()
            if task is None or self.stop.is_set():
                return
            fut, jobs = task
            if not fut.set_running_or_notify_cancel():
                continue
            with self.lock:
                self.busy += 1
            try:
                fut.set_result(_finish_jobs(jobs, self.stop))
            except BaseException as exc:  # _finish_jobs keeps a method's own errors; this is anything else
                fut.set_exception(exc)
            finally:
                with self.lock:
                    self.busy -= 1

    def drain(self, ctx: "_Context", block: bool) -> int:
        """Commit every finished pass (all of them when ``block``); returns the metric rows written."""
        rows = 0
        while self.pending and (block or self.pending[0][1].done() or len(self.pending) > self.max_pending):
            later, fut = self.pending.popleft()
            t0 = time.perf_counter()
            done = fut.result()
            ctx.background_wait_seconds += time.perf_counter() - t0
            rows += _commit_later(later, done, ctx)
        return rows

    def close(self) -> None:
        """Stop without waiting: queued passes are cancelled, no further method starts, and a task still
        running is abandoned — its thread is a daemon, and the max-flow worker processes it may be waiting
        for (:mod:`compute.layers.maxflow`'s pools, which the interpreter would wait for at exit) are
        terminated. Nothing committed is touched; what was pending is redone by a rerun. (An abandoned task
        that computes in its own thread, e.g. a max-flow falling back to one process after its pool went,
        goes on until it ends or the process exits; its result is dropped.)"""
        self.stop.set()
        for _, fut in self.pending:
            fut.cancel()
        self.pending.clear()
        for _ in self.threads:
            self.queue.put(None)
        with self.lock:
            busy = self.busy
        if busy:
            _terminate_max_flow_pools()


def _terminate_max_flow_pools() -> None:
    """Kill attention flow's max-flow worker processes, if that module was used (see :meth:`_Background.close`)."""
    import sys

    maxflow = sys.modules.get("compute.layers.maxflow")
    if maxflow is not None:
        maxflow.terminate_pools()


def _checked_map(out: torch.Tensor, n: int) -> torch.Tensor:
    """A method's output, refused unless it is ``[n, h, w]``."""
    if out.shape[0] != n or out.ndim != 3:
        raise RuntimeError(f"returned shape {tuple(out.shape)}, expected [{n}, h, w]")
    return out


def _method_skips(m: Method, ps: _Pass, items: list[dict], todo: dict, exc: BaseException,
                  class_names) -> list[dict]:
    """One skip row per image of the pass that needed ``m`` when it failed (the other methods' work is kept);
    for a present class's pass the reason names the class."""
    rows = []
    for j, it in enumerate(items):
        if m.key not in todo[it["image_id"]].get(ps.unit(j), {}):
            continue
        what = f" (explaining {_name(class_names, ps.voc[j])})" if ps.voc is not None else ""
        rows.append({"image_id": it["image_id"], "stage": f"method:{m.key}",
                     "reason": f"{type(exc).__name__}: {exc}{what}"})
    return rows


def _commit_later(later: _Later, done: dict, ctx: "_Context") -> int:
    skip_rows: list[dict] = []
    heatmap_rows: list[dict] = []
    maps: dict[str, tuple[Method, torch.Tensor, float]] = {}
    n = len(later.pass_items)
    for key_, (m, result, seconds) in done.items():
        ctx.background_seconds += seconds
        try:
            if isinstance(result, Exception):
                raise result
            maps[key_] = (m, _checked_map(result, n), seconds / n)
        except Exception as exc:
            skip_rows += _method_skips(m, later.ps, later.pass_items, later.todo, exc, ctx.class_names)
    rows = _rows_of(later.ps, later.outputs, later.pass_items, later.todo, maps, {}, ctx, heatmap_rows)
    t0 = time.perf_counter()
    ctx.writer.write_skips(later.key, skip_rows)
    ctx.writer.write_batch(later.key, {"heatmaps": heatmap_rows, "images": [], "metrics": rows})
    ctx.writing_seconds += time.perf_counter() - t0
    ctx.done.add_rows(rows)
    return len(rows)


def _score_pass(ps: _Pass, cap, items, todo, methods: list[Method], ctx: _Context, skip_rows: list[dict],
                heatmap_rows: list[dict], key: str) -> list[dict]:
    """Run the methods on one capture, score and return their rows; methods that can finish on the CPU
    (``Method.deferred``) are handed to the background when the job has one (not with faithfulness curves,
    which need the model and the input)."""
    pass_items = [items[i] for i in ps.rows]
    maps: dict[str, tuple[Method, torch.Tensor, float]] = {}
    jobs: dict[str, tuple[Method, Callable[[], torch.Tensor]]] = {}
    defer = ctx.background is not None and not ctx.config.faithfulness
    for m in methods:
        if not any(m.key in todo[it["image_id"]].get(ps.unit(j), {}) for j, it in enumerate(pass_items)):
            continue
        t1 = time.perf_counter()
        try:
            fn = m.deferred(cap) if defer else None
            if fn is not None:
                jobs[m.key] = (m, fn)
                out = None
            else:
                out = _checked_map(m(cap).float(), len(pass_items))
        except Exception as exc:  # one failing method must not lose the others' work
            skip_rows += _method_skips(m, ps, pass_items, todo, exc, ctx.class_names)
            continue
        sync_device(ctx.device)
        spent = time.perf_counter() - t1
        ctx.methods_seconds += spent
        if out is not None:
            maps[m.key] = (m, out.detach(), spent / len(pass_items))
    curves = _faithfulness(ps, cap, {k: v[1] for k, v in maps.items()}, ctx) if ctx.config.faithfulness and maps else {}
    outputs = _PassOutputs.of(cap)
    if jobs:
        later_key = hashlib.sha1(f"{key}|{ps.rows}|{ps.voc}|later|{','.join(jobs)}".encode()).hexdigest()[:16]
        ctx.background.submit(_Later(later_key, ps, outputs, pass_items, todo, jobs))
    return _rows_of(ps, outputs, pass_items, todo, maps, curves, ctx, heatmap_rows)


def _rows_of(ps: _Pass, outputs: _PassOutputs, pass_items, todo, maps: dict, curves: dict, ctx: _Context,
             heatmap_rows: list[dict]) -> list[dict]:
    """Metric rows (and, into ``heatmap_rows``, heatmap rows) of one pass's maps: every map of an image is
    scored against every protocol's ground truth at once, on the job's device."""
    loaded, cmap, class_names, split = ctx.loaded, ctx.cmap, ctx.class_names, ctx.config.split
    t0 = time.perf_counter()
    probs = None if loaded.headless else torch.softmax(outputs.logits, dim=-1)
    maps_np = {key_: out.cpu().numpy() for key_, (_, out, _) in maps.items()}
    rows = []
    for j, it in enumerate(pass_items):
        left = todo[it["image_id"]].get(ps.unit(j), {})  # method key -> protocols still owed
        keys = [key_ for key_ in maps if key_ in left]
        if not keys:
            continue
        tc = outputs.target_class[j]
        pred = int(outputs.logits[j].argmax()) if probs is not None else None
        voc = ps.voc[j] if ps.voc is not None else None
        target_class = voc if voc is not None else (tc if tc >= 0 else None)
        target_label = (_name(class_names, voc) if voc is not None
                        else loaded.label(tc) if tc >= 0 else ps.target.kind)
        explained = tc if (tc >= 0 and voc is None and ps.target.kind == "logit") else None
        truths = [(protocol, *_ground_truth(protocol, it["classes"], explained, voc, cmap, class_names))
                  for protocol in ps.protocols]
        scores = score_image([maps[key_][1][j] for key_ in keys], it["mask"],
                             [(protocol, gt_classes) for protocol, gt_classes, _ in truths],
                             cue=it["extra_masks"].get("cue"), device=ctx.device)
        for key_, per_request in zip(keys, scores):
            m, _, seconds = maps[key_]
            common = {
                "image_id": it["image_id"], "split": split, "model": loaded.name, "method": m.key,
                "target_kind": ps.target.kind, "target_class": target_class, "target_label": target_label,
                "target_value": outputs.target_value[j], "pred_class": pred,
                "pred_label": loaded.label(pred) if pred is not None else None,
                "confidence": float(probs[j, pred]) if probs is not None else None,
                "gt_classes": ",".join(_name(class_names, c) for c in it["classes"]), "seconds": seconds,
                "image_group": it["meta"].get("group"),
                "correct": cmap.correct(pred, it["classes"]) if cmap is not None and pred is not None else None,
            }
            if key_ in curves:
                common["deletion_auc"] = float(curves[key_].deletion_auc[j])
                common["insertion_auc"] = float(curves[key_].insertion_auc[j])
            for (protocol, _, gt_target), scored in zip(truths, per_request):
                if protocol in left[key_]:  # never a row that is already committed
                    rows.append({**common, "protocol": protocol, "gt_target": gt_target, **scored})
            if len(left[key_]) < len(ps.protocols):
                continue  # the map's heatmap row was committed with its other protocols' rows
            heatmap = maps_np[key_][j]
            heatmap_rows.append({"image_id": it["image_id"], "method": m.key, "target_kind": ps.target.kind,
                                 "target_class": target_class, "height": heatmap.shape[0],
                                 "width": heatmap.shape[1], "data": encode_heatmap(heatmap)})
    ctx.scoring_seconds += time.perf_counter() - t0
    return rows


def _name(class_names, c: int) -> str:
    return class_names[c] if 0 <= c < len(class_names) else f"class_{c}"

"""One run: a :class:`Job` holds its shared state and explains, scores and commits one batch at a time;
:func:`run` feeds it this process's images through a DataLoader."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from compute.children import end_with_parent
from compute.data.classmap import classmap_for
from compute.data.voc import VOC_CLASSES
from compute.methods import check_methods_for_model, parse_methods
from compute.models import LoadedModel, load_model
from compute.runner.background import Background
from compute.runner.config import RunConfig, check_config, check_model_options, versions
from compute.runner.context import RunContext
from compute.runner.devices import parse_shard, resolve_device, shard_device, shard_indices
from compute.runner.explain import commit_deferred, explain_batch
from compute.runner.inputs import DecodedImages, collate
from compute.runner.resume import CommittedKeys, part_key, work_left
from compute.runner.rows import BatchRows
from compute.runner.variants import committed_variant_keys, partner_reader
from compute.targets import resolve_target
from store.writer import StoreWriter


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
    map_skips: dict[str, int] = field(default_factory=dict)  # method -> images it made no scored map for

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        faith = f", {self.faithfulness_seconds:.1f} s of it faithfulness" if self.faithfulness_seconds else ""
        return (f"{self.images} images × {len(self.methods)} methods in {self.seconds:.1f} s "
                f"({self.images_per_second:.2f} img/s{faith}); {self.rows} metric rows, {self.skipped} skipped, "
                f"{self.already_done} already done → {self.out} (run {self.run_id})"
                + (f"\nskipped maps: {', '.join(f'{m} on {n} image(s)' for m, n in sorted(self.map_skips.items()))} "
                   "(the skips table says why: vitlens dashboard, Leaderboard)" if self.map_skips else "")
                + ("\ntime: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items() if v >= 0.05)
                   if self.images and self.stages else "")
                + "".join(f"\nnote: {n}" for n in self.notes))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Job:
    """One run's shared state — model, methods, target, class map, writer, committed keys — and
    :meth:`process`, which explains, scores and commits one batch of decoded items.

    The local loop (:func:`run`) and the Ray backend (:mod:`compute.distributed`) both drive a Job: they call
    :meth:`write_manifest` when the run starts, :meth:`process` per batch, then :meth:`finish` (or
    :meth:`close` after an error). ``background``: finish deferred methods on background threads.
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
        self.device = resolve_device(shard_device(config.device))
        self.dataset = dataset if dataset is not None else _voc_dataset(config)
        self.class_names = tuple(class_names or getattr(self.dataset, "class_names", None) or VOC_CLASSES)
        self.loaded = self._model(loaded)
        partner_of = (partner_reader(self._whole_split(dataset), self.loaded.preprocess(), self.class_names,
                                     config.seed) if config.counterfactuals else None)
        self.decoded = DecodedImages(self.dataset, self.loaded.preprocess(), partner_of)
        target = resolve_target(config.target, self.loaded, images=lambda: self.decoded.batches(config.batch_size),
                                batch_size=config.batch_size)
        cmap, self.cmap_reason = classmap_for(self.loaded.num_classes, self.loaded.labels, self.class_names)
        check_model_options(config, self.loaded, cmap, self.cmap_reason)
        check_methods_for_model(self.methods, self.loaded)  # option ranges against this model, before any work

        self.run_id = config.run_id()
        # a writer of its own claims this process's images of the run (StoreBusy names another live writer),
        # then repairs damaged batches: their keys are owed again
        self.writer = writer if writer is not None else StoreWriter(config.out, self.run_id, claim_shard=self.shard)
        self.summary = RunSummary(run_id=self.run_id, out=str(config.out), methods=[m.key for m in self.methods])
        if cmap is None:
            self.summary.notes.append(self.cmap_reason)
        self.summary.notes += [f"damaged, removed and recomputed: {p}" for p in self.writer.repaired]
        self.ctx = RunContext(config=config, loaded=self.loaded, target=target, device=self.device,
                              class_names=self.class_names, cmap=cmap, writer=self.writer,
                              images_done=self.writer.images_done(), done=CommittedKeys(self.writer.done_keys()),
                              background=Background() if background else None)
        self.ctx.done.add(committed_variant_keys(config.out, self.run_id))

    def _whole_split(self, given):
        """The images ``mixed_rand`` partners are drawn from: the whole split, whatever ``--limit`` and
        ``--shard`` take (a data source given by the caller is taken as the whole split)."""
        if given is None and self.config.limit:
            return _voc_dataset(replace(self.config, limit=None))
        return self.dataset

    def _model(self, loaded: LoadedModel | None) -> LoadedModel:
        """The given model moved to the job's device, or the configured one loaded there."""
        config = self.config
        if loaded is None:
            return load_model(config.model, weights=config.weights, random_init=config.random_init,
                              img_size=config.img_size, device=self.device, seed=config.seed)
        loaded.model.to(self.device)
        return loaded

    def write_manifest(self) -> None:
        """Record this session in the run manifest (``runs/<run_id>.json``): the run's identity and what it
        explains, and this session's own choices (methods, limit, batch size, device, shard, ...)."""
        config, loaded, cmap, target = self.config, self.loaded, self.ctx.cmap, self.ctx.target
        ident = config.identity()
        self.writer.write_manifest({
            "created": _now(),
            "config": {**asdict(config), **ident, "weights": loaded.weights, "input_size": list(loaded.input_size)},
            "versions": versions(), "methods": self.summary.methods, "class_names": list(self.class_names),
            "target": {"spec": target.spec, "kind": target.kind},
            "class_map": ({"name": cmap.name, "version": cmap.version} if cmap is not None
                          else {"unsupported": self.cmap_reason}),
            # what this session chose that the run id does not fix (methods, limit, batch size, ...)
            "sessions": [{"started": _now(), "methods": self.summary.methods,
                          "device": str(self.device), "shard": list(self.shard) if self.shard else None,
                          "config": {k: v for k, v in asdict(config).items() if k not in ident}}],
        })

    @property
    def indices(self) -> list[int]:
        """This process's images: all, or every n-th from i for ``--shard i/n`` (deterministic)."""
        return shard_indices(len(self.dataset), self.shard)

    def process(self, batch: dict) -> None:
        """Explain, score and commit one :func:`collate`d batch (updates :attr:`summary`)."""
        summary, ctx = self.summary, self.ctx
        items = batch["items"]
        good = [it for it in items if not it["error"]]
        todo = work_left(good, self.methods, self.config, ctx.cmap, ctx.done, ctx.images_done)
        rows = BatchRows(part_key(items, summary.methods, todo, self.config),
                         skips=[{"image_id": it["image_id"], "stage": "load", "reason": it["error"]}
                                for it in items if it["error"]])
        summary.skipped += len(rows.skips)
        if todo:
            x = batch["x"].to(self.device, non_blocking=True)
            filtered = explain_batch(good, todo, x, ctx, rows, self.methods)
            summary.images += len(todo) - filtered
            summary.skipped += filtered
        summary.rows += rows.commit(ctx)
        summary.already_done += len(good) - len(todo)
        if ctx.background is not None:
            summary.rows += ctx.background.drain(self._commit_deferred, block=False)

    def _commit_deferred(self, deferred, finished) -> int:
        return commit_deferred(deferred, finished, self.ctx)

    def close(self) -> None:
        """Stop the background without waiting, after an error or an interrupt (see :meth:`Background.close`):
        the process can exit at once; committed work stays, what the background had not committed is redone by
        a rerun."""
        if self.ctx.background is not None:
            self.ctx.background.close()
        self.writer.close()

    def finish(self) -> RunSummary:
        """Commit what the background still holds, then record the session's counts and timings."""
        summary, ctx = self.summary, self.ctx
        if ctx.background is not None:
            summary.rows += ctx.background.drain(self._commit_deferred, block=True)
            ctx.background.close()
        summary.seconds = time.perf_counter() - self.t_start
        summary.faithfulness_seconds = ctx.times.faithfulness
        summary.stages = {"waiting for images": self.waiting_seconds, **ctx.stages()}
        summary.map_skips = dict(ctx.map_skips)
        write_report(self.writer, summary, self.shard, ctx.times.capture)
        self.writer.close()
        return summary


def _voc_dataset(config: RunConfig):
    from compute.data.voc import VOCSegmentation

    if not config.voc_root:
        raise ValueError("no images: pass --voc-root (a VOCdevkit folder)")
    return VOCSegmentation(config.voc_root, split=config.split, limit=config.limit)


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
    session = {"finished": _now(), "methods": summary.methods, "shard": list(shard) if shard else None, **report}
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
    job.write_manifest()
    workers = config.num_workers if config.num_workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
    indices = job.indices
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(job.decoded, indices), batch_size=config.batch_size, shuffle=False,
        num_workers=workers, collate_fn=collate, pin_memory=job.device.type == "cuda", persistent_workers=False,
        worker_init_fn=functools.partial(end_with_parent, os.getpid()) if workers else None)
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

"""The Ray backend: one run explained by a pool of Ray actors, each holding its own model.

The driver (:func:`run_ray`) does what must happen exactly once per run — it removes the leftovers of an
interrupted batch, counts the images and cuts them into the runner's batches — then hands the batch numbers to
a Ray Dataset whose ``map_batches`` step runs on a fixed pool of actors (:class:`_Explainer`). Each actor
builds its own :class:`~compute.runner.Job` (model, methods, target, committed keys) once, in its
``__init__``, and explains, scores and commits one runner batch per call.

Why this is the same run as a local one:

* The run id is the config's hash and does not depend on the backend, the shard or the device, so every actor
  writes into ``<out>/<table>/run_id=<id>/`` and the rows are the local runner's rows.
* The unit of work is one *runner batch*: batch ``k`` holds the images at positions ``k*B … k*B+B-1`` of the
  (shard's) image list, exactly as the local DataLoader groups them. A part file is named after its batch's
  images and methods, so the parts written here are the very files a local run writes (same names, same rows),
  a run can be interrupted under one backend and resumed under the other, and a batch that Ray re-executes
  after an actor died overwrites its own parts instead of adding rows. (Ray Data's own batching of an index
  column would not do: it cuts batches at block boundaries, which differ from run to run.)
* Committed work is skipped: every actor reads the committed keys when it starts, after the driver's
  clean-up, and every batch goes to exactly one actor.

What must not race:

* Clean-up of an interrupted batch's leftovers runs once, in the driver, before any actor starts. The actors
  build their Job with a writer that skips it — otherwise an actor that starts late (a slow model load, a
  restarted actor) would delete the half-written parts of a batch another actor is committing.
* The run manifest ``runs/<run_id>.json`` is read, merged and replaced by each actor at start (one
  ``sessions`` entry each) and by the driver at the end (counts and timings); these writes hold an exclusive
  lock on ``runs/.<run_id>.lock``, so no session entry is lost. The per-actor details of a Ray run go into a
  file of their own, ``runs/<run_id>/ray-<time>-<pid>.json``. A sharded Ray run (``--shard i/n``) writes its
  counts to ``runs/<run_id>/shard-i-of-n.json`` as the local runner does.

Requirements: ``pip install 'vitlens[ray]'``. On a multi-node cluster every node needs vitlens installed and
must see ``--voc-root``, ``--out`` (and ``--weights``) at the same paths (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from compute.runner import RunConfig, RunSummary, check_config, collate, parse_device, parse_shard, write_report
from store.writer import StoreWriter

__all__ = ["run_ray"]

COUNTS = ("images", "rows", "skipped", "already_done")


# ------------------------------------------------------------------------------------------------ the actor

class _Explainer:
    """One Ray actor: its own Job (the model is loaded once, here), then one runner batch per row.

    The project's input errors (a ValueError or FileNotFoundError: unreadable weights, a bad target, data the
    worker cannot see) do not kill the actor — Ray would restart it and fail again — but come back to the
    driver in the ``error`` column, which raises them as they were raised here.
    """

    def __init__(self, config: RunConfig, total: int, positions: tuple[int, int], threads: int = 1):
        self.actor = f"{socket.gethostname()}:{os.getpid()}"
        self.error: BaseException | None = None
        try:
            self._start(config, total, positions, threads)
        except (ValueError, FileNotFoundError) as exc:
            self.error = exc

    def _start(self, config: RunConfig, total: int, positions: tuple[int, int], threads: int) -> None:
        import torch

        from compute.data.voc import DatasetError
        from compute.runner import Job

        torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS to the CPUs reserved, 1 for a GPU worker
        # the driver cleaned up stale leftovers before any actor started; a late actor must not do it again
        self.job = Job(config, writer=StoreWriter(config.out, config.run_id(), clean_orphans=False))
        self.job.write_manifest()
        if len(self.job.dataset) != total:
            raise DatasetError(f"the Ray worker {self.actor} sees {len(self.job.dataset)} images under "
                               f"{config.voc_root!r}, the driver {total}: every node must see the same data")
        self.positions = range(positions[0], total, positions[1])
        self.batch_size = config.batch_size
        decoders = min(threads, config.batch_size)  # decoding and resizing (PIL releases the GIL)
        self.pool = ThreadPoolExecutor(decoders) if decoders > 1 else None
        self.notes = "\n".join(self.job.summary.notes)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for k in batch["id"].tolist():
            row = dict.fromkeys(("items", *COUNTS), 0) | {
                "batch": k, "busy_seconds": 0.0, "capture_seconds": 0.0, "faithfulness_seconds": 0.0,
                "actor": self.actor, "device": "", "notes": "", "error": ""}
            if self.error is None:
                try:
                    row.update(self._explain(k))
                except (ValueError, FileNotFoundError) as exc:
                    self.error = exc
            if self.error is not None:
                row["error"] = _encode_error(self.error)
            rows.append(row)
        return {c: np.asarray([r[c] for r in rows], dtype=object if isinstance(rows[0][c], str) else None)
                for c in rows[0]}

    def _explain(self, k: int) -> dict:
        """Decode, explain, score and commit runner batch ``k``; what it added to the counts."""
        t0 = time.perf_counter()
        job, summary, ctx = self.job, self.job.summary, self.job.ctx
        indices = self.positions[k * self.batch_size:(k + 1) * self.batch_size]
        decode = job.decoded.__getitem__
        items = list(self.pool.map(decode, indices)) if self.pool else [decode(i) for i in indices]
        before = {c: getattr(summary, c) for c in COUNTS}
        capture, faith = ctx.times.capture, ctx.times.faithfulness
        job.process(collate(items))
        return {"items": len(items), **{c: getattr(summary, c) - before[c] for c in COUNTS},
                "capture_seconds": ctx.times.capture - capture,
                "faithfulness_seconds": ctx.times.faithfulness - faith,
                "busy_seconds": time.perf_counter() - t0, "device": str(job.device), "notes": self.notes}


def _encode_error(exc: BaseException) -> str:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)  # an exception class with its own __init__ may not come back
    except Exception:
        data = pickle.dumps(ValueError(f"{type(exc).__name__}: {exc}"))
    return data.hex()


def _decode_error(text: str) -> BaseException:
    return pickle.loads(bytes.fromhex(text))


# ------------------------------------------------------------------------------------------------ the driver

def run_ray(config: RunConfig, num_workers: int | None = 2, address: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> RunSummary:
    """Run the job described by ``config`` on a pool of ``num_workers`` Ray actors and return its summary.

    ``address``: a Ray cluster to connect to (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``); ``None``
    starts a private local Ray instance for this call (and shuts it down after). If Ray is already initialised
    in this process, that instance is used as it is. ``num_workers=None``: one actor per GPU of the cluster
    (GPU runs) or 2. Each actor takes one GPU when ``config.device`` is ``auto`` (and the cluster has GPUs) or
    ``cuda``; otherwise it takes an equal share of the CPUs. ``config.shard`` (or the torchrun / SLURM
    environment) restricts the run to that shard's images, as in :func:`compute.runner.run`.
    ``progress(done_images, total_images)`` is called after every batch.
    """
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray, which is not installed: install vitlens with its "
                         "'ray' extra (docs/scaling.md)") from None
    t_start = time.perf_counter()
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"--ray-workers must be at least 1, not {num_workers}")
    config, total, shard, methods = _check(config)
    run_id = config.run_id()
    positions = (shard[0], shard[1]) if shard else (0, 1)
    n_images = len(range(positions[0], total, positions[1]))
    n_batches = math.ceil(n_images / config.batch_size)
    # The once-per-run part of a Job's start: claim the images for this driver (its actors write under that
    # claim), repair damaged batches and clean up an interrupted batch's leftovers before any actor runs.
    claimed = StoreWriter(config.out, run_id, claim_shard=shard)

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(address="local", num_cpus=_local_cpus(), include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    try:
        plan = _plan(ray, config, num_workers, local=started_here and address is None)
        actor_config = replace(config, device=plan["device"], shard=f"{shard[0]}/{shard[1]}" if shard else None)
        rows = _execute(ray, actor_config, total, positions, n_batches, plan, quiet=progress is not None)
        with contextlib.closing(rows):
            totals, actors, notes = _collect(rows, progress, n_images)
    finally:
        if started_here:
            ray.shutdown()
        claimed.close()

    summary = RunSummary(run_id=run_id, out=str(config.out), images=int(totals["images"]),
                         skipped=int(totals["skipped"]), already_done=int(totals["already_done"]), methods=methods,
                         rows=int(totals["rows"]), seconds=time.perf_counter() - t_start,
                         faithfulness_seconds=float(totals["faithfulness_seconds"]), notes=notes)
    if summary.rows and not any((Path(config.out) / "metrics" / f"run_id={run_id}").glob("part-*.parquet")):
        summary.notes.append(f"the Ray workers wrote {summary.rows} rows that this machine cannot see under "
                             f"{config.out!r}: --out must be a folder every node of the cluster shares")
    _report(config, summary, shard, plan, actors, totals["capture_seconds"], address, n_batches)
    return summary


def _local_cpus() -> int:
    """The CPUs this process may use (a SLURM allocation or taskset restricts them; os.cpu_count does not)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _collect(rows, progress: Callable[[int, int], None] | None, n_images: int) -> tuple[dict, dict, list[str]]:
    """Sum the per-batch rows as they arrive: run totals, per-actor totals, notes; raise a worker's error."""
    totals = dict.fromkeys(("items", *COUNTS), 0) | {"capture_seconds": 0.0, "faithfulness_seconds": 0.0}
    actors: dict[str, dict] = {}
    notes: list[str] = []
    for row in rows:
        if row["error"]:
            raise _decode_error(row["error"])
        for c in totals:
            totals[c] += row[c]
        a = actors.setdefault(str(row["actor"]), {"device": str(row["device"]), "batches": 0, "images": 0,
                                                  "busy_seconds": 0.0})
        a["batches"] += 1
        a["images"] += int(row["images"])
        a["busy_seconds"] += float(row["busy_seconds"])
        notes += [n for n in str(row["notes"]).split("\n") if n and n not in notes]
        if progress:
            progress(int(totals["items"]), n_images)
    return totals, actors, notes


def _check(config: RunConfig) -> tuple[RunConfig, int, tuple[int, int] | None, list[str]]:
    """Fail in the driver, with the project's own errors, on what would otherwise fail in every actor; make
    paths absolute (Ray workers do not share the driver's working directory)."""
    from compute.data.voc import VOCSegmentation
    from compute.methods import parse_methods
    from compute.models import check_model_name

    methods = [m.key for m in parse_methods(config.methods)]
    check_config(config)
    if parse_device(config.device) == "mps":
        raise ValueError(f"--device {config.device!r} is not for the Ray backend (its actors ask Ray for CUDA "
                         "GPUs); use auto, cpu or cuda")
    if config.weights is None:
        check_model_name(config.model)
    if not config.voc_root:
        raise ValueError("no images: pass --voc-root (a VOCdevkit folder)")
    shard = parse_shard(config.shard)

    def absolute(p: str | None) -> str | None:
        return str(Path(p).expanduser().resolve()) if p and Path(p).expanduser().exists() else p

    config = replace(config, out=str(Path(config.out).expanduser().resolve()), voc_root=absolute(config.voc_root),
                     weights=absolute(config.weights))
    total = len(VOCSegmentation(config.voc_root, split=config.split, limit=config.limit))
    return config, total, shard, methods


def _plan(ray, config: RunConfig, num_workers: int | None, local: bool) -> dict:
    """Device, pool size and per-actor resources from the config and what the cluster offers."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=cpus)
    if config.device.startswith("cuda") and not gpus:
        raise ValueError(f"--device {config.device} asked for, but the Ray cluster has no GPU; use --device auto "
                         "or cpu")
    use_gpu = bool(gpus) and config.device != "cpu"
    workers = num_workers or (gpus if use_gpu else 2)
    # A local instance cannot grow: a pool it cannot place would wait for ever (a cluster may scale up).
    if use_gpu:
        if local and workers > gpus:
            raise ValueError(f"--ray-workers {workers}, but this machine has {gpus} GPU(s): one worker per GPU")
        # A GPU worker reserves one CPU; it decodes and scores with the CPUs that come with its GPU.
        return {"device": "cuda", "workers": workers, "num_gpus": 1, "num_cpus": 1,
                "threads": max(1, min(cpus // gpus, node_cpus) - 1)}
    if local and workers > cpus:
        raise ValueError(f"--ray-workers {workers}, but this machine has {cpus} CPU(s)")
    share = max(1, min(cpus // workers, node_cpus))
    return {"device": "cpu", "workers": workers, "num_gpus": 0, "num_cpus": share, "threads": share}


def _execute(ray, config: RunConfig, total: int, positions: tuple[int, int], n_batches: int, plan: dict,
             quiet: bool):
    """Stream the per-batch counts of the actor pool as batches are committed. ``quiet``: no progress bars and
    execution logs of Ray Data's own (the caller shows progress)."""
    import ray.data

    if not n_batches:
        return
    ctx = ray.data.DataContext.get_current()
    saved = {k: getattr(ctx, k) for k in ("enable_progress_bars", "print_on_execution_start",
                                          "enable_auto_log_stats") if quiet and hasattr(ctx, k)}
    log = logging.getLogger("ray.data")
    level = log.level
    for k in saved:
        setattr(ctx, k, False)
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        # One row per runner batch; enough blocks that idle actors can always take work, not one per batch on
        # a huge run (a block's batches go to one actor, which commits them one by one). The rows are built
        # here, not read by Ray tasks: actors may hold every CPU of the cluster, and a read task waiting for
        # a CPU would wait for ever.
        blocks = min(n_batches, max(64, 32 * plan["workers"]))
        ds = ray.data.from_items([{"id": k} for k in range(n_batches)], override_num_blocks=blocks).map_batches(
            _Explainer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=plan["workers"]),
            fn_constructor_kwargs={"config": config, "total": total, "positions": positions,
                                   "threads": plan["threads"]},
            num_cpus=plan["num_cpus"], num_gpus=plan["num_gpus"] or None)
        yield from ds.iter_rows()
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        log.setLevel(level)


def _report(config: RunConfig, summary: RunSummary, shard, plan: dict, actors: dict, capture_seconds: float,
            address: str | None, n_batches: int) -> None:
    """Counts and timings where the local runner puts them (the run manifest, or the shard's own file), and
    this Ray run's details in a file of its own."""
    import ray

    writer = StoreWriter(config.out, summary.run_id, clean_orphans=False)
    report = write_report(writer, summary, shard, capture_seconds)
    details = {**report, "backend": "ray", "ray_version": ray.__version__,
               "address": address, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "batches": n_batches,
               "shard": list(shard) if shard else None, "plan": plan,
               "actors": {k: {**v, "busy_seconds": round(v["busy_seconds"], 3)} for k, v in sorted(actors.items())}}
    writer.write_shard_report(f"ray-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}", details)

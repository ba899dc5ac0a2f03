"""Maximum flows of many images in parallel: a process pool (behind a forkserver) over
:func:`compute.layers.maxflow.layered_max_flows`, whose results do not depend on how the work is split."""

from __future__ import annotations

import math
import os
import threading

import numpy as np

from compute.layers.maxflow import DEFAULT_RTOL, DEFAULT_TIERS, layered_max_flows


def _task(caps: np.ndarray, sources: np.ndarray, sink: int, tiers, rtol: float) -> np.ndarray:
    return layered_max_flows(caps, sources, sink, tiers=tiers, rtol=rtol)


_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()  # the batch job solves from a background thread too


def _pool(workers: int):
    with _POOLS_LOCK:
        return _pool_locked(workers)


def _pool_locked(workers: int):
    import atexit
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from compute.children import background_worker

    if getattr(_POOLS.get(workers), "_broken", False):  # a worker of it died (killed, out of memory)
        _POOLS.pop(workers).shutdown(wait=False, cancel_futures=True)
    if workers not in _POOLS:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["compute.children", __name__])
        # its workers die with the forkserver, which ends when this process does, and yield the CPU to it
        # (compute.children)
        _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=background_worker)
        if len(_POOLS) == 1:
            atexit.register(_shutdown_pools)
    return _POOLS[workers]


def _shutdown_pools() -> None:
    import gc

    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(wait=True, cancel_futures=True)
        del pool
    gc.collect()  # release the pools' queues now, so that their semaphores are unlinked before exit


def terminate_pools() -> None:
    """Kill the worker processes of every pool now, abandoning their tasks (after an interruption: a running
    task would otherwise hold the interpreter's exit, which joins the pools, until it ends). A caller waiting
    on such a task gets an error; the next solve starts new pools."""
    with _POOLS_LOCK:
        taken = list(_POOLS.values())
        _POOLS.clear()
    for pool in taken:
        processes = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown forgets them
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def batched_layered_max_flows(caps, sources, sink: int = 0, *, workers: int = 1, tiers=DEFAULT_TIERS,
                              rtol: float = DEFAULT_RTOL, in_process: bool | None = None) -> np.ndarray:
    """``[B, L, N, N]`` networks -> ``[B, len(sources)]`` maximum flows, in ``workers`` processes.

    ``in_process``: solve in this process (by default when ``workers`` is 1). ``False`` sends even one
    worker's share to a process: a caller on a background thread (the batch job's) would otherwise hold the
    interpreter lock through the solver's Python loops, and the main thread's many short tensor operations
    would each wait for it.

    Every value is computed on its own (the path a source takes inside a process changes only the time), so
    the result does not depend on ``workers`` or on how the work is split.
    """
    caps = np.asarray(caps, dtype=np.float64)
    sources = np.asarray(sources, dtype=np.int64)
    B = caps.shape[0]
    out = np.zeros((B, sources.size))
    workers = max(1, int(workers))
    if in_process is None:
        in_process = workers == 1
    if in_process or B * sources.size <= 1:
        for b in range(B):
            out[b] = layered_max_flows(caps[b], sources, sink, tiers=tiers, rtol=rtol)
        return out
    # whole images per task when there are enough of them, else split each image's sources (not too finely:
    # each task builds its own integer networks)
    chunks = min(math.ceil(workers / B), max(1, sources.size // 48)) if B < workers else 1
    parts = [p for p in np.array_split(sources, min(chunks, sources.size)) if p.size]
    from concurrent.futures.process import BrokenProcessPool

    try:
        pool = _pool(workers)
        jobs = []
        for b in range(B):
            start = 0
            for part in parts:
                jobs.append((b, start, pool.submit(_task, caps[b], part, sink, tiers, rtol)))
                start += part.size
    except (OSError, RuntimeError, AssertionError):  # no child processes here (e.g. in a daemonic process)
        return batched_layered_max_flows(caps, sources, sink, workers=1, tiers=tiers, rtol=rtol, in_process=True)
    try:
        for b, start, fut in jobs:
            vals = fut.result()
            out[b, start:start + vals.size] = vals
    except BrokenProcessPool:  # a worker died (killed, out of memory): finish here; _pool() replaces the pool
        return batched_layered_max_flows(caps, sources, sink, workers=1, tiers=tiers, rtol=rtol)
    return out


__all__ = ["available_cores", "batched_layered_max_flows", "terminate_pools"]

"""Methods finished in the background: their CPU-bound tails (:meth:`compute.methods.Method.deferred`, e.g.
attention flow's max-flows) run on daemon threads while the main loop explains the next batches; the main
thread scores and commits them as they finish."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from compute.methods import Method
from compute.runner.passes import Pass, PassOutputs

# method key -> (method, the call that finishes its map)
DeferredMethods = dict[str, tuple[Method, Callable[[], torch.Tensor]]]
# method key -> (method, its map or the exception it raised, seconds)
FinishedMethods = dict[str, tuple[Method, "torch.Tensor | Exception", float]]


@dataclass
class DeferredPass:
    """Some methods' maps of one pass, finished in the background: scored and committed as a part set of
    their own (``key``) once done."""

    key: str
    plan: Pass
    outputs: PassOutputs
    items: list[dict]  # the pass's images
    todo: dict
    methods: DeferredMethods


def finish_methods(methods: DeferredMethods, stop: threading.Event | None = None) -> FinishedMethods:
    """Run the deferred calls, one after the other (on a background thread). A method's own error is kept as
    its result; once ``stop`` is set no further method starts (the result is then never committed)."""
    finished = {}
    for key, (m, fn) in methods.items():
        if stop is not None and stop.is_set():
            break
        t0 = time.perf_counter()
        try:
            result: torch.Tensor | Exception = fn().float()
        except Exception as exc:  # reported as skips when committed
            result = exc
        finished[key] = (m, result, time.perf_counter() - t0)
    return finished


class Background:
    """Finishes :class:`DeferredPass` es while the main loop explains the next batches.

    Results are committed on the main thread, oldest first, by :meth:`drain`; at most ``max_pending`` passes
    wait (each holds its CPU inputs), beyond that the main loop waits for the oldest (``wait_seconds``).

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
        self.wait_seconds = 0.0  # the main loop blocked on results

    def submit(self, deferred: DeferredPass) -> None:
        if self.stop.is_set():
            raise RuntimeError("the background of this job was closed")
        if len(self.threads) < self.workers:  # started on first use, as a ThreadPoolExecutor does
            t = threading.Thread(target=self._work, name=f"vitlens-deferred-{len(self.threads)}", daemon=True)
            t.start()
            self.threads.append(t)
        fut: Future = Future()
        self.queue.put((fut, deferred.methods))
        self.pending.append((deferred, fut))

    def _work(self) -> None:
        while True:
            task = self.queue.get()
            if task is None or self.stop.is_set():
                return
            fut, methods = task
            if not fut.set_running_or_notify_cancel():
                continue
            with self.lock:
                self.busy += 1
            try:
                fut.set_result(finish_methods(methods, self.stop))
            except BaseException as exc:  # finish_methods keeps a method's own errors; this is anything else
                fut.set_exception(exc)
            finally:
                with self.lock:
                    self.busy -= 1

    def drain(self, commit: Callable[[DeferredPass, FinishedMethods], int], block: bool) -> int:
        """``commit`` every finished pass, oldest first (all of them when ``block``, waiting as needed);
        returns the metric rows it wrote."""
        rows = 0
        while self.pending and (block or self.pending[0][1].done() or len(self.pending) > self.max_pending):
            deferred, fut = self.pending.popleft()
            t0 = time.perf_counter()
            finished = fut.result()
            self.wait_seconds += time.perf_counter() - t0
            rows += commit(deferred, finished)
        return rows

    def close(self) -> None:
        """Stop without waiting: queued passes are cancelled, no further method starts, and a task still
        running is abandoned — its thread is a daemon, and the max-flow worker processes it may be waiting
        for (:mod:`compute.layers.flow_pool`'s pools, which the interpreter would wait for at exit) are
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
            terminate_max_flow_pools()


def terminate_max_flow_pools() -> None:
    """Kill attention flow's max-flow worker processes, if that module was used (see :meth:`Background.close`)."""
    flow_pool = sys.modules.get("compute.layers.flow_pool")
    if flow_pool is not None:
        flow_pool.terminate_pools()

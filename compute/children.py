"""Worker processes end with the process that started them, quietly.

The batch job starts DataLoader workers (each holding decoded images, hundreds of MB) and, for attention
flow, a pool of max-flow workers behind a forkserver. When the job is killed (SIGKILL, or SIGTERM, which
ends Python without its clean-up), nothing would stop them: they idle on for minutes, holding memory (and the
forkserver stays alive as long as any forked worker holds its pipe). :func:`end_with_parent`, run first in
each worker, asks the kernel to kill the worker as soon as its parent dies (Linux ``PR_SET_PDEATHSIG``), and
leaves Ctrl-C to the parent, which stops the run and reports once — instead of every worker printing a
``KeyboardInterrupt`` traceback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def end_with_parent(parent_pid: int | None = None, *_ignored) -> None:
    """In a worker process: die with the parent, ignore SIGINT. ``parent_pid``: the parent the worker was
    started by; if it is already gone (it died before this ran), the worker exits now. Extra arguments (a
    DataLoader's worker id) are ignored, so it serves as ``worker_init_fn`` and as a pool ``initializer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the worker ends when its queue closes, as before
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)


#: how much lower a background worker's scheduling priority is than its parent's (``nice`` steps)
BACKGROUND_NICENESS = 10


def background_worker(*args) -> None:
    """In a worker process that computes in the background (attention flow's max-flow pool): as
    :func:`end_with_parent`, and at a lower scheduling priority, so that on a busy machine the job's own
    pipeline (forward passes, methods, scoring) keeps its cores and the background work takes what is left
    instead of slowing every stage down. Measured on a 2-core machine on the demo: the counterfactual stage
    4.9-6.3 s -> 1.9-3.0 s, the whole explanation slightly shorter."""
    end_with_parent(*args)
    try:
        os.nice(BACKGROUND_NICENESS)
    except OSError:  # not permitted here: run at the parent's priority
        pass


def _in_forkserver() -> bool:
    return any("multiprocessing.forkserver" in arg for arg in getattr(sys, "orig_argv", ()))


# A forkserver imports its preload modules (this one among them, see compute.layers.flow_pool) before it serves:
# it then dies with the process that started it, and so, through their own binding, do the workers it forks.
if _in_forkserver():
    end_with_parent()

__all__ = ["end_with_parent"]

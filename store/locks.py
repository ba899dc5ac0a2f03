"""Locks on a store: the short lock around a run manifest's merge, and the writer's claim on a run.

Both are POSIX record locks (``fcntl.lockf``), which NFS honours across nodes and the kernel drops when the
process ends — a killed writer never leaves a stale claim. Where the filesystem offers no locks, both are
no-ops (the store is then as safe as it was without them).

A **claim** says "this process writes these images of this run": the whole run, or the shard ``i/n`` (every
n-th image from the i-th). Two claims on one run may coexist only when they cannot share an image: shards
``i/n`` and ``j/n`` with ``i != j``. Any other pair (the same shard twice, a whole run beside a shard, shards
of different counts) would write the same rows twice, so the second is refused with a message naming the
process that holds the first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no locks
    fcntl = None


class StoreBusy(ValueError):
    """Another live process writes rows this one would also write (a ValueError: the command line reports it
    as one line and exit code 2, as it does bad input)."""


@contextlib.contextmanager
def manifest_lock(out: str | Path, run_id: str) -> Iterator[None]:
    """An exclusive lock on ``runs/.<run_id>.lock``, held while a process merges its entry into the run
    manifest (or checks and takes a claim), so that processes of one run starting together lose nothing."""
    path = Path(out) / "runs" / f".{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.lockf(fh, fcntl.LOCK_UN)


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether shards ``a`` and ``b`` (position, count) can hold the same image."""
    return not (a[1] == b[1] and a[0] != b[0])


def _scope_name(shard: tuple[int, int]) -> str:
    return "all" if shard == (0, 1) else f"shard-{shard[0]}-of-{shard[1]}"


def _parse_scope(name: str) -> tuple[int, int] | None:
    if name == "all":
        return (0, 1)
    bits = name.split("-")
    if len(bits) == 4 and bits[0] == "shard" and bits[2] == "of" and bits[1].isdigit() and bits[3].isdigit():
        return int(bits[1]), int(bits[3])
    return None


# lock files this process holds: probing one of them from a second descriptor would release it (POSIX
# record locks belong to the process, and closing any descriptor of the file drops them)
_HELD: dict[Path, "Claim"] = {}


@dataclass
class Claim:
    """A held claim; :meth:`release` (or the end of the process) gives it up."""

    path: Path
    handle: object | None

    def release(self) -> None:
        if self.handle is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
        _HELD.pop(self.path, None)


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if text:
            return text
    return "another process"


def _live(path: Path) -> bool:
    """Whether another process holds the lock on ``path`` (probed without waiting)."""
    if path in _HELD:
        return False
    try:
        with open(path, "a") as fh:
            try:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.lockf(fh, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def claim(out: str | Path, run_id: str, shard: tuple[int, int] | None = None) -> Claim:
    """Claim the images of ``shard`` (None: the whole run) of ``run_id`` in the store ``out`` for this process,
    or raise :class:`StoreBusy` naming the live process whose claim overlaps it."""
    shard = shard or (0, 1)
    folder = Path(out) / "runs"
    path = folder / f".{run_id}.writer-{_scope_name(shard)}.lock"
    if fcntl is None:
        return Claim(path, None)
    if path in _HELD:
        return _HELD[path]
    with manifest_lock(out, run_id):
        for other in sorted(folder.glob(f".{run_id}.writer-*.lock")):
            scope = _parse_scope(other.name[len(f".{run_id}.writer-"):-len(".lock")])
            if scope is not None and _overlap(scope, shard) and _live(other):
                raise StoreBusy(
                    f"{_holder(other)} is writing run {run_id} ({_scope_name(scope).replace('-', ' ')}) into "
                    f"{out}; two writers there would store the same rows twice. Wait for it to finish (or stop "
                    f"it), or split the work between processes with --shard i/n.")
        handle = open(path, "a+")
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # the filesystem has no locks: go on unlocked, as manifest_lock does
            handle.close()
            return Claim(path, None)
        handle.seek(0)
        handle.truncate()
        handle.write(f"vitlens compute (pid {os.getpid()} on {socket.gethostname()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        handle.flush()
    held = Claim(path, handle)
    _HELD[path] = held
    return held


__all__ = ["Claim", "StoreBusy", "claim", "manifest_lock"]

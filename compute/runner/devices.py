"""Where a run computes and which images it takes: ``--device`` parsed and checked against this machine, and
``--shard`` (or the torchrun / SLURM environment) turned into this process's share of the images."""

from __future__ import annotations

import os
import re

import torch


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


def shard_device(device: str) -> str:
    """``--device`` for this process: under torchrun each process takes the GPU of its LOCAL_RANK."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and os.environ.get("LOCAL_RANK"):
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


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


def shard_indices(count: int, shard: tuple[int, int] | None) -> list[int]:
    """The positions of a shard's images among ``count``: all, or every n-th from i for shard (i, n)
    (deterministic, so that every process of a run agrees on who takes which image)."""
    every = list(range(count))
    return every[shard[0]::shard[1]] if shard else every

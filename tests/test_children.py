"""Worker processes end with the batch job, quietly: after SIGKILL or SIGTERM of `vitlens compute`, no
DataLoader worker, forkserver or max-flow worker stays behind (before: they idled on for minutes, one holding
555 MB), and after SIGINT no worker prints a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_resume import REPO, VITLENS

pytestmark = pytest.mark.slow


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(voc_mini, out):
    cmd = [VITLENS, "compute", "--voc-root", str(voc_mini), "--out", str(out), "--random-init", "--model",
           "vit_tiny_patch16_224", "--img-size", "224", "--methods", "attention_flow(workers=2),rollout", "--batch-size", "1",
           "--workers", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    kids: set[int] = set()
    while time.time() < deadline and proc.poll() is None:
        kids = _descendants(proc.pid)
        if len(kids) >= 2 and any((out / "commits").glob("run_id=*/*.json")):
            return proc, kids
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the run did not start its workers in time: {proc.communicate()}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_a_killed_job(voc_mini, tmp_path, sig):
    proc, kids = _start(voc_mini, tmp_path / "store")
    time.sleep(1.0)
    kids |= _descendants(proc.pid)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.2)
    left = [k for k in kids if _alive(k)]
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(kids)} worker processes outlived the job"


def test_ctrl_c_stops_the_job_with_one_message_and_no_worker_traceback(voc_mini, tmp_path):
    proc, kids = _start(voc_mini, tmp_path / "store")
    proc.send_signal(signal.SIGINT)
    for k in kids:  # as a terminal's Ctrl-C reaches the whole foreground process group
        try:
            os.kill(k, signal.SIGINT)
        except ProcessLookupError:
            pass
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-2000:]
    assert "interrupted" in err

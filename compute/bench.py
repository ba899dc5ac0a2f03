"""Throughput benchmark: img/s of every method against the model's own forward / forward+backward rooflines.

Measured in one process, on random images of the model's input size (speed does not depend on content):

- ``forward``: the untouched timm model (fused attention where timm enables it), no gradients;
- ``forward+backward``: the untouched model plus one backward pass to the input (weights frozen) — the
  roofline for any gradient method, which needs at least that;
- each method alone: one capture with exactly its requirements, then the method, per batch;
- ``all (shared capture)``: one capture with the union of every method's requirements, then every method;
- ``per-image baseline``: every method on one image at a time with its own forward/backward — the way the
  reference implementations work.

With ``--bf16`` it also reports how much bfloat16 autocast changes each map (Pearson correlation and IoU of
the Otsu masks against float32).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from compute.capture import capture
from compute.targets import per_image_classes
from compute.methods import Method
from compute.metrics.localisation import minmax_normalise, otsu_binarise


@dataclass
class BenchRow:
    name: str
    images_per_second: float
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, images: int, device: torch.device, warmup: int = 1, repeat: int = 3) -> float:
    """Best-of-``repeat`` img/s of ``fn()``, which processes ``images`` images."""
    for _ in range(warmup):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return images / best


def run_bench(model: torch.nn.Module, input_size: tuple[int, int], methods: list[Method], batch_size: int,
              device: torch.device, batches: int = 2, repeat: int = 3, baseline_images: int = 2,
              progress=None) -> tuple[list[BenchRow], dict]:
    """Returns the table rows and a dict of extra facts (peak memory, ratios)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size * batches, 3, *input_size, generator=g).to(device)
    chunks = list(x.split(batch_size))
    n = x.shape[0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows: list[BenchRow] = []

    def step(label):
        if progress:
            progress(label)

    def forward():
        with torch.no_grad():
            for c in chunks:
                model(c)

    def forward_backward():
        for c in chunks:
            c = c.detach().requires_grad_(True)
            out = model(c)
            torch.autograd.grad(out.max(dim=-1).values.sum(), c)

    step("forward")
    fwd = _timed(forward, n, device, repeat=repeat)
    rows.append(BenchRow("forward", fwd, "roofline without gradients"))
    step("forward+backward")
    fwdbwd = _timed(forward_backward, n, device, repeat=repeat)
    rows.append(BenchRow("forward+backward", fwdbwd, "roofline for gradient methods"))

    for m in methods:
        step(m.key)

        def alone(m=m):
            for c in chunks:
                m(capture(model, c, m.requires))

        ips = _timed(alone, n, device, repeat=repeat)
        needs_grad = bool(set(m.requires) & {"attn_grad", "scores_grad", "attn_grad_residual", "tokens_grad",
                                             "input_grad"})
        roof = fwdbwd if needs_grad else fwd
        rows.append(BenchRow(m.key, ips, f"{100 * ips / roof:.0f}% of {'fwd+bwd' if needs_grad else 'fwd'}"))

    step("all (shared capture)")
    union = set().union(*(m.requires for m in methods))

    def shared():
        for c in chunks:
            cap = capture(model, c, union)
            for m in methods:
                m(cap)

    shared_ips = _timed(shared, n, device, repeat=repeat)
    rows.append(BenchRow("all methods, shared capture", shared_ips, f"{len(methods)} maps per image"))

    step("per-image baseline")
    few = x[:baseline_images]

    def per_image():
        for i in range(few.shape[0]):
            xi = few[i:i + 1]
            for m in methods:
                m(capture(model, xi, m.requires))

    base_ips = _timed(per_image, few.shape[0], device, repeat=1)
    rows.append(BenchRow("all methods, per-image baseline", base_ips, "one image, one method per pass"))
    facts = {
        "speedup_shared_vs_baseline": shared_ips / base_ips if base_ips else float("nan"),
        "peak_cpu_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        facts["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return rows, facts


def bf16_effect(model: torch.nn.Module, input_size: tuple[int, int], methods: list[Method], batch_size: int,
                device: torch.device) -> list[tuple[str, float, float]]:
    """Per method: mean Pearson correlation and mean IoU of the Otsu masks, bf16 autocast vs float32 maps."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 3, *input_size, generator=g).to(device)
    union = set().union(*(m.requires for m in methods))
    ref = capture(model, x, union)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        low = capture(model, x, union, target=per_image_classes(ref.target_class))
    results = []
    for m in methods:
        a, b = m(ref).float().cpu().numpy(), m(low).float().cpu().numpy()
        corrs, ious = [], []
        for i in range(a.shape[0]):
            corrs.append(float(np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1]))
            ma, _ = otsu_binarise(minmax_normalise(a[i]))
            mb, _ = otsu_binarise(minmax_normalise(b[i]))
            union_px = np.count_nonzero(ma | mb)
            ious.append(np.count_nonzero(ma & mb) / union_px if union_px else 1.0)
        results.append((m.key, float(np.nanmean(corrs)), float(np.mean(ious))))
    return results

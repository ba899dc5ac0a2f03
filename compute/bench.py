"""Throughput benchmark: img/s of every method against the model's own forward / forward+backward rooflines.

Measured in one process, on random images of the model's input size (speed does not depend on content):

- ``forward``: the untouched timm model (fused attention where timm enables it), no gradients;
- ``forward+backward``: the untouched model plus one backward pass to the input (weights frozen) — the
  roofline for any gradient method, which needs at least that;
- each method alone: one capture with exactly its requirements, then the method, per batch;
- ``all (shared capture)``: one capture with the union of every method's requirements, then every method, as
  the batch job runs them (a method's CPU-bound tail, e.g. attention flow's max-flows, in the background while
  the device captures the next batch);
- ``counterfactual variants``: the ``only_fg``, ``no_fg`` and ``mixed_rand`` inputs of every image (a centred
  box as the object, the next image's background) built and judged by forward passes, from the logits the
  capture already has, as the batch job does (:mod:`compute.counterfactuals`); the note gives the share of the
  forward roofline those 3 forwards per image reach;
- ``per-image baseline``: every method on one image at a time with its own forward/backward — the way the
  reference implementations work.

With ``--bf16`` it also reports how much bfloat16 autocast changes each map (Pearson correlation and IoU of
the Otsu masks against float32).

``--end-to-end N`` also times the real batch job (:func:`end_to_end`): N random images at VOC's image sizes,
with random class masks, written in the VOCdevkit layout, then ``vitlens compute`` on them with every chosen
method — decoding, capture, methods, scoring under both protocols and the Parquet commits included — with the
time per stage.
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compute.capture import capture
from compute.counterfactuals import Explained, ImageInput, Partner, evaluate
from compute.targets import per_image_classes
from compute.methods import Method
from compute.metrics.localisation import minmax_normalise, otsu_binarise
from compute.runner import RunConfig, run, sync_device


@dataclass
class BenchRow:
    name: str
    images_per_second: float
    note: str = ""


def _timed(fn, images: int, device: torch.device, warmup: int = 1, repeat: int = 3) -> float:
    """Best-of-``repeat`` img/s of ``fn()``, which processes ``images`` images."""
    for _ in range(warmup):
        fn()
    sync_device(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync_device(device)
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

    step("counterfactual variants")
    variants = variant_inputs(model, chunks)
    per_image = 3  # only_fg, no_fg, mixed_rand: no cue masks here

    def counterfactuals():
        for c, images, requests, logits in variants:
            evaluate(model, c, images, requests, original_outputs=logits, chunk=256 if device.type == "cuda" else 64)

    cf = _timed(counterfactuals, n, device, repeat=repeat)
    rows.append(BenchRow("counterfactual variants (blur)", cf,
                         f"{per_image} forwards per image: {100 * cf * per_image / fwd:.0f}% of fwd"))

    step("all (shared capture)")
    union = set().union(*(m.requires for m in methods))

    def shared():
        # as the batch job runs it: methods with a CPU-bound tail (attention flow) finish on a background
        # thread while the device goes on with the next chunk
        with ThreadPoolExecutor(max_workers=2) as background:
            later = []
            for c in chunks:
                cap = capture(model, c, union)
                for m in methods:
                    fn = m.deferred(cap)
                    if fn is None:
                        m(cap)
                    else:
                        later.append(background.submit(fn))
            for fut in later:
                fut.result()

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


def variant_inputs(model: torch.nn.Module, chunks: list[torch.Tensor]) -> list[tuple]:
    """Per chunk, what :func:`compute.counterfactuals.evaluate` takes from the batch job: each image with a
    centred box as its object, the next image of the chunk as its ``mixed_rand`` partner, its top-1 as the
    explained class, and the logits the capture already has (so that only the variants are timed)."""
    out = []
    for c in chunks:
        h, w = c.shape[-2:]
        box = torch.zeros(h, w, dtype=torch.bool)
        box[h // 4:3 * h // 4, w // 4:3 * w // 4] = True
        with torch.inference_mode():
            logits = model(c).float()
        top = logits.argmax(dim=-1).tolist()
        ids = [f"bench_{i}" for i in range(len(c))]
        images = [ImageInput(ids[i], partner=Partner(ids[(i + 1) % len(c)], c[(i + 1) % len(c)], box, ""))
                  for i in range(len(c))]
        requests = [Explained(row=i, protocol="report", target_kind="logit", target_class=top[i], region=box,
                              score_classes=(top[i],)) for i in range(len(c))]
        out.append((c, images, requests, logits))
    return out


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


# The most common (width, height) of VOC 2012 images; the long side is 500 pixels.
VOC_SIZES = ((500, 375), (500, 333), (375, 500), (500, 334), (333, 500), (500, 500), (500, 400), (500, 281))


def write_random_voc(root: Path, images: int, seed: int = 0, split: str = "val") -> Path:
    """``images`` random-noise JPEGs at VOC's common sizes with random class masks (one object box of a random
    class, a 3-pixel void band around it, as VOC draws them) in the VOCdevkit layout under ``root``."""
    from PIL import Image

    base = Path(root) / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True, exist_ok=True)
    ids = [f"rand_{i:05d}" for i in range(images)]

    def one(i: int) -> None:
        rng = np.random.default_rng((seed, i))
        w, h = VOC_SIZES[int(rng.integers(len(VOC_SIZES)))]
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{ids[i]}.jpg", quality=90)
        mask = np.zeros((h, w), np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = int(rng.integers(y0 + h // 4, h)), int(rng.integers(x0 + w // 4, w))
        mask[max(y0 - 3, 0):y1 + 3, max(x0 - 3, 0):x1 + 3] = 255
        mask[y0:y1, x0:x1] = int(rng.integers(1, 21))
        Image.fromarray(mask, mode="L").save(base / "SegmentationClass" / f"{ids[i]}.png")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(images)))
    (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return Path(root)


def end_to_end(model: str, methods: str, images: int, batch_size: int, device: str, workers: int | None = None,
               precision: str = "fp32", img_size: int | None = None, progress=None):
    """Run the batch job on ``images`` random VOC-sized images in a temporary folder and return its
    :class:`~compute.runner.RunSummary` (``seconds`` covers model loading to the last commit) and the seconds
    the images took to write (not part of the run)."""
    with tempfile.TemporaryDirectory(prefix="vitlens-bench-") as tmp:
        t0 = time.perf_counter()
        write_random_voc(Path(tmp) / "voc", images)
        prepared = time.perf_counter() - t0
        config = RunConfig(out=str(Path(tmp) / "store"), voc_root=str(Path(tmp) / "voc"), model=model,
                           random_init=True, img_size=img_size, methods=methods, batch_size=batch_size,
                           device=device, num_workers=workers, precision=precision)
        summary = run(config, progress=progress)
    return summary, prepared

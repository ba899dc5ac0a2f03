"""Seconds per image of attention flow at the ViT-B/16 shape (12 blocks, 12 heads, 197 tokens).

    python -m compute.layers.bench_flow [--images 4] [--workers 1 2] [--kinds uniform softmax3 ...]
                                        [--dinov2 shared/models/dinov2-vits14/dinov2_vits14_224_fp16.safetensors]
                                        [--networkx 2]

Attention kinds: ``uniform`` (rows of uniform random numbers, normalised), ``softmaxT`` (softmax of standard
normal scores times T: T=1 is diffuse, T=5 peaked like real heads), and ``dinov2`` (real attention of DINOv2
ViT-S/14 at 196x196 pixels, i.e. 14x14 patches + class token = 197 tokens, on the VOC sample images).
Reports CPU seconds per image in one process, wall seconds per image with each ``workers`` count, which
path certified each value, and the machine's load (other processes share the cores). ``--networkx K`` also
times networkx on K sources of the first image, for scale.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from compute.layers.flow_pool import batched_layered_max_flows
from compute.layers.maxflow import LayeredFlows

L, HEADS, N = 12, 12, 197


def synthetic_attention(kind: str, images: int, seed: int = 0) -> np.ndarray:
    """[B, L, heads, N, N] row-stochastic attention."""
    rng = np.random.default_rng(seed)
    shape = (images, L, HEADS, N, N)
    if kind == "uniform":
        a = rng.random(shape)
    elif kind.startswith("softmax"):
        s = rng.standard_normal(shape) * float(kind[len("softmax"):])
        a = np.exp(s - s.max(-1, keepdims=True))
    else:
        raise ValueError(f"unknown attention kind {kind!r}")
    return a / a.sum(-1, keepdims=True)


def dinov2_attention(weights: str, images: int) -> np.ndarray:
    import glob

    import torch
    from PIL import Image

    from compute.capture import capture
    from compute.models import load_model

    lm = load_model("vit_small_patch14_dinov2.lvd142m", weights=weights, img_size=196)
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(weights))), "..", "voc-mini")
    files = sorted(glob.glob(os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages", "*.jpg")))[:images]
    pre = lm.preprocess()
    x = torch.stack([pre(Image.open(f).convert("RGB")) for f in files])
    cap = capture(lm.model, x, {"attn"})
    return torch.stack(cap.attn, dim=1).double().numpy()


def capacities(attn: np.ndarray, residual: float = 0.5) -> np.ndarray:
    m = (1 - residual) * attn.mean(2) + residual * np.eye(attn.shape[-1])
    return m / m.sum(-1, keepdims=True)


def load() -> str:
    try:
        return "load average %.2f %.2f %.2f on %d cores" % (*os.getloadavg(), os.cpu_count() or 0)
    except OSError:
        return "load unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="*", default=[2])
    ap.add_argument("--kinds", nargs="*", default=["uniform", "softmax1", "softmax3", "softmax5"])
    ap.add_argument("--dinov2", default=None, help="DINOv2 ViT-S/14 weights (.safetensors) for real attention")
    ap.add_argument("--networkx", type=int, default=0, help="also time networkx on this many sources")
    args = ap.parse_args()
    sets = [(k, capacities(synthetic_attention(k, args.images))) for k in args.kinds]
    if args.dinov2:
        sets.append(("dinov2", capacities(dinov2_attention(args.dinov2, args.images))))
    sources = np.arange(1, N)
    print(f"{load()}\n{len(sources)} max flows per image, {L} layers x {N} tokens")
    for name, caps in sets:
        stats: dict = {}
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        serial = []
        for b in range(caps.shape[0]):
            solver = LayeredFlows(caps[b])
            serial.append(solver.values(sources))
            for k, v in solver.stats.items():
                stats[k] = stats.get(k, 0) + v
        cpu = (time.process_time() - t_cpu) / caps.shape[0]
        wall = (time.perf_counter() - t_wall) / caps.shape[0]
        serial = np.stack(serial)
        line = f"{name:9s} 1 process: {cpu:.3f} s CPU/image ({wall:.3f} s wall)"
        for w in args.workers:
            batched_layered_max_flows(caps[:1], sources[:w], workers=w)  # start the pool outside the timing
            t0 = time.perf_counter()
            par = batched_layered_max_flows(caps, sources, workers=w)
            line += f" | workers={w}: {(time.perf_counter() - t0) / caps.shape[0]:.3f} s wall/image"
            assert np.array_equal(par, serial), "results depend on workers"
        total = sum(stats.values())
        paths = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in stats.items() if v)
        print(f"{line}\n          paths: {paths}; values {serial.min():.4f}..{serial.max():.4f}", flush=True)
        if args.networkx:
            import networkx as nx

            g = nx.DiGraph()
            for l in range(L):
                for j in range(N):
                    for i in range(N):
                        g.add_edge((l, i), (l + 1, j), capacity=float(caps[0, l, j, i]))
            t0 = time.perf_counter()
            for p in sources[: args.networkx]:
                want = nx.maximum_flow_value(g, (0, int(p)), (L, 0))
                assert abs(want - serial[0, p - 1]) <= 1e-9, (p, want, serial[0, p - 1])
            per = (time.perf_counter() - t0) / args.networkx
            print(f"          networkx: {per:.1f} s per source (~{per * len(sources) / 60:.0f} min/image), agrees")
    print(load())


if __name__ == "__main__":
    main()

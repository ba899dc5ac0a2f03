"""Faithfulness: deletion and insertion curves (Petsiuk et al. 2018, "RISE"), at the model's patch resolution.

For one image, one map and one explained quantity:

1. the map is average-pooled to the model's patch grid (``gh × gw = P`` patches) and the patches are ranked
   from most to least relevant (ties: lower patch index first, i.e. row-major order);
2. for steps ``k = 0..S`` the top ``n_k = round(k·P/S)`` patches are
   - **deleted**: replaced by the baseline in the image (step 0 = the image, step S = all baseline);
   - **inserted**: copied from the image into the baseline (step 0 = all baseline, step S = the image);
3. each step's image goes through the model (no gradients) and the explained quantity's score is recorded:
   the softmax probability of the explained class, or — for a target that stands for several classes
   (``voc_lse``) — the summed probability of its classes, or, for a target that is no class at all
   (``cls_norm``), the target's value itself;
4. the AUC is the trapezoid area under score vs. fraction removed/inserted (``n_k / P``, from 0 to 1).

A faithful map gives a low deletion AUC (the score falls as soon as the top patches go) and a high insertion
AUC. Baselines (``baseline``): ``zero`` — zero in the normalised input, i.e. the dataset's mean colour;
``blur`` — the image blurred with a Gaussian of ``blur_sigma`` input pixels (separable, edge-replicated).

Cost: the full image and the baseline are scored once per image and shared by every method; every method
then costs ``2·(S-1)`` forward passes per image. All steps of all images and methods of a batch are run in
forward batches of ``chunk`` images, built on the fly so that memory stays at one chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

BASELINES = ("zero", "blur")
DEFAULT_STEPS = 10
DEFAULT_BLUR_SIGMA = 5.0

# outputs [N, K], owner [N] (which image of the batch each row belongs to) -> score [N]
ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Curves:
    """One method's curves for a batch: ``deletion``/``insertion`` ``[B, S+1]``, ``fractions`` ``[S+1]``."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self.insertion, self.fractions, axis=1)


def probability_score(classes: Sequence[Sequence[int]], num_classes: int) -> ScoreFn:
    """Score = summed softmax probability of ``classes[b]`` for rows of image ``b``."""
    weights = torch.zeros(len(classes), num_classes)
    for b, cs in enumerate(classes):
        weights[b, list(cs)] = 1.0

    def fn(outputs: Tensor, owner: Tensor) -> Tensor:
        w = weights.to(outputs.device, outputs.dtype)[owner]
        return (outputs.softmax(dim=-1) * w).sum(dim=-1)

    return fn


def value_score(target: Callable[[Tensor], tuple[Tensor, Tensor]]) -> ScoreFn:
    """Score = the target's own value (for targets that are no class, e.g. the pooled-feature norm)."""
    def fn(outputs: Tensor, owner: Tensor) -> Tensor:
        return target(outputs)[0]

    return fn


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with edge replication (any image size)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def make_baseline(x: Tensor, baseline: str = "zero", blur_sigma: float = DEFAULT_BLUR_SIGMA) -> Tensor:
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    raise ValueError(f"unknown faithfulness baseline {baseline!r}; choose one of {', '.join(BASELINES)}")


def patch_ranks(maps: Tensor, grid: tuple[int, int]) -> Tensor:
    """``[B, h, w]`` maps -> ``[B, P]`` rank of each patch (0 = most relevant), ties by patch index."""
    m = torch.nan_to_num(maps.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    if tuple(m.shape[-2:]) != tuple(grid):
        m = F.adaptive_avg_pool2d(m[:, None], grid)[:, 0]
    flat = m.reshape(m.shape[0], -1)
    order = torch.sort(-flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order).contiguous())
    return ranks


def step_counts(num_patches: int, steps: int) -> np.ndarray:
    if steps < 1:
        raise ValueError("faithfulness needs at least one step")
    return np.rint(np.arange(steps + 1) * num_patches / steps).astype(np.int64)


def deletion_insertion(model: Callable[[Tensor], Tensor], x: Tensor, maps: Mapping[str, Tensor] | Tensor,
                       score: ScoreFn, patch_size: tuple[int, int] | int, steps: int = DEFAULT_STEPS,
                       baseline: str = "zero", blur_sigma: float = DEFAULT_BLUR_SIGMA,
                       chunk: int = 64) -> dict[str, Curves] | Curves:
    """Deletion and insertion curves of every map in ``maps`` for the images ``x`` ``[B, C, H, W]``.

    ``maps`` is ``{name: [B, h, w]}`` (or a single tensor, which returns a single :class:`Curves`);
    ``patch_size`` is the model's patch size in input pixels (``H`` and ``W`` must be multiples of it).
    """
    single = isinstance(maps, Tensor)
    named = {"_": maps} if single else dict(maps)
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    B, _, H, W = x.shape
    if H % ph or W % pw:
        raise ValueError(f"input {H}x{W} is not a multiple of the patch size {ph}x{pw}")
    grid = (H // ph, W // pw)
    P = grid[0] * grid[1]
    counts = step_counts(P, steps)
    fractions = counts / P
    base = make_baseline(x, baseline, blur_sigma)
    ranks = {name: patch_ranks(m.to(x.device), grid) for name, m in named.items()}
    for name, m in named.items():
        if m.shape[0] != B:
            raise ValueError(f"map {name!r} has {m.shape[0]} images, the batch {B}")

    # jobs: (method or None, image, kind, step); None = the shared full image / baseline
    jobs: list[tuple[str | None, int, str, int]] = [(None, b, "full", 0) for b in range(B)]
    jobs += [(None, b, "base", 0) for b in range(B)]
    for name in named:
        for b in range(B):
            for k in range(1, steps):
                jobs.append((name, b, "del", k))
                jobs.append((name, b, "ins", k))

    def build(job) -> Tensor:
        name, b, kind, k = job
        if kind == "full":
            return x[b]
        if kind == "base":
            return base[b]
        on = (ranks[name][b] < int(counts[k])).to(x.dtype).view(1, *grid)
        on = on.repeat_interleave(ph, dim=1).repeat_interleave(pw, dim=2)  # 1 where the patch is removed/inserted
        if kind == "del":
            return x[b] * (1 - on) + base[b] * on
        return base[b] * (1 - on) + x[b] * on

    scores = np.empty(len(jobs), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(jobs), chunk):
            part = jobs[start:start + chunk]
            xb = torch.stack([build(j) for j in part])
            owner = torch.tensor([j[1] for j in part], device=x.device)
            out = model(xb)
            scores[start:start + len(part)] = score(out.float(), owner).double().cpu().numpy()

    full, empty = scores[:B], scores[B:2 * B]
    result: dict[str, Curves] = {}
    pos = 2 * B
    for name in named:
        deletion = np.empty((B, steps + 1))
        insertion = np.empty((B, steps + 1))
        deletion[:, 0], deletion[:, -1] = full, empty
        insertion[:, 0], insertion[:, -1] = empty, full
        for b in range(B):
            for k in range(1, steps):
                deletion[b, k], insertion[b, k] = scores[pos], scores[pos + 1]
                pos += 2
        result[name] = Curves(fractions=fractions, deletion=deletion, insertion=insertion)
    return result["_"] if single else result


__all__ = ["BASELINES", "DEFAULT_STEPS", "DEFAULT_BLUR_SIGMA", "Curves", "ScoreFn", "deletion_insertion",
           "gaussian_blur", "make_baseline", "patch_ranks", "probability_score", "step_counts", "value_score"]

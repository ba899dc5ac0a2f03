"""Does the *model* rely on context? Per-image counterfactual inputs, judged by forward passes only.

After Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition" (ICLR 2021), whose
Only-FG, No-FG and Mixed-Rand sets are built here per image from pixel masks instead of bounding boxes:

- ``only_fg``:    the background replaced by the fill; what the object alone supports;
- ``no_fg``:      the object replaced by the fill; what the context alone supports;
- ``mixed_rand``: the object pasted (with its mask) onto the background of another image of the split, whose
                  own objects were first replaced by the fill; whether the decision follows the new background;
- ``no_cue``:     the planted cue replaced by the fill (only for images that carry a cue mask, e.g. the
                  synthetic data of :mod:`compute.data.synthetic`); whether the decision rests on the cue.

Each variant is fed to the model as it stands (normalised tensors at the model's input size, what the batch
job feeds it); the stored rows (:data:`store.schema.COUNTERFACTUALS`) say what the model then predicts and how
much of the explained class's probability is left. :mod:`store.shortcuts` turns them into reliance scores and
checks which explanation methods agree with them.

Fills (``fill``):

- ``blur`` (default): a strong Gaussian blur (sigma :data:`BLUR_SIGMA` of the longer side) of the pixels that
  *stay*: a normalised convolution, ``blur(x * keep) / blur(keep)``. Blurring the whole image instead would
  leave a blurred silhouette of the removed object (or a colour wash of the removed background) in the
  filled region, which a model can still read. Far from any kept pixel, the kept pixels' mean fills in;
- ``mean``: the per-channel mean of the whole image;
- ``gray``: mid gray (0.5 of the pixel range) in pixel space, normalised as the model's input.

The object region of a row is given at input resolution (see :func:`object_region`): under ``clean`` the
explained class's pixels, under ``report`` every foreground pixel; VOC's void band (255), which outlines the
objects, belongs to the object region (under ``clean``, the void within :data:`VOID_REACH` pixels of the
explained class), so that no outline of a removed object remains.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from store.schema import COUNTERFACTUAL_VARIANTS as VARIANTS

FILLS = ("blur", "mean", "gray")
BLUR_SIGMA = 1 / 16          # Gaussian sigma as a share of the image's longer side
VOID = 255
VOID_REACH = 8               # pixels (image resolution) of void that still belong to an explained class's region
_KEPT_WEIGHT_FLOOR = 1e-3    # below this share of kept pixels under the blur kernel, the kept mean fills in

# columns of a variant's outcome: NULL in a row whose variant was not made (and the partner's, but for mixed_rand)
_RESULT_COLUMNS = ("score", "pred_class", "pred_label", "pred_voc", "same_top1", "partner_id", "partner_classes")
NOT_MADE = {
    "empty": "object region is empty",
    "full": "object region covers the whole image",
    "no_partner": "no other image of the split has background",
    "empty_cue": "cue mask is empty",
}


# ---------------------------------------------------------------------------------------------------------------
# what the caller passes


@dataclass(frozen=True)
class Partner:
    """The image whose background a ``mixed_rand`` variant borrows (see :func:`choose_partner`)."""

    image_id: str
    x: torch.Tensor                  # [3, H, W], preprocessed as the model's input
    objects: torch.Tensor            # bool [H, W]: its foreground (void included), see object_region(..., "report")
    classes: str                     # its VOC classes, comma-separated names (as metrics.gt_classes)


@dataclass(frozen=True)
class ImageInput:
    """One row of the batch tensor: its id, its cue mask (None: the data has none) and its partner (None: no
    image of the split has background to lend)."""

    image_id: str
    cue: torch.Tensor | None = None  # bool [H, W] at input resolution
    partner: Partner | None = None


@dataclass(frozen=True)
class Explained:
    """One explained target of one image under one protocol: which pixels are the object, what to score.

    ``score_classes``: head classes whose summed softmax probability is "the explained class's probability"
    (one class for a ``logit`` target; the ImageNet members of the VOC class for ``voc_lse``). Empty for a
    headless model: the target's value (``target`` of :func:`evaluate`) is scored instead."""

    row: int                         # index of the image in the batch
    protocol: str
    target_kind: str                 # as metrics.target_kind
    target_class: int | None         # as metrics.target_class
    region: torch.Tensor             # bool [H, W] at input resolution
    gt_target: str | None = None     # VOC class(es) of the region, as metrics.gt_target
    score_classes: tuple[int, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# masks and partners


def object_region(mask: np.ndarray | torch.Tensor, protocol: str, classes: Sequence[int] | None,
                  size: tuple[int, int]) -> torch.Tensor:
    """The object region (bool ``[H, W]`` at ``size``, the model's input size) of a class-index ``mask`` (image
    resolution; 0 background, 255 void) for one row: under ``report`` (or ``classes`` None) every non-background
    pixel, void included; under ``clean`` the pixels of ``classes`` and the void within :data:`VOID_REACH`
    pixels of them (an empty ``classes``: no pixel). Resized with nearest-neighbour sampling, as the mask's
    pixels are labels."""
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).to(torch.int64)
    if protocol == "report" or classes is None:
        region = m != 0
    elif protocol == "clean":
        region = torch.isin(m, torch.tensor(list(classes), dtype=torch.int64))
        if region.any():
            near = F.max_pool2d(region[None, None].float(), 2 * VOID_REACH + 1, stride=1, padding=VOID_REACH)[0, 0]
            region = region | ((m == VOID) & (near > 0))
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    return at_input_size(region, size)


def at_input_size(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A boolean mask (non-zero = on; e.g. a sample's ``extra_masks["cue"]``) as bool ``[H, W]`` at ``size``,
    by nearest-neighbour sampling, as the batch job resizes images to the model's input size."""
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask) != 0
    if tuple(m.shape) == tuple(size):
        return m
    return F.interpolate(m[None, None].float(), size=tuple(size), mode="nearest")[0, 0] > 0.5


def partner_order(image_id: str, ids: Sequence[str], seed: int = 0) -> list[str]:
    """Every other id of the split, in the order of a seeded hash of ``(seed, image_id, other)``: a function of
    the id and the *set* of ids only, so any shard, batch or resumed run draws the same partners."""
    def rank(other: str) -> str:
        return hashlib.sha1(f"{seed}\x1f{image_id}\x1f{other}".encode()).hexdigest()

    return sorted((o for o in set(ids) if o != image_id), key=rank)


def choose_partner(image_id: str, ids: Sequence[str], has_background: Callable[[str], bool],
                   seed: int = 0) -> str | None:
    """The ``mixed_rand`` partner of ``image_id``: the first id of :func:`partner_order` whose background is
    non-empty (``has_background(id)``, asked lazily: usually once), or None when no other image has any."""
    return next((o for o in partner_order(image_id, ids, seed) if has_background(o)), None)


def partner_from_dataset(dataset, image_id: str, preprocess, class_names: Sequence[str],
                         ids: Sequence[str] | None = None, seed: int = 0) -> Partner | None:
    """The :class:`Partner` of ``image_id`` read from a data source whose ``ids`` list its images and whose
    indexing returns :class:`compute.data.voc.Sample` s (VOC, the synthetic set): chosen by
    :func:`choose_partner` over ``ids`` (default ``dataset.ids``; pass the whole split's list, not a shard's or a
    ``--limit``'s, so that every run over the split draws the same partners), preprocessed with ``preprocess``
    (``LoadedModel.preprocess()``), its objects at the model's input size. An unreadable image counts as one
    without background. None when no other image has background."""
    position = {i: k for k, i in enumerate(dataset.ids)}
    samples: dict[str, object] = {}

    def has_background(other: str) -> bool:
        if other not in position:
            return False
        try:
            samples[other] = sample = dataset[position[other]]
        except Exception:  # noqa: BLE001 - a broken image is skipped by the job; here it just lends nothing
            return False
        return bool((np.asarray(sample.mask) == 0).any())

    chosen = choose_partner(image_id, ids if ids is not None else dataset.ids, has_background, seed)
    if chosen is None:
        return None
    sample = samples[chosen]
    names = ",".join(class_names[c] if 0 <= c < len(class_names) else f"class_{c}" for c in sample.classes_present)
    return Partner(chosen, preprocess(sample.image), object_region(sample.mask, "report", None, preprocess.size),
                   names)


# ---------------------------------------------------------------------------------------------------------------
# fills and variants


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with zero padding (the normalised convolution divides the
    padding's weight out again)."""
    k = _gaussian_kernel(sigma).to(x.dtype).to(x.device)
    c, r = x.shape[1], k.numel() // 2
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)


def fill_values(x: torch.Tensor, keep: torch.Tensor, fill: str, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> torch.Tensor:
    """What replaces the removed pixels of images ``x`` ``[N, 3, H, W]`` (model-input space), given the pixels
    that stay, ``keep`` (bool ``[N, H, W]``). ``gray`` needs the model's normalisation ``mean``/``std``."""
    if fill == "gray":
        if mean is None or std is None:
            raise ValueError("fill 'gray' needs the model's normalisation mean and std")
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return ((0.5 - m) / s).expand_as(x)
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if fill == "blur":
        w = keep[:, None].to(x.dtype)
        sigma = BLUR_SIGMA * max(x.shape[-2:])
        num, den = _blur(x * w, sigma), _blur(w, sigma)
        kept_mean = (x * w).sum(dim=(2, 3), keepdim=True) / w.sum(dim=(2, 3), keepdim=True).clamp(min=1)
        return torch.where(den > _KEPT_WEIGHT_FLOOR, num / den.clamp(min=_KEPT_WEIGHT_FLOOR), kept_mean)
    raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")


def replace_region(x: torch.Tensor, region: torch.Tensor, fill: str, mean=None, std=None) -> torch.Tensor:
    """``x`` ``[N, 3, H, W]`` with the pixels of ``region`` (bool ``[N, H, W]``) replaced by the fill computed
    from the others; every pixel outside ``region`` is left exactly as it was."""
    region = region.to(x.device)
    return torch.where(region[:, None], fill_values(x, ~region, fill, mean, std), x)


def paste(obj_x: torch.Tensor, obj_region: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The pixels of ``obj_region`` from ``obj_x``, the rest from ``background`` (all ``[N, ...]``)."""
    return torch.where(obj_region.to(obj_x.device)[:, None], obj_x, background)


# ---------------------------------------------------------------------------------------------------------------
# the batch entry point


def _not_made(region: torch.Tensor) -> str | None:
    if not bool(region.any()):
        return NOT_MADE["empty"]
    if bool(region.all()):
        return NOT_MADE["full"]
    return None


def _plan(images: Sequence[ImageInput], requests: Sequence[Explained]):
    """The distinct variant inputs to build: ``(kind, row, region index)`` per input, and per request and
    variant either the input's index or the reason it cannot be made. Requests of one image whose regions are
    equal share their inputs (e.g. ``report`` and ``clean`` on a single-class image)."""
    regions: list[tuple[int, torch.Tensor]] = []
    builds: list[tuple[str, int, int]] = []
    where: dict[tuple[str, int, int], int] = {}
    plan: list[dict[str, int | str]] = []

    def build(kind: str, row: int, region: int) -> int:
        key = (kind, row, region)
        if key not in where:
            where[key] = len(builds)
            builds.append(key)
        return where[key]

    for req in requests:
        region = next((i for i, (row, r) in enumerate(regions) if row == req.row and torch.equal(r, req.region)),
                      None)
        if region is None:
            region = len(regions)
            regions.append((req.row, req.region.bool()))
        image = images[req.row]
        why = _not_made(req.region)
        per: dict[str, int | str] = {}
        per["only_fg"] = why or build("only_fg", req.row, region)
        per["no_fg"] = why or build("no_fg", req.row, region)
        per["mixed_rand"] = why or (NOT_MADE["no_partner"] if image.partner is None
                                    else build("mixed_rand", req.row, region))
        if image.cue is not None:
            per["no_cue"] = NOT_MADE["empty_cue"] if not bool(image.cue.any()) else build("no_cue", req.row, -1)
        plan.append(per)
    return regions, builds, plan


def _inputs(x: torch.Tensor, images: Sequence[ImageInput], regions, builds, fill: str, mean, std
            ) -> torch.Tensor:
    """The variant images ``[len(builds), 3, H, W]``, each fill computed in one batched call per kind."""
    out = torch.empty((len(builds), *x.shape[1:]), dtype=x.dtype, device=x.device)
    for kind in VARIANTS:
        idx = [i for i, b in enumerate(builds) if b[0] == kind]
        if not idx:
            continue
        rows = [builds[i][1] for i in idx]
        src = x[rows]
        if kind == "no_cue":
            removed = torch.stack([images[r].cue.bool() for r in rows]).to(x.device)
            out[idx] = replace_region(src, removed, fill, mean, std)
            continue
        obj = torch.stack([regions[builds[i][2]][1] for i in idx]).to(x.device)
        if kind == "only_fg":
            out[idx] = replace_region(src, ~obj, fill, mean, std)
        elif kind == "no_fg":
            out[idx] = replace_region(src, obj, fill, mean, std)
        else:  # mixed_rand: the partner's objects removed first, then ours pasted on
            partners = [images[r].partner for r in rows]
            px = torch.stack([p.x for p in partners]).to(x.device, x.dtype)
            pobj = torch.stack([p.objects.bool() for p in partners]).to(x.device)
            out[idx] = paste(src, obj, replace_region(px, pobj, fill, mean, std))
    return out


def _forward(model: torch.nn.Module, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """Model outputs (float32) of ``x``, ``chunk`` inputs at a time, without autograd; nothing runs for none."""
    if not len(x):
        return torch.empty(0)
    with torch.inference_mode():
        return torch.cat([model(x[i:i + chunk]).float() for i in range(0, len(x), chunk)])


def _scores(outputs: torch.Tensor, score_classes: list[tuple[int, ...]], target) -> list[float]:
    """Per output row, the explained class's probability (summed over its head classes ``score_classes[i]``)
    or, with no classes (headless), the target's value."""
    if not len(score_classes):
        return []
    if all(score_classes):
        probs = torch.softmax(outputs.float(), dim=-1)
        return [float(probs[i, list(c)].sum()) for i, c in enumerate(score_classes)]
    if target is None:
        raise ValueError("a headless model's rows need the target (compute.targets.Target) to score")
    return target(outputs.float())[0].tolist()


def _top1(outputs: torch.Tensor, n: int, headless: bool) -> list[int | None]:
    return [None] * n if headless or not n else outputs.argmax(dim=-1).tolist()


def evaluate(model: torch.nn.Module, x: torch.Tensor, images: Sequence[ImageInput],
             requests: Sequence[Explained], *, fill: str = "blur", mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None, original_outputs: torch.Tensor | None = None, target=None,
             headless: bool = False, label: Callable[[int], str | None] | None = None,
             voc_name: Callable[[int], str | None] | None = None, chunk: int = 64) -> list[dict]:
    """Counterfactual rows (``store.schema.COUNTERFACTUALS``) of one batch; the batch job calls this once per
    batch, after its captures, and commits the rows with the batch (``writer.write_batch(key, {...,
    "counterfactuals": rows})``).

    What it needs:

    - ``model``: the classifier or backbone, in eval mode, on ``x``'s device;
    - ``x``: ``[B, 3, H, W]``, the batch exactly as fed to the model (preprocessed, normalised, input size);
    - ``images``: one :class:`ImageInput` per row of ``x``: its id, its cue mask at input resolution (None when
      the data has no cue masks: then no ``no_cue`` rows) and its :class:`Partner` (from
      :func:`choose_partner` over the *whole split's* ids, not the shard's; None when no image has background);
    - ``requests``: one :class:`Explained` per explained target × protocol of an image (``region`` from
      :func:`object_region` at the input size);
    - ``mean``/``std``: the model's normalisation (``LoadedModel.mean``/``std``; needed for ``fill="gray"``);
    - ``original_outputs``: ``[B, K]`` model outputs on ``x`` (the capture's; None: one more forward here);
    - ``headless``/``target``: for a headless model, the run's :class:`compute.targets.Target`, whose value is
      scored instead of a probability;
    - ``label``: head class -> name (``LoadedModel.label``); ``voc_name``: head class -> the VOC class name it
      maps to, or None (from the class map; None when there is no class map).

    Cost: forward passes only, no gradients; 3 inputs per distinct object region of an image (one region per
    image for a top-1 target, whatever the protocols, when the explained class covers all the foreground)
    plus 1 per image with a cue mask: at most 4 per image then; in chunks of ``chunk``.

    Rows: one per request × variant (``no_cue`` only for images with a cue mask); a variant that cannot be
    made (object region empty or the whole image, no partner, empty cue) is a row with ``reason`` set and
    every result column NULL.
    """
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
    if len(images) != x.shape[0]:
        raise ValueError(f"{len(images)} images for a batch of {x.shape[0]}")
    if not requests:
        return []
    regions, builds, plan = _plan(images, requests)
    variant_outputs = _forward(model, _inputs(x, images, regions, builds, fill, mean, std), chunk)
    if original_outputs is None:
        original_outputs = _forward(model, x, chunk)

    classes = [() if headless else tuple(r.score_classes) for r in requests]
    if not headless and not all(classes):
        raise ValueError("every request of a classifier needs score_classes (the head classes explained)")
    orig = original_outputs.float().cpu()[[r.row for r in requests]]
    orig_score, orig_pred = _scores(orig, classes, target), _top1(orig, len(requests), headless)

    made = [(i, v, b) for i, per in enumerate(plan) for v, b in per.items() if isinstance(b, int)]
    outs = variant_outputs.cpu()[[b for _, _, b in made]] if made else variant_outputs.cpu()
    outcome = dict(zip([(i, v) for i, v, _ in made],
                       zip(_scores(outs, [classes[i] for i, _, _ in made], target), _top1(outs, len(made), headless))))

    rows = []
    for i, (req, per) in enumerate(zip(requests, plan)):
        image = images[req.row]
        for variant, b in per.items():
            row = {**dict.fromkeys(_RESULT_COLUMNS), "image_id": image.image_id, "target_kind": req.target_kind,
                   "target_class": req.target_class, "protocol": req.protocol, "variant": variant, "fill": fill,
                   "gt_target": req.gt_target, "region_area": float(req.region.float().mean()),
                   "score_kind": "value" if headless else "probability", "orig_score": orig_score[i],
                   "orig_pred_class": orig_pred[i], "reason": b if isinstance(b, str) else None}
            if variant == "mixed_rand" and image.partner is not None:
                row["partner_id"], row["partner_classes"] = image.partner.image_id, image.partner.classes
            if (i, variant) in outcome:
                row["score"], pred = outcome[(i, variant)]
                if pred is not None:
                    row.update(pred_class=pred, pred_label=label(pred) if label else None,
                               pred_voc=voc_name(pred) if voc_name else None, same_top1=pred == orig_pred[i])
            rows.append(row)
    return rows


__all__ = ["VARIANTS", "FILLS", "Partner", "ImageInput", "Explained", "object_region", "at_input_size", "partner_order",
           "choose_partner", "partner_from_dataset", "fill_values", "replace_region", "paste", "evaluate"]

"""The rows a batch writes: metric and heatmap rows of each pass's maps, its ``images`` rows, its
counterfactual variant rows (:mod:`compute.runner.variants`) and its skips,
gathered in one :class:`BatchRows` and committed by it, the same way on every path (a batch's own part set,
or the part set of methods finished in the background)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from compute.data.classmap import ClassMap
from compute.methods import Method
from compute.metrics.batched import score_images
from compute.models import LoadedModel
from compute.runner.context import RunContext
from compute.runner.passes import Pass, PassOutputs
from store.schema import encode_heatmaps

# method key -> (method, its maps of a pass [n, h, w], seconds per image)
PassMaps = dict[str, tuple[Method, torch.Tensor, float]]


@dataclass
class BatchRows:
    """The rows of one part set (``key``), gathered while it is computed and written by :meth:`commit`.

    ``explained``: whether the part set records explained images; only then are its tables written, the
    ``metrics`` part last and even when empty (the commit marker: a rerun does not redo what it covers). A part
    set of skips alone (nothing left to do, or every image below ``--min-confidence``) writes its skips only.
    """

    key: str
    skips: list[dict] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)
    heatmaps: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    counterfactuals: list[dict] = field(default_factory=list)
    explained: bool = False

    def commit(self, ctx: RunContext) -> int:
        """Write the part set, then count its rows as committed; returns the metric rows written."""
        with ctx.times.timed("writing"):
            ctx.writer.write_skips(self.key, self.skips)
            if self.explained:
                ctx.writer.write_batch(self.key, {"heatmaps": self.heatmaps, "images": self.images,
                                                  "counterfactuals": self.counterfactuals, "metrics": self.metrics})
        ctx.images_done.update(r["image_id"] for r in self.images)
        for skip in self.skips:  # a method's or a scorer's failure on one image: "method:<key>", "score:<key>"
            stage, _, method = skip["stage"].partition(":")
            if stage in ("method", "score"):
                ctx.map_skips[method] = ctx.map_skips.get(method, 0) + 1
        ctx.done.add_rows(self.metrics)
        ctx.done.add_variant_rows(self.counterfactuals)
        return len(self.metrics)


def class_name(class_names, c: int) -> str:
    return class_names[c] if 0 <= c < len(class_names) else f"class_{c}"


def ground_truth(protocol: str, present: list[int], explained: int | None, voc: int | None,
                 cmap: ClassMap | None, class_names) -> tuple[list[int] | None, str | None]:
    """(classes of the object mask or None for all objects, ``gt_target``) of one row.

    ``report``: all objects. ``clean``: the VOC class explained (``voc_lse``) or the VOC class the explained
    head class maps to; an empty list (row not scored) when that class has no pixel in the image or the
    explained class maps to no VOC class; all objects only when no class map applies (non-ImageNet-1k head,
    headless target, non-VOC data), as there is then no way to tell which object the map is about.
    """
    everything = ",".join(class_name(class_names, c) for c in present)
    if protocol == "report":
        return None, everything
    if voc is not None:
        return [voc], class_name(class_names, voc)
    if cmap is None or explained is None:
        return None, everything
    mapped = cmap.voc_of(explained)
    if mapped is None or mapped not in present:
        return [], None
    return [mapped], class_name(class_names, mapped)


def method_skips(m: Method, plan: Pass, items: list[dict], todo: dict, exc: BaseException,
                 class_names) -> list[dict]:
    """One skip row per image of the pass that needed ``m`` when it failed (the other methods' work is kept);
    for a present class's pass the reason names the class."""
    rows = []
    for j, it in enumerate(items):
        if m.key not in todo[it["image_id"]].get(plan.unit(j), {}):
            continue
        what = f" (explaining {class_name(class_names, plan.voc[j])})" if plan.voc is not None else ""
        rows.append({"image_id": it["image_id"], "stage": f"method:{m.key}",
                     "reason": f"{type(exc).__name__}: {exc}{what}"})
    return rows


def checked_map(out: torch.Tensor, n: int) -> torch.Tensor:
    """A method's output, refused unless it is ``[n, h, w]``."""
    if out.shape[0] != n or out.ndim != 3:
        raise RuntimeError(f"returned shape {tuple(out.shape)}, expected [{n}, h, w]")
    return out


def score_pass(plan: Pass, outputs: PassOutputs, items: list[dict], todo: dict, maps: PassMaps, curves: dict,
               ctx: RunContext, batch: BatchRows) -> None:
    """Add the metric and heatmap rows of one pass's maps (``items``: the pass's images) to ``batch``: every
    map of every image is scored against every protocol's ground truth together (:func:`score_images`), on
    the job's device; only the rows still owed are added. An image whose scoring fails (e.g. out of memory on
    a huge image) gets a skip row with the reason; the other images' rows are kept."""
    with ctx.times.timed("scoring"):
        probs = None if ctx.loaded.headless else torch.softmax(outputs.logits, dim=-1)
        maps_np = {key: out.cpu().numpy() for key, (_, out, _) in maps.items()}
        encoded = {key: encode_heatmaps(out) for key, out in maps_np.items()}  # each map's stored bytes
        owed = []  # (j, image, methods that still owe rows, the rows' ground truths)
        for j, it in enumerate(items):
            left = todo[it["image_id"]].get(plan.unit(j), {})  # method key -> protocols still owed
            keys = [key for key in maps if key in left]
            if keys:
                owed.append((j, it, keys, _truths(plan, outputs, j, it, ctx)))
        scored = _scores(plan, owed, maps, ctx, batch)
        for (j, it, keys, truths), scores in zip(owed, scored):
            if scores is not None:
                _add_rows(plan, outputs, probs, j, it, keys, truths, scores, todo, maps, maps_np, encoded, curves, ctx,
                          batch)


def _truths(plan: Pass, outputs: PassOutputs, j: int, it: dict, ctx: RunContext) -> list[tuple]:
    """``(protocol, gt_classes, gt_target)`` of each of the pass's protocols for its ``j``-th image."""
    tc = outputs.target_class[j]
    voc = plan.voc[j] if plan.voc is not None else None
    explained = tc if (tc >= 0 and voc is None and plan.target.kind == "logit") else None
    return [(protocol, *ground_truth(protocol, it["classes"], explained, voc, ctx.cmap, ctx.class_names))
            for protocol in plan.protocols]


def _scores(plan: Pass, owed: list[tuple], maps: PassMaps, ctx: RunContext, batch: BatchRows) -> list:
    """Each owed image's scores (``[method][protocol]`` rows), or None for an image whose scoring failed (its
    skip rows are added to ``batch``)."""
    def item(j, it, keys, truths):
        return ([maps[key][1][j] for key in keys], it["mask"], [(p, classes) for p, classes, _ in truths],
                it["extra_masks"].get("cue"))

    try:
        return score_images([item(*o) for o in owed], device=ctx.device)
    except (RuntimeError, MemoryError, ValueError):
        pass  # one image may be the cause: score them one by one and keep every image that can be scored
    results = []
    for o in owed:
        try:
            results.append(score_images([item(*o)], device=ctx.device)[0])
        except (RuntimeError, MemoryError, ValueError) as exc:
            results.append(None)
            batch.skips += [{"image_id": o[1]["image_id"], "stage": f"score:{key}",
                             "reason": f"{type(exc).__name__}: {exc}"[:500]} for key in o[2]]
    return results


def _add_rows(plan: Pass, outputs: PassOutputs, probs, j: int, it: dict, keys: list[str], truths: list[tuple],
              scores: list, todo: dict, maps: PassMaps, maps_np: dict, encoded: dict, curves: dict,
              ctx: RunContext, batch: BatchRows) -> None:
    """The rows of the pass's ``j``-th image (``it``), for the methods ``keys`` that still owe some."""
    loaded, cmap, class_names = ctx.loaded, ctx.cmap, ctx.class_names
    left = todo[it["image_id"]].get(plan.unit(j), {})
    tc = outputs.target_class[j]
    pred = int(outputs.logits[j].argmax()) if probs is not None else None
    voc = plan.voc[j] if plan.voc is not None else None
    target_class = voc if voc is not None else (tc if tc >= 0 else None)
    target_label = (class_name(class_names, voc) if voc is not None
                    else loaded.label(tc) if tc >= 0 else plan.target.kind)
    image = {  # what every row of the image shares, whatever the method
        "image_id": it["image_id"], "split": ctx.config.split, "model": loaded.name,
        "target_kind": plan.target.kind, "target_class": target_class, "target_label": target_label,
        "target_value": outputs.target_value[j], "pred_class": pred,
        "pred_label": loaded.label(pred) if pred is not None else None,
        "confidence": float(probs[j, pred]) if probs is not None else None,
        "gt_classes": ",".join(class_name(class_names, c) for c in it["classes"]),
        "image_group": it["meta"].get("group"),
        "correct": cmap.correct(pred, it["classes"]) if cmap is not None and pred is not None else None,
    }
    for key, per_protocol in zip(keys, scores):
        m, _, seconds = maps[key]
        common = {**image, "method": m.key, "seconds": seconds}
        if key in curves:
            common["deletion_auc"] = float(curves[key].deletion_auc[j])
            common["insertion_auc"] = float(curves[key].insertion_auc[j])
        for (protocol, _, gt_target), row in zip(truths, per_protocol):
            if protocol in left[key]:  # never a row that is already committed
                batch.metrics.append({**common, "protocol": protocol, "gt_target": gt_target, **row})
        if len(left[key]) < len(plan.protocols):
            continue  # the map's heatmap row was committed with its other protocols' rows
        heatmap = maps_np[key][j]
        batch.heatmaps.append({"image_id": it["image_id"], "method": m.key, "target_kind": plan.target.kind,
                               "target_class": target_class, "height": heatmap.shape[0],
                               "width": heatmap.shape[1], "data": encoded[key][j]})


def image_rows(items: list[dict], logits: torch.Tensor, loaded: LoadedModel, split: str, class_names,
               images_done: set) -> list[dict]:
    """The ``images`` rows (size, classes present, top-5, thumbnail, masks) of the images that have none yet."""
    probs = None if loaded.headless else torch.softmax(logits.float(), dim=-1)
    top = probs.topk(min(5, probs.shape[1]), dim=-1) if probs is not None else None
    rows = []
    for b, it in enumerate(items):
        if it["image_id"] in images_done:
            continue
        rows.append({
            "image_id": it["image_id"], "split": split, "width": it["width"], "height": it["height"],
            "gt_classes": [class_name(class_names, c) for c in it["classes"]],
            "top_classes": top.indices[b].tolist() if top is not None else [],
            "top_labels": [loaded.label(c) for c in top.indices[b].tolist()] if top is not None else [],
            "top_probs": top.values[b].tolist() if top is not None else [],
            "thumbnail": it["thumbnail"], "mask_png": it["mask_png"], "cue_png": it["cue_png"],
            "meta": json.dumps(it["meta"], default=str) if it["meta"] else None,
        })
    return rows

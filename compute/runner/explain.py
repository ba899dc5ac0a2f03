"""Explaining one batch: drop the images below ``--min-confidence``, run one capture per pass, hand it to every
method still owed, score the maps (with faithfulness curves when asked), evaluate the counterfactual variants
still owed from the captures' logits (:mod:`compute.runner.variants`), and leave the rows in the batch's
:class:`~compute.runner.rows.BatchRows`. Methods with a CPU-bound tail are handed to the background and
committed by :func:`commit_deferred` once finished."""

from __future__ import annotations

import hashlib
import time

import torch

from compute.capture import capture
from compute.methods import Method
from compute.metrics.faithfulness import deletion_insertion, probability_score, value_score
from compute.runner.background import DeferredMethods, DeferredPass, FinishedMethods
from compute.runner.context import RunContext
from compute.runner.devices import sync_device
from compute.runner.passes import Pass, PassOutputs, plan_passes
from compute.runner.rows import BatchRows, PassMaps, checked_map, image_rows, method_skips, score_pass
from compute.runner.variants import evaluate_batch, pass_requests


def explain_batch(good: list[dict], todo: dict[str, dict], x_batch: torch.Tensor, ctx: RunContext,
                  batch: BatchRows, all_methods: list[Method]) -> int:
    """Explain and score one batch's work left (``todo``, see :func:`compute.runner.resume.work_left`) into
    ``batch``; returns the number of images dropped by the confidence filter."""
    items = [it for it in good if it["image_id"] in todo]
    owed = {k for units in todo.values() for missing_per_method in units.values() for k in missing_per_method}
    methods = [m for m in all_methods if m.key in owed]
    x = x_batch[torch.tensor([it["row"] for it in items], device=x_batch.device)]
    logits: torch.Tensor | None = None
    filtered = 0
    if ctx.config.min_confidence is not None:
        items, x, logits, skips = drop_unconfident(items, x, ctx)
        batch.skips += skips
        filtered = len(skips)
        if not items:
            return filtered
    batch.explained = True
    requests: list = []  # the variants owed, gathered per pass, evaluated once for the batch
    logits = explain_passes(items, todo, x, logits, methods, ctx, batch, requests)
    evaluate_batch(items, x, logits, requests, ctx, batch)
    batch.images += image_rows(items, logits, ctx.loaded, ctx.config.split, ctx.class_names, ctx.images_done)
    return filtered


def drop_unconfident(items: list[dict], x: torch.Tensor, ctx: RunContext):
    """(items, inputs, logits, skip rows): the images whose top-1 probability is above ``--min-confidence``
    (one gradient-free forward, before any capture), and a skip row for each other image."""
    threshold = ctx.config.min_confidence
    with torch.inference_mode():
        logits = ctx.loaded.model(x).float()
    conf = torch.softmax(logits, dim=-1).max(dim=-1).values
    keep = [i for i in range(len(items)) if float(conf[i]) > threshold]
    skips = [{"image_id": items[i]["image_id"], "stage": "confidence",
              "reason": f"top-1 probability {float(conf[i]):.4f} is not above --min-confidence {threshold}"}
             for i in range(len(items)) if i not in keep]
    return [items[i] for i in keep], x[keep], logits[keep], skips


def explain_passes(items: list[dict], todo: dict[str, dict], x: torch.Tensor, logits: torch.Tensor | None,
                   methods: list[Method], ctx: RunContext, batch: BatchRows, requests: list) -> torch.Tensor:
    """Capture, explain and score every pass of the batch, adding the counterfactual variants each pass owes to
    ``requests``; returns the logits of all ``items`` (from the captures, the confidence filter's forward, or
    one more forward for images no capture saw)."""
    requires = set().union(*(m.requires for m in methods))
    covered = torch.full((len(items),), logits is not None, dtype=torch.bool)  # whose logits are known
    for plan in plan_passes(items, todo, ctx.target, ctx.config, ctx.cmap):
        with ctx.times.timed("capture"):
            with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=ctx.config.precision == "bf16"):
                cap = capture(ctx.loaded.model, x[plan.positions], requires, target=plan.target)
            sync_device(ctx.device)
        if logits is None:
            logits = torch.zeros(len(items), cap.outputs.shape[1])
        logits[plan.positions] = cap.outputs.to(logits.device, logits.dtype)
        covered[plan.positions] = True
        outputs = explain_pass(plan, cap, items, todo, methods, ctx, batch)
        requests += pass_requests(plan, outputs, items, todo, ctx)
    if logits is None or not bool(covered.all()):  # images no capture saw (no explainable class)
        with torch.inference_mode():
            full = ctx.loaded.model(x).float()
        logits = full if logits is None else torch.where(covered[:, None].to(full.device), logits.to(full.device),
                                                         full)
    return logits


def explain_pass(plan: Pass, cap, items: list[dict], todo: dict, methods: list[Method], ctx: RunContext,
                 batch: BatchRows) -> PassOutputs:
    """Run the methods on one capture and score their maps into ``batch``; the methods that can finish on the
    CPU go to the background, as a part set of their own. Returns what scoring kept of the capture."""
    pass_items = [items[i] for i in plan.positions]
    maps, deferred = run_methods(plan, cap, pass_items, todo, methods, ctx, batch)
    curves = faithfulness_curves(plan, cap, {k: v[1] for k, v in maps.items()}, ctx) \
        if ctx.config.faithfulness and maps else {}
    outputs = PassOutputs.of(cap)
    if deferred:
        key = hashlib.sha1(f"{batch.key}|{plan.positions}|{plan.voc}|later|{','.join(deferred)}".encode())
        ctx.background.submit(DeferredPass(key.hexdigest()[:16], plan, outputs, pass_items, todo, deferred))
    score_pass(plan, outputs, pass_items, todo, maps, curves, ctx, batch)
    return outputs


def run_methods(plan: Pass, cap, items: list[dict], todo: dict, methods: list[Method], ctx: RunContext,
                batch: BatchRows) -> tuple[PassMaps, DeferredMethods]:
    """(maps, deferred): the maps of the methods the pass's images (``items``) still owe, timed, and the
    methods handed to the background (:meth:`compute.methods.Method.deferred`; only when the job has one and
    computes no faithfulness curves, which need the model and the input). A failing method becomes skip rows
    in ``batch``; it must not lose the others' work."""
    maps: PassMaps = {}
    deferred: DeferredMethods = {}
    defer = ctx.background is not None and not ctx.config.faithfulness
    for m in methods:
        if not any(m.key in todo[it["image_id"]].get(plan.unit(j), {}) for j, it in enumerate(items)):
            continue
        t0 = time.perf_counter()
        try:
            finish = m.deferred(cap) if defer else None
            if finish is not None:
                deferred[m.key] = (m, finish)
                out = None
            else:
                out = checked_map(m(cap).float(), len(items))
        except Exception as exc:
            batch.skips += method_skips(m, plan, items, todo, exc, ctx.class_names)
            continue
        sync_device(ctx.device)
        spent = time.perf_counter() - t0
        ctx.times.methods += spent
        if out is not None:
            maps[m.key] = (m, out.detach(), spent / len(items))
    return maps, deferred


def faithfulness_curves(plan: Pass, cap, maps: dict[str, torch.Tensor], ctx: RunContext) -> dict:
    """{method key: Curves} of one pass's maps: deletion/insertion of the explained class's probability (or,
    with no class to ask, of the target's value)."""
    with ctx.times.timed("faithfulness"):
        loaded = ctx.loaded
        if plan.voc is not None:
            score_fn = probability_score([ctx.cmap.indices_of(v) for v in plan.voc], cap.outputs.shape[1])
        elif not loaded.headless and bool((cap.target_class >= 0).all()):
            score_fn = probability_score([[int(c)] for c in cap.target_class], cap.outputs.shape[1])
        else:
            score_fn = value_score(plan.target)
        return deletion_insertion(loaded.model, cap.input, maps, score_fn,
                                  patch_size=tuple(loaded.model.patch_embed.patch_size),
                                  steps=ctx.config.faithfulness_steps, baseline=ctx.config.faithfulness_baseline,
                                  chunk=256 if ctx.device.type == "cuda" else 64)


def commit_deferred(deferred: DeferredPass, finished: FinishedMethods, ctx: RunContext) -> int:
    """Score and commit the maps of methods finished in the background, as the pass's own part set (a method
    that failed there, or returned a bad shape, becomes skip rows); returns the metric rows written."""
    batch = BatchRows(deferred.key, explained=True)
    maps: PassMaps = {}
    n = len(deferred.items)
    for key, (m, result, seconds) in finished.items():
        ctx.times.background += seconds
        try:
            if isinstance(result, Exception):
                raise result
            maps[key] = (m, checked_map(result, n), seconds / n)
        except Exception as exc:
            batch.skips += method_skips(m, deferred.plan, deferred.items, deferred.todo, exc, ctx.class_names)
    score_pass(deferred.plan, deferred.outputs, deferred.items, deferred.todo, maps, {}, ctx, batch)
    return batch.commit(ctx)

"""Counterfactual variants in the batch job (:mod:`compute.counterfactuals`): which ``(image, explained target,
protocol)`` keys still owe variant rows, what each pass of a batch asks for, and one batched evaluation per
batch whose rows are committed with the batch's other tables.

Resume: the variants are one more unit of work beside the methods, keyed in :class:`CommittedKeys` under
:func:`work_key` (``counterfactuals(<fill>)``) with the image, explained target and protocol, exactly as a
method's metric rows are. A rerun computes the variants of exactly the keys that have no committed
``counterfactuals`` row for that fill: a batch whose metrics are committed but that has no variant rows (a store
written before the table existed, or a run with ``--no-counterfactuals``) gets them from one gradient-free capture
of its images (no method runs again); nothing committed is written twice.

The fill is not part of the run id: it changes no metric, only which variant rows are made, and every row says
its ``fill``. A rerun with another ``--cf-fill`` adds that fill's rows to the same run (forward passes only), so
the verdicts of two fills can be compared on the same decisions (``vitlens report --shortcuts --cf-fill``).

Partners (``mixed_rand``) are drawn from the *whole split's* ids, not the shard's nor a ``--limit``'s, so every
shard and every resumed run draws the same partner; they are read and preprocessed in the DataLoader workers
(:class:`~compute.runner.inputs.DecodedImages`).
"""

from __future__ import annotations

import functools
from typing import Callable

import pyarrow.parquet as pq
import torch

from compute.counterfactuals import Explained, ImageInput, Partner, at_input_size, evaluate, object_region, \
    partner_from_dataset
from compute.runner.context import RunContext
from compute.runner.devices import sync_device
from compute.runner.passes import Pass, PassOutputs
from compute.runner.resume import work_key
from compute.runner.rows import BatchRows, ground_truth
from store.commits import committed


def committed_variant_keys(out, run_id: str) -> list[tuple]:
    """The run's committed variant keys, shaped as :class:`~compute.runner.resume.CommittedKeys` takes them:
    ``(image_id, work_key(fill), target_class, protocol)``."""
    keys = set()
    for path in committed(out, run_id).files["counterfactuals"]:
        t = pq.read_table(path, columns=["image_id", "fill", "target_class", "protocol"])
        keys.update(zip(*(t.column(c).to_pylist() for c in ("image_id", "fill", "target_class", "protocol"))))
    return [(image_id, work_key(fill), tc, protocol) for image_id, fill, tc, protocol in keys]


def partner_reader(dataset, preprocess, class_names, seed: int) -> Callable[[str], Partner | None] | None:
    """``image_id -> Partner`` over ``dataset`` (the whole split), for the DataLoader workers; None when the data
    source does not list its ids (then no image has a partner: ``mixed_rand`` rows say so)."""
    if not hasattr(dataset, "ids"):
        return None
    return functools.partial(partner_from_dataset, dataset, preprocess=preprocess, class_names=tuple(class_names),
                             ids=list(dataset.ids), seed=seed)


def pass_requests(plan: Pass, outputs: PassOutputs, items: list[dict], todo: dict, ctx: RunContext
                  ) -> list[Explained]:
    """The variant requests of one pass (``items``: the batch's images; the pass takes ``plan.positions``): one
    per image × protocol whose variant rows are still owed, with the object region of the protocol."""
    key = work_key(ctx.config.cf_fill)
    cmap, class_names, size = ctx.cmap, ctx.class_names, ctx.loaded.input_size
    requests = []
    for j, row in enumerate(plan.positions):
        it = items[row]
        owed = todo[it["image_id"]].get(plan.unit(j), {}).get(key, ())
        if not owed:
            continue
        tc, voc = outputs.target_class[j], plan.voc[j] if plan.voc is not None else None
        explained = tc if (tc >= 0 and voc is None and plan.target.kind == "logit") else None
        for protocol in owed:
            classes, gt_target = ground_truth(protocol, it["classes"], explained, voc, cmap, class_names)
            score_classes = (cmap.indices_of(voc) if voc is not None
                             else (explained,) if explained is not None else ())
            requests.append(Explained(row=row, protocol=protocol, target_kind=plan.target.kind,
                                      target_class=voc if voc is not None else (tc if tc >= 0 else None),
                                      region=object_region(it["mask"], protocol, classes, size),
                                      gt_target=gt_target, score_classes=tuple(score_classes)))
    return requests


def image_inputs(items: list[dict], size: tuple[int, int]) -> list[ImageInput]:
    """One :class:`ImageInput` per image of the batch: its cue mask at the input size and its partner."""
    return [ImageInput(it["image_id"], at_input_size(it["extra_masks"]["cue"], size) if "cue" in it["extra_masks"]
                       else None, it.get("partner")) for it in items]


def evaluate_batch(items: list[dict], x: torch.Tensor, logits: torch.Tensor, requests: list[Explained],
                   ctx: RunContext, batch: BatchRows) -> None:
    """The variant rows of the batch's ``requests`` into ``batch``, from the logits the captures already have
    (forward passes of the variants only). Requests scored by a class probability and those scored by the
    target's value (a headless model, or a target that is no class: ``cls_norm``, ``cosine``) go in separate
    calls. A failure becomes a skip row per image (stage ``counterfactuals``): it must not lose the batch."""
    if not requests:
        return
    loaded, cmap, class_names = ctx.loaded, ctx.cmap, ctx.class_names
    images = image_inputs(items, loaded.input_size)

    def voc_name(c: int) -> str | None:
        v = cmap.voc_of(c)
        return class_names[v] if v is not None else None

    with ctx.times.timed("counterfactuals"):
        try:
            rows = []
            for by_value in (False, True):
                group = [r for r in requests if (not r.score_classes) == by_value]
                if group:
                    rows += evaluate(
                        loaded.model, x, images, group, fill=ctx.config.cf_fill, mean=loaded.mean, std=loaded.std,
                        original_outputs=logits, target=ctx.target, headless=by_value, label=loaded.label,
                        voc_name=voc_name if cmap is not None else None,
                        chunk=256 if ctx.device.type == "cuda" else 64)
            batch.counterfactuals += rows
        except Exception as exc:  # noqa: BLE001 - recorded, as a failing method is
            batch.skips += [{"image_id": items[i]["image_id"], "stage": "counterfactuals",
                             "reason": f"{type(exc).__name__}: {exc}"} for i in sorted({r.row for r in requests})]
        sync_device(ctx.device)

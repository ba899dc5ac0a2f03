"""What a run still owes: the committed row keys, the units of work of an image, the work left of a batch, and
the part name that says exactly what a batch computes.

A *unit of work* is what one capture explains for one image: the ``--target`` pass (:data:`TARGET_PASS`), or,
with ``explain="present"``, one present VOC class (its index, an ``int``).
"""

from __future__ import annotations

import enum
import hashlib

from compute.data.classmap import ClassMap
from compute.methods import Method
from compute.runner.config import RunConfig


class Unit(enum.Enum):
    """The unit of work that is no VOC class index (those are plain ``int``)."""

    TARGET_PASS = "target"


TARGET_PASS = Unit.TARGET_PASS  # the unit of the ``--target`` pass (top-1 by default)


def work_key(fill: str) -> str:
    """The key the counterfactual variants of one fill take beside the method keys of a unit of work (in
    ``todo``, part names and :class:`CommittedKeys`): they are owed, resumed and committed as a method's rows
    are (see :mod:`compute.runner.variants`)."""
    return f"counterfactuals({fill})"


class CommittedKeys:
    """The committed ``(image_id, method, target_class, protocol)`` keys of a run, asked per unit of work.

    The ``--target`` pass's class is only known after the forward pass (the model's top-1) but is one per image
    and method, so any committed target counts; a present VOC class is known before any forward (from the
    mask) and is matched exactly — so the class explained is part of done-ness.
    """

    def __init__(self, keys=()):
        self.exact: set[tuple] = set()
        self.any_target: set[tuple] = set()
        self.add(keys)

    def add(self, keys) -> None:
        for image_id, method, target_class, protocol in keys:
            self.exact.add((image_id, method, target_class, protocol))
            self.any_target.add((image_id, method, protocol))

    def add_rows(self, rows: list[dict]) -> None:
        self.add((r["image_id"], r["method"], r["target_class"], r["protocol"]) for r in rows)

    def add_variant_rows(self, rows: list[dict]) -> None:
        """Count ``counterfactuals`` rows (``store.schema.COUNTERFACTUALS``) as done, under :func:`work_key`."""
        self.add((r["image_id"], work_key(r["fill"]), r["target_class"], r["protocol"]) for r in rows)

    def has(self, image_id: str, method: str, unit, protocol: str) -> bool:
        if unit is TARGET_PASS:
            return (image_id, method, protocol) in self.any_target
        return (image_id, method, unit, protocol) in self.exact


def target_pass_protocols(config: RunConfig) -> list[str]:
    """The protocols the ``--target`` pass is scored under (with ``explain="present"`` clean has passes of its
    own, one per present class)."""
    return [p for p in config.protocols if config.explain == "top1" or p != "clean"]


def units_of(item: dict, config: RunConfig, cmap: ClassMap | None) -> dict:
    """unit -> the protocols it is scored under, for one image."""
    units = {}
    top = target_pass_protocols(config)
    if top:
        units[TARGET_PASS] = tuple(top)
    if config.explain == "present":
        for v in cmap.explainable(item["classes"]):
            units[v] = ("clean",)
    return units


def work_left(good: list[dict], methods: list[Method], config: RunConfig, cmap: ClassMap | None,
              done: CommittedKeys, images_done: set) -> dict[str, dict]:
    """image_id -> {unit -> {method key -> protocols still missing a committed row}}: exactly the rows a run
    still owes, per (image, method, target, protocol); the counterfactual variants count as one more method
    (:func:`work_key`) unless turned off. An image with nothing left but no committed ``images`` row is listed
    with no units, for that row."""
    keys = [m.key for m in methods] + ([work_key(config.cf_fill)] if config.counterfactuals else [])
    left = {}
    for it in good:
        image_id, units = it["image_id"], {}
        for unit, protocols in units_of(it, config, cmap).items():
            missing_per_method = {}
            for key in keys:
                missing = tuple(p for p in protocols if not done.has(image_id, key, unit, p))
                if missing:
                    missing_per_method[key] = missing
            if missing_per_method:
                units[unit] = missing_per_method
        if units or image_id not in images_done:
            left[image_id] = units
    return left


def work_names(todo: dict[str, dict], config: RunConfig) -> list[str]:
    """The work of a batch as sorted strings, for its part name (for the ``--target`` pass with every protocol
    left: ``image:method,method``, the names earlier versions gave such a batch)."""
    top = tuple(target_pass_protocols(config))
    names = []
    for image_id, units in todo.items():
        if not units:
            names.append(f"{image_id}:")
        for unit, missing_per_method in units.items():
            tag = "" if unit is TARGET_PASS else f"@{unit}"
            full = top if unit is TARGET_PASS else ("clean",)
            names.append(f"{image_id}{tag}:" + ",".join(k if missing == full else f"{k}[{'+'.join(missing)}]"
                                                      for k, missing in missing_per_method.items()))
    return sorted(names)


def part_key(items: list[dict], method_keys: list[str], todo: dict[str, dict], config: RunConfig) -> str:
    """The name of a batch's part files. It says exactly what the batch computes, so a rerun that finishes
    part of a batch (one method failed, a background commit was lost) writes new parts instead of replacing
    committed ones, and a retried batch replaces its own."""
    work = [it["image_id"] for it in items] + method_keys + work_names(todo, config)
    return hashlib.sha1("|".join(work).encode()).hexdigest()[:16]

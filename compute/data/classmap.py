"""Which ImageNet-1k classes count as which Pascal VOC class — the map behind ``correct``, ``gt_target`` and the
class-aware ``clean`` protocol.

The map is data, shipped as ``imagenet_to_voc.json`` beside this module, with its provenance:

- **Rule.** A VOC class takes the ImageNet-1k classes whose WordNet synset is a hyponym ("a kind of") of the
  WordNet synset named for it — e.g. all 118 domestic-dog breeds (indices 151–268) → dog, the five domestic
  cats (281–285) → cat, airliner and warplane → aeroplane, all 59 birds → bird. Where VOC's own class
  definition is wider or narrower than that synset, the file says so per class: ``added`` entries (with the
  reason, e.g. tricycle and unicycle → bicycle, as VOC's annotation guidelines count them as bicycles) and
  ``excluded`` near misses (e.g. wolves and wild dogs are not dog, big cats are not cat, water buffalo and
  bison are not cow, a vase is not a potted plant).
- **Order.** Indices are ILSVRC-2012's standard class order (synset ids sorted), as timm's ``ImageNetInfo``
  numbers them; every member is also written as its synset id and lemma so that a test can check the order.
- **Coverage.** Every VOC class has at least one ImageNet-1k class, but two only through ``added`` entries:
  ``pottedplant`` (via "pot, flowerpot", the container, whose photos show potted plants) and ``tvmonitor``
  (television, monitor, CRT screen, desktop computer). ``person`` has just three synsets (ballplayer, groom,
  scuba diver), so a VOC person is rarely an ImageNet model's top-1. Classes with no member at all would be
  listed under ``no_counterpart`` (none at present); code handles such a class as "never predicted".
- Each ImageNet class maps to at most one VOC class; the other 751 ImageNet classes map to none.

**Heads trained on the data.** A head whose class names are the data's own object classes (the demo's, or any
model fine-tuned on VOC with VOC's names as labels) needs no such map: each class is the head class of the
same name (:func:`by_name`), and everything class-aware works as with the map.

**Which heads the ImageNet map applies to.** Only a 1000-class head in ImageNet-1k order (timm's ``*in1k`` and
``*_ft_in1k`` weights, and random initialisations of such a head). A 21k/12k head, a custom head, or a
headless backbone has no map: :func:`classmap_for` returns ``None`` with the reason, the class-aware parts
then fall back (``correct`` is NULL, ``clean`` scores against all objects) and ``--explain present`` refuses
to run, saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from compute.data.voc import VOC_CLASSES

DATA_FILE = Path(__file__).with_name("imagenet_to_voc.json")
IMAGENET_CLASSES = 1000


class ClassMapError(ValueError):
    """The class-aware protocol cannot be used with this model or data; the message says why."""


@dataclass(frozen=True)
class ClassMap:
    """ImageNet-1k index → VOC class index (1..20; 0 is background and never a target)."""

    members: dict[int, tuple[int, ...]]  # VOC index -> ImageNet-1k indices
    voc_classes: tuple[str, ...] = VOC_CLASSES
    name: str = "custom"
    version: int = 0
    info: dict = field(default_factory=dict, compare=False, repr=False)  # the file's per-class documentation
    head_classes: int = IMAGENET_CLASSES  # how many classes the head has (indices are 0..head_classes-1)

    def __post_init__(self):
        seen: dict[int, int] = {}
        for voc, idx in self.members.items():
            if not 0 < voc < len(self.voc_classes):
                raise ClassMapError(f"VOC class index {voc} is outside 1..{len(self.voc_classes) - 1}")
            for i in idx:
                if not 0 <= i < self.head_classes:
                    raise ClassMapError(f"head index {i} (for {self.voc_classes[voc]}) is outside "
                                        f"0..{self.head_classes - 1}")
                if i in seen:
                    raise ClassMapError(f"ImageNet index {i} maps to both {self.voc_classes[seen[i]]} and "
                                        f"{self.voc_classes[voc]}; each class may map to one VOC class")
                seen[i] = voc
        object.__setattr__(self, "_to_voc", seen)

    @classmethod
    def from_file(cls, path: str | Path = DATA_FILE) -> "ClassMap":
        doc = json.loads(Path(path).read_text())
        index = {n: i for i, n in enumerate(VOC_CLASSES)}
        unknown = set(doc["classes"]) - set(index)
        if unknown:
            raise ClassMapError(f"{path}: unknown VOC class(es) {sorted(unknown)}")
        members = {index[n]: tuple(int(i) for i in c["indices"]) for n, c in doc["classes"].items()}
        return cls(members=members, name=doc.get("name", "custom"), version=int(doc.get("version", 0)),
                   info=doc)

    def voc_of(self, imagenet_index: int | None) -> int | None:
        """The VOC class an ImageNet class counts as, or None."""
        if imagenet_index is None:
            return None
        return self._to_voc.get(int(imagenet_index))  # type: ignore[attr-defined]

    def indices_of(self, voc: int) -> tuple[int, ...]:
        return self.members.get(int(voc), ())

    @property
    def no_counterpart(self) -> list[str]:
        """VOC object classes that no ImageNet-1k class maps to."""
        return [self.voc_classes[v] for v in range(1, len(self.voc_classes)) if not self.members.get(v)]

    def explainable(self, present: Iterable[int]) -> list[int]:
        """The present VOC classes that have ImageNet classes to explain (in ascending order)."""
        return sorted(int(c) for c in set(present) if self.members.get(int(c)))

    def correct(self, top1: int | None, present: Sequence[int]) -> bool | None:
        """Top-1 maps to a VOC class present in the image → True; to an absent VOC class → False; to no VOC
        class at all (e.g. 'seashore', 'suit', a background or scene class) → None: the prediction lies outside
        VOC's vocabulary, so VOC's labels cannot say whether it is right."""
        voc = self.voc_of(top1)
        if voc is None:
            return None
        return voc in set(int(c) for c in present)

    def name_of(self, voc: int) -> str:
        return self.voc_classes[voc] if 0 <= voc < len(self.voc_classes) else f"class_{voc}"


@lru_cache(maxsize=1)
def load_classmap() -> ClassMap:
    """The shipped ImageNet-1k → VOC 2012 map."""
    return ClassMap.from_file(DATA_FILE)


def by_name(labels: Sequence[str], class_names: Sequence[str]) -> ClassMap | None:
    """The map of a head whose labels are the data's own object classes (a head trained on the data, such as
    the demo's): each data class is the head class of the same name. None when some head label is not one of
    the data's object classes (``class_names[0]`` is the background and never a label)."""
    objects = {name: i for i, name in enumerate(class_names) if i > 0}
    if not labels or len(set(labels)) != len(labels) or not set(labels) <= set(objects):
        return None
    members = {objects[name]: (i,) for i, name in enumerate(labels)}
    return ClassMap(members=members, voc_classes=tuple(class_names), name="head labels = data classes",
                    head_classes=len(labels))


def classmap_for(num_classes: int, labels: Sequence[str] | None = None,
                 class_names: Sequence[str] = VOC_CLASSES) -> tuple[ClassMap | None, str | None]:
    """(map, None) when the class-aware protocol applies to this head and data; (None, reason) otherwise.

    A head whose labels are the data's own class names maps by name (:func:`by_name`); otherwise an
    ImageNet-1k head over VOC's classes maps through the shipped ImageNet-1k → VOC map."""
    if labels is not None and num_classes == len(labels) and (named := by_name(labels, class_names)) is not None:
        return named, None
    if tuple(class_names) != tuple(VOC_CLASSES):
        return None, ("the model's class names are not the data's classes, and the data's classes are not Pascal "
                      "VOC's 20 (for which the ImageNet-1k → VOC map exists), so whether a prediction is right "
                      "cannot be told: `correct` stays NULL")
    if num_classes == 0:
        return None, ("the model is headless (no class predictions), so the class-aware protocol is unsupported: "
                      "`correct` stays NULL and clean scores against all objects")
    if num_classes != IMAGENET_CLASSES:
        return None, (f"the model's head has {num_classes} classes, not ImageNet-1k's 1000, so the ImageNet-1k → "
                      "VOC map does not apply and the class-aware protocol is unsupported: `correct` stays NULL, "
                      "clean scores against all objects, --explain present is refused. Use an ImageNet-1k head "
                      "(e.g. a *_in1k or *_ft_in1k timm tag)")
    if labels is not None:
        from compute.models import imagenet_labels

        if list(labels) != imagenet_labels():
            return None, ("the model's 1000 class names are not ImageNet-1k's, so the ImageNet-1k → VOC map does "
                          "not apply and the class-aware protocol is unsupported")
    return load_classmap(), None


__all__ = ["ClassMap", "ClassMapError", "DATA_FILE", "IMAGENET_CLASSES", "by_name", "classmap_for",
           "load_classmap"]

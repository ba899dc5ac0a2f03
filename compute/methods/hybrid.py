"""Hybrid maps: two registered methods combined image by image.

``hybrid:<a>*<b>`` is the geometric mean and ``hybrid:<a>+<b>`` the arithmetic mean of the two maps after each is
min-max normalised per image to [0, 1] (a constant map normalises to zeros)::

    â = (a - min a) / (max a - min a)        b̂ likewise
    a*b:  sqrt(â · b̂)          a+b:  (â + b̂) / 2

The geometric mean keeps only what both maps highlight, the arithmetic mean what either does. Each part is any
method spec, options included (``hybrid:chefer_grad*rollout(head_fusion=max)``). When one part is at pixel
resolution and the other at patch resolution, the patch map is upsampled bilinearly (``align_corners=False``) to
the input's pixels first; the hybrid then is a pixel map.

The stored name lists the two parts by their own stored names, in sorted order (both means are symmetric, so
``hybrid:a*b`` and ``hybrid:b*a`` are the same method).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compute.layers.maps import minmax
from compute.methods.base import PREFIX_FACTORIES, REGISTRY, Method, MethodError, get_method

OPERATORS = {"*": "geometric mean", "+": "arithmetic mean"}
USAGE = "write hybrid:<a>*<b> (geometric mean) or hybrid:<a>+<b> (arithmetic mean)"


def _split(spec: str) -> tuple[str, str, str]:
    """``"a(x=1)*b"`` -> ("a(x=1)", "*", "b"); operators inside parentheses are part of an option."""
    depth, found = 0, []
    for i, ch in enumerate(spec):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in OPERATORS:
            found.append(i)
    if len(found) != 1:
        raise MethodError(f"bad hybrid {spec!r}: {USAGE}, with exactly one operator; "
                          f"valid names: {', '.join(sorted(REGISTRY))}")
    i = found[0]
    left, right = spec[:i].strip(), spec[i + 1:].strip()
    if not left or not right:
        raise MethodError(f"bad hybrid {spec!r}: {USAGE}; valid names: {', '.join(sorted(REGISTRY))}")
    return left, spec[i], right


def _part(spec: str) -> Method:
    try:
        return get_method(spec)
    except MethodError as exc:
        raise MethodError(f"hybrid part {spec!r}: {exc}") from None


class Hybrid(Method):
    name = "hybrid"
    requires = frozenset()
    summary = "geometric (*) or arithmetic (+) mean of two per-image min-max-normalised method maps"

    def __init__(self, first: Method, operator: str, second: Method):
        super().__init__()
        if operator not in OPERATORS:
            raise MethodError(f"hybrid operator must be one of {sorted(OPERATORS)}, not {operator!r}")
        self.parts = tuple(sorted((first, second), key=lambda m: m.key))
        self.operator = operator
        self.requires = frozenset(first.requires | second.requires)
        self.class_specific = bool(first.class_specific or second.class_specific)
        self.resolution = "pixel" if "pixel" in (first.resolution, second.resolution) else "patch"
        self.summary = f"{OPERATORS[operator]} of normalised {self.parts[0].key} and {self.parts[1].key}"

    def check_model(self, model) -> None:
        for part in self.parts:
            part.check_model(model)

    @property
    def key(self) -> str:
        return f"hybrid:{self.parts[0].key}{self.operator}{self.parts[1].key}"

    def __call__(self, cap):
        maps = []
        for part in self.parts:
            m = part(cap)
            if self.resolution == "pixel" and part.resolution != "pixel":
                m = F.interpolate(m[:, None], size=tuple(cap.input.shape[-2:]), mode="bilinear",
                                  align_corners=False)[:, 0]
            maps.append(minmax(m))
        a, b = maps
        if a.shape != b.shape:
            raise ValueError(f"hybrid parts give maps of shapes {tuple(a.shape)} and {tuple(b.shape)}")
        if self.operator == "*":
            return torch.sqrt(a * b)
        return (a + b) / 2


def hybrid(spec: str) -> Hybrid:
    """Combine two methods: hybrid:<a>*<b> geometric, hybrid:<a>+<b> arithmetic mean of min-max-normalised maps."""
    left, operator, right = _split(spec.strip())
    return Hybrid(_part(left), operator, _part(right))


PREFIX_FACTORIES["hybrid"] = hybrid

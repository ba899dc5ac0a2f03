"""The method protocol and the name registry.

A method is a small class: a registry ``name``, the capture ``requires`` set (see :mod:`compute.capture`), a
one-line ``summary``, and ``__call__(cap) -> [B, h, w]`` — an unnormalised, batch-independent map, at patch
resolution (``h, w`` = the patch grid) or pixel resolution (``resolution = "pixel"``). A CPU-bound method may
also offer ``deferred(cap)`` so that the batch job can finish it in the background. Options are keyword
arguments of ``__init__`` and part of the method's stored name when they differ from the defaults
(``rollout(head_fusion=max)``).
"""

from __future__ import annotations

import re
from typing import Callable, ClassVar

from torch import Tensor

from compute.capture import REQUIREMENTS, Captured


class Method:
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    summary: ClassVar[str]
    class_specific: ClassVar[bool] = False
    resolution: ClassVar[str] = "patch"
    defaults: ClassVar[dict] = {}
    # options that change how a map is computed (e.g. parallelism) but never its values: not part of the key
    execution_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise MethodError(f"method {self.name!r} has no option(s) {sorted(unknown)}; "
                              f"options: {self.defaults or 'none'}")
        self.options = {**self.defaults, **options}

    @property
    def key(self) -> str:
        """Stored name: the registry name plus any non-default options."""
        changed = {k: v for k, v in self.options.items()
                   if k not in self.execution_options and v != self.defaults.get(k)}
        if not changed:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={v}" for k, v in sorted(changed.items())) + ")"

    def __call__(self, cap: Captured) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def deferred(self, cap: Captured) -> Callable[[], Tensor] | None:
        """For a method whose work is mostly CPU-bound after the capture: do what needs ``cap`` now and return
        the rest as a function of CPU data only, which the batch job finishes in the background while the
        device explains the next batches. ``deferred(cap)()`` must equal ``self(cap)`` (on the CPU).
        ``None`` (the default): the method runs in full at once."""
        return None

    def __repr__(self) -> str:
        return f"<method {self.key}>"


class MethodError(ValueError):
    """Unknown method name or bad option; the message lists what is valid."""


REGISTRY: dict[str, type[Method]] = {}
# name prefix (e.g. "hybrid") -> factory(rest_of_spec) for composite names like "hybrid:a*b"
PREFIX_FACTORIES: dict[str, Callable[[str], Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    missing = [a for a in ("name", "requires", "summary") if not hasattr(cls, a)]
    if missing:
        raise TypeError(f"{cls.__name__} lacks {missing}")
    bad = set(cls.requires) - set(REQUIREMENTS)
    if bad:
        raise TypeError(f"{cls.__name__} requires unknown capture keys {sorted(bad)}")
    REGISTRY[cls.name] = cls
    return cls


_SPEC = re.compile(r"^(?P<name>[A-Za-z_][\w]*)(?:\((?P<opts>.*)\))?$")


def _parse_value(text: str):
    text = text.strip()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def get_method(spec: str) -> Method:
    """``"rollout"``, ``"rollout(head_fusion=max,start_layer=2)"`` or a prefixed composite like ``"hybrid:a*b"``."""
    spec = spec.strip()
    if ":" in spec.split("(")[0]:
        prefix, rest = spec.split(":", 1)
        if prefix in PREFIX_FACTORIES:
            return PREFIX_FACTORIES[prefix](rest)
    m = _SPEC.match(spec)
    if not m or m["name"] not in REGISTRY:
        raise MethodError(f"unknown method {spec!r}; valid: {', '.join(sorted(REGISTRY))}"
                          + (f" (and composites: {', '.join(p + ':...' for p in PREFIX_FACTORIES)})"
                             if PREFIX_FACTORIES else ""))
    options = {}
    if m["opts"]:
        for item in m["opts"].split(","):
            if "=" not in item:
                raise MethodError(f"bad option {item!r} in {spec!r}; write name(key=value,...)")
            k, v = item.split("=", 1)
            options[k.strip()] = _parse_value(v)
    return REGISTRY[m["name"]](**options)


def parse_methods(text: str) -> list[Method]:
    """``"all"`` or a comma-separated list of specs (commas inside parentheses are kept)."""
    if text.strip() == "all":
        return [REGISTRY[n]() for n in sorted(REGISTRY)]
    specs, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            specs.append(cur)
            cur = ""
        else:
            cur += ch
    specs.append(cur)
    methods = [get_method(s) for s in specs if s.strip()]
    if not methods:
        raise MethodError(f"no method named in {text!r}; valid: {', '.join(sorted(REGISTRY))}")
    seen: set[str] = set()
    return [m for m in methods if not (m.key in seen or seen.add(m.key))]

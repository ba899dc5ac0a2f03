"""The method protocol, its options and the name registry.

A method is a small class: a registry ``name``, the capture ``requires`` set (see :mod:`compute.capture`), a
one-line ``summary``, and ``__call__(cap) -> [B, h, w]`` — an unnormalised, batch-independent map, at patch
resolution (``h, w`` = the patch grid) or pixel resolution (``resolution = "pixel"``). A CPU-bound method may
also offer ``deferred(cap)`` so that the batch job can finish it in the background. The arithmetic lives in
:mod:`compute.layers`; a method file names the paper, declares its options and composes the layers.

Options are declared once, as :class:`Option` s in ``option_specs`` (name, type, range or choices, default), and
are checked when a method is built from its spec, before any work: a value of the wrong type, outside its range
or not among its choices is refused with a :class:`MethodError` naming the method, the option, the value and
what is allowed. A range that depends on the model (``start_layer`` below the number of blocks) is checked
against the model by :func:`check_methods_for_model` (and again on the capture, should a caller skip that).
Options are part of the method's stored name when they differ from the defaults (``rollout(head_fusion=max)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

from torch import Tensor

from compute.capture import REQUIREMENTS, Captured


class MethodError(ValueError):
    """Unknown method name or bad option; the message lists what is valid."""


@dataclass(frozen=True)
class ModelFacts:
    """What an option's range may depend on: the number of blocks and of heads, and whether there is a
    classification head (a headless backbone's outputs are features)."""

    depth: int
    num_heads: int
    has_head: bool

    @classmethod
    def of(cls, model) -> "ModelFacts":
        """From a timm ViT, or anything holding one as ``.model`` (a loaded model, a capture)."""
        vit = model.model if getattr(model, "model", None) is not None else model
        return cls(depth=len(vit.blocks), num_heads=int(vit.blocks[0].attn.num_heads),
                   has_head=bool(getattr(vit, "num_classes", 0)))

    def describe(self) -> str:
        return f"{self.depth} blocks, {self.num_heads} heads, {'a' if self.has_head else 'no'} classification head"


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a name"}


@dataclass(frozen=True)
class Option:
    """One option of a method: its name, type (``int``, ``float``, ``bool`` or ``str``), default, and what is
    allowed — ``choices``, an inclusive range ``[low, high]``, and ``below``, a :class:`ModelFacts` field the
    value must stay under (``below="depth"``: a block index). ``execution``: the option changes how a map is
    computed (e.g. parallelism) but never its values, so it is not part of the stored name."""

    name: str
    kind: type
    default: Any
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    below: str | None = None
    execution: bool = False
    note: str = ""

    def allowed(self, facts: ModelFacts | None = None) -> str:
        """What the option takes, in words (with the model's own bound when ``facts`` are given)."""
        if self.choices:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        elif self.below is not None:
            bound = f"{self.below} - 1" if facts is None else getattr(facts, self.below) - 1
            text = f"{_KINDS[self.kind]} from {self.low:g} to {bound}"
        elif self.low is not None and self.high is not None:
            text = f"{_KINDS[self.kind]} in [{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            text = f"{_KINDS[self.kind]} >= {self.low:g}"
        else:
            text = _KINDS[self.kind]
        text = f"{text} ({self.note})" if self.note else text
        return text if facts is None else f"{text} on this model ({facts.describe()})"

    def refuse(self, method: str, value, facts: ModelFacts | None = None) -> MethodError:
        return MethodError(f"{method}: {self.name}={value!r} is not allowed; {self.name} takes "
                           f"{self.allowed(facts)}")

    def validate(self, method: str, value):
        """The value, as its type (an integer where a number is asked becomes a float), or a MethodError."""
        if isinstance(value, bool) != (self.kind is bool):
            raise self.refuse(method, value)
        if self.kind is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, self.kind) or (self.choices and value not in self.choices):
            raise self.refuse(method, value)
        # written as "not inside" so that NaN, which compares false with everything, is refused
        if (self.low is not None and not value >= self.low) or (self.high is not None and not value <= self.high):
            raise self.refuse(method, value)
        return value

    def check_model(self, method: str, value, facts: ModelFacts) -> None:
        if self.below is not None and value >= getattr(facts, self.below):
            raise self.refuse(method, value, facts)


class Method:
    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    summary: ClassVar[str]
    class_specific: ClassVar[bool] = False
    resolution: ClassVar[str] = "patch"
    option_specs: ClassVar[tuple[Option, ...]] = ()
    # derived from option_specs, for readers of the class (the stored name, `vitlens methods`)
    defaults: ClassVar[dict] = {}
    execution_options: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.defaults = {o.name: o.default for o in cls.option_specs}
        cls.execution_options = frozenset(o.name for o in cls.option_specs if o.execution)

    def __init__(self, **options):
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise MethodError(f"method {self.name!r} has no option(s) {sorted(unknown)}; "
                              f"options: {self.defaults or 'none'}")
        self.options = {o.name: o.validate(self.name, options.get(o.name, o.default)) for o in self.option_specs}

    def check_model(self, model) -> None:
        """Refuse options whose allowed range depends on the model (a timm ViT, a loaded model, a capture or
        :class:`ModelFacts`) and which that model does not satisfy."""
        facts = model if isinstance(model, ModelFacts) else ModelFacts.of(model)
        for o in self.option_specs:
            o.check_model(self.name, self.options[o.name], facts)

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


def check_methods_for_model(methods: Iterable[Method], model) -> None:
    """Refuse, before any image is processed, a requested method whose options the model cannot satisfy
    (e.g. ``rollout(start_layer=99)`` on a 12-block ViT): a :class:`MethodError` naming the method, the option,
    the value and the model's allowed range. ``model``: a timm ViT (a shape-only one built on the meta device
    will do), anything holding one as ``.model``, or :class:`ModelFacts`."""
    facts = model if isinstance(model, ModelFacts) else ModelFacts.of(model)
    for method in methods:
        method.check_model(facts)


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

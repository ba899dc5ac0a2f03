"""Every filter and view choice lives in the URL, so that the address bar is a shareable link to the view.

A widget whose value belongs in the URL is declared with :func:`param` just before it is created: that puts a
valid value for the widget's key into session state (the widget's own value if it has one, else the value this
session last had for it on another visit, else the URL's, else the default) and records how to write it
back. After the page has run, :func:`sync` writes the query string from the recorded widgets: only values that
differ from their defaults, and only when something changed. Values that do not parse or are not among the
current options are ignored (the default is used) and dropped from the URL, so a bad link never breaks a page;
:func:`rejected` lists them (and values asked for with :func:`remember` that were not valid), so that the page
can say so instead of silently showing something else.

URL values are read when a session starts (a link is opened or the page reloaded); within a session, the
widgets are the source of truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

_REGISTERED = "_vl_registered"   # key -> Param, declared during this run
_REMEMBERED = "_vl_remembered"   # key -> last value this session had (survives a widget leaving the page)
_GLOBAL = "_vl_global_keys"      # keys declared by the shared sidebar (kept when switching pages)
_REQUESTED = "_vl_requested"     # keys given a value with remember() that no declaration has consumed yet
_REJECTED = "_vl_rejected"       # (key, asked, used) of this run: link or remember() values that were invalid
_STARTED = "_vl_started"         # set after the session's first run (the one that reads the link)
_FIRST = "_vl_first_run"         # True during the session's first run
#: query parameters that Streamlit itself reads (never a dashboard parameter)
STREAMLIT_PARAMS = ("embed", "embed_options")


@dataclass(frozen=True)
class Param:
    """How one URL parameter maps to a widget value: ``parse`` turns the URL's strings into a value (or raises
    ValueError), ``clean`` returns the value if valid else raises ValueError, ``dump`` gives the URL's strings."""

    key: str
    default: Any
    parse: Callable[[list[str]], Any]
    clean: Callable[[Any], Any]
    dump: Callable[[Any], list[str]]
    multi: bool = False  # a list of values, of which a link's unknown entries are dropped one by one


# ---------------------------------------------------------------------------------------------- codecs
def choice(key: str, options: Sequence, default) -> Param:
    opts = list(options)

    def clean(v):
        if v in opts:
            return v
        raise ValueError(v)

    return Param(key, default, lambda raw: clean(_coerce_like(raw[-1], opts)), clean, lambda v: [str(v)])


def choices(key: str, options: Sequence, default: Sequence) -> Param:
    """A multiselect; unknown entries are dropped (all unknown: the default)."""
    opts = list(options)

    def clean(v):
        if not isinstance(v, (list, tuple)):
            raise ValueError(v)
        wanted = set(v)
        kept = [x for x in opts if x in wanted] if v else []
        if v and not kept:
            raise ValueError(v)
        return kept

    def parse(raw):
        vals = [_coerce_like(x, opts) for x in raw if x != ""]
        return clean(vals) if vals else []

    return Param(key, list(default), parse, clean, lambda v: [str(x) for x in v] if v else [""], multi=True)


def float_range(key: str, lo: float, hi: float, default: tuple[float, float] | None = None) -> Param:
    default = (float(lo), float(hi)) if default is None else (float(default[0]), float(default[1]))

    def clean(v):
        a, b = (float(x) for x in v)
        if not (math.isfinite(a) and math.isfinite(b)) or not lo <= a <= b <= hi:
            raise ValueError(v)
        return (a, b)

    def parse(raw):
        if len(raw) == 1 and "," in raw[0]:
            raw = raw[0].split(",")
        if len(raw) != 2:
            raise ValueError(raw)
        return clean(raw)

    return Param(key, default, parse, clean, lambda v: [_num(v[0]), _num(v[1])])


def number(key: str, lo: float, hi: float, default: float) -> Param:
    def clean(v):
        x = float(v)
        if not math.isfinite(x) or not lo <= x <= hi:
            raise ValueError(v)
        return x

    return Param(key, float(default), lambda raw: clean(raw[-1]), clean, lambda v: [_num(v)])


def integer(key: str, lo: int, hi: int, default: int) -> Param:
    def clean(v):
        if isinstance(v, bool):
            raise ValueError(v)
        x = int(v) if not isinstance(v, str) else int(v.strip())
        if not lo <= x <= hi:
            raise ValueError(v)
        return x

    return Param(key, int(default), lambda raw: clean(raw[-1]), clean, lambda v: [str(int(v))])


def flag(key: str, default: bool) -> Param:
    truthy, falsy = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

    def parse(raw):
        s = raw[-1].strip().lower()
        if s in truthy:
            return True
        if s in falsy:
            return False
        raise ValueError(raw)

    def clean(v):
        if isinstance(v, bool):
            return v
        raise ValueError(v)

    return Param(key, bool(default), parse, clean, lambda v: ["1" if v else "0"])


def _num(x: float) -> str:
    return f"{float(x):.6g}"


def _coerce_like(raw: str, options: list):
    """URL strings -> the option type (options may be ints)."""
    if options and isinstance(options[0], int) and not isinstance(options[0], bool):
        try:
            return int(raw)
        except ValueError:
            return raw
    return raw


# ------------------------------------------------------------------------------------------- lifecycle
def begin_run() -> None:
    """Forget the previous run's declarations (call once at the top of the app)."""
    st.session_state[_REGISTERED] = {}
    st.session_state.setdefault(_REMEMBERED, {})
    st.session_state[_GLOBAL] = set()
    st.session_state[_REJECTED] = []
    st.session_state[_FIRST] = _STARTED not in st.session_state
    st.session_state[_STARTED] = True


def declare(p: Param, shared: bool = False, initial: Any = None) -> Any:
    """Put a valid value for widget ``p.key`` into session state before the widget is created; returns it.
    ``shared`` marks a parameter of the sidebar (kept in the URL on every page). ``initial`` (when valid) is
    used instead of the default when neither the session nor the URL gives a valid value; unlike the default,
    it does not decide what is left out of the URL. A value the link brought (read when the session has none
    of its own) or one asked for with :func:`remember` that is not valid is recorded for :func:`rejected`."""
    ss = st.session_state
    registered = ss.setdefault(_REGISTERED, {})
    registered[p.key] = p
    if shared:
        ss.setdefault(_GLOBAL, set()).add(p.key)
    remembered = ss.setdefault(_REMEMBERED, {})
    requested = ss.setdefault(_REQUESTED, set())
    explicit = p.key in requested and p.key in remembered
    requested.discard(p.key)
    from_link = p.key not in ss and p.key not in remembered and p.key in st.query_params
    value, used = _first_valid(p, {
        "session": (lambda: ss[p.key]) if p.key in ss else None,
        "remembered": (lambda: remembered[p.key]) if p.key in remembered else None,
        "link": (lambda: p.parse(st.query_params.get_all(p.key))) if p.key in st.query_params else None,
        "initial": (lambda: initial) if initial is not None else None,
    })
    asked = None
    if explicit and used != "remembered":
        asked = remembered[p.key]
    elif from_link and used != "link":
        asked = st.query_params.get_all(p.key)
    elif from_link and p.multi:  # some entries of the link's list were kept, the others dropped: say so
        raw = st.query_params.get_all(p.key)
        kept = set(p.dump(value))
        if any(x and x not in kept for x in raw):
            asked = raw
    if asked is not None:
        ss.setdefault(_REJECTED, []).append((p.key, asked, value))
    # Written on every run, not only when it differs: a widget with the same key on another page is another
    # widget to Streamlit, and only a value set through session state carries over to it.
    ss[p.key] = value
    return value


def pending(key: str):
    """The value the next :func:`declare` of ``key`` will consider first (session, then a value asked for with
    :func:`remember`, then the link's last one), unchecked; None when there is none. For a page whose options
    depend on the value asked for (an image outside the filters is still shown)."""
    ss = st.session_state
    if key in ss:
        return ss[key]
    if key in ss.get(_REMEMBERED, {}):
        return ss[_REMEMBERED][key]
    return st.query_params.get(key)


def rejected() -> list[tuple[str, Any, Any]]:
    """``(key, asked, used)`` for each value of this run that a link (or :func:`remember`) asked for but that
    was not valid, so the default ``used`` is shown instead: the caller should say so."""
    return list(st.session_state.get(_REJECTED, []))


def reject(key: str, asked, used) -> None:
    """Record that a value the link asked for is not applied (valid, but meaningless here), for
    :func:`rejected`."""
    st.session_state.setdefault(_REJECTED, []).append((key, asked, used))


def unused_link_params() -> list[tuple[str, list[str]]]:
    """On the session's first run (the one that opens a link), after the page ran: the link's parameters that
    no widget declared, so nothing applied them (``thr_iou`` without ``thr``, a parameter of another page)."""
    if not st.session_state.get(_FIRST):
        return []
    registered = st.session_state.get(_REGISTERED, {})
    return [(k, st.query_params.get_all(k)) for k in st.query_params
            if k not in registered and k not in STREAMLIT_PARAMS]


def _first_valid(p: Param, sources: dict[str, Callable[[], Any] | None]) -> tuple[Any, str | None]:
    """The first valid value of ``sources`` (name -> getter, None for an absent source, in order) and its
    source's name; the default (name None) when none is."""
    for name, source in sources.items():
        if source is None:
            continue
        try:
            return p.clean(source()), name
        except (ValueError, TypeError, KeyError):
            continue
    return (p.clean(p.default) if _valid(p, p.default) else p.default), None


def _valid(p: Param, v) -> bool:
    try:
        p.clean(v)
        return True
    except (ValueError, TypeError):
        return False


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and list(a) == list(b)
    return type(a) is type(b) and a == b


def value(key: str):
    """The current value of a declared parameter."""
    return st.session_state.get(key)


def url_params(shared_only: bool = False) -> dict[str, list[str]]:
    """The query string the declared parameters describe (non-default values only)."""
    ss = st.session_state
    out = {}
    shared = ss.get(_GLOBAL, set())
    for key, p in ss.get(_REGISTERED, {}).items():
        if shared_only and key not in shared:
            continue
        v = ss.get(key, p.default)
        if not _same(_normal(v), _normal(p.default)):
            out[key] = p.dump(v)
    return out


def _normal(v):
    return list(v) if isinstance(v, tuple) else v


def sync() -> None:
    """Write the declared parameters into the URL (call once, after the page has run)."""
    ss = st.session_state
    remembered = ss.setdefault(_REMEMBERED, {})
    for key in ss.get(_REGISTERED, {}):
        if key in ss:
            remembered[key] = ss[key]
    wanted = url_params()
    current = {k: st.query_params.get_all(k) for k in st.query_params}
    if current != wanted:
        st.query_params.from_dict(wanted)


def remember(key: str, v) -> None:
    """Set the value a parameter will have on the next page that declares it (e.g. before switching pages); if
    that value is not valid there, :func:`rejected` says so."""
    st.session_state.setdefault(_REMEMBERED, {})[key] = v
    st.session_state.setdefault(_REQUESTED, set()).add(key)
    if key in st.session_state:
        del st.session_state[key]


def forget(keys) -> None:
    """Back to defaults for ``keys`` (widget state, remembered values and the URL's copy)."""
    remembered = st.session_state.setdefault(_REMEMBERED, {})
    requested = st.session_state.setdefault(_REQUESTED, set())
    for k in keys:
        remembered.pop(k, None)
        requested.discard(k)
        if k in st.session_state:
            del st.session_state[k]
        if k in st.query_params:
            del st.query_params[k]

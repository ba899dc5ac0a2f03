"""The filter sidebar every page shares, and the :class:`View` it hands to the page.

Filters (each one a URL parameter, see :mod:`dashboard.urlstate`): model, run, protocol, methods, VOC classes,
image groups (when the run has any), confidence range, correct / incorrect / all (disabled when the run cannot
tell), and range thresholds on any metric column the run fills. They become one
:class:`store.query.RowFilter`, which every query of every page applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from dashboard import data
from dashboard import urlstate as us
from dashboard.metrics_info import label
from store.query import RowFilter

CORRECT_OPTIONS = ("all", "correct", "incorrect")
FILTER_KEYS = ("model", "run", "protocol", "method", "cls", "group", "conf", "correct", "thr", "sel")


@dataclass
class View:
    """What a page needs: where the data is, which run, what the run holds, and the rows to show."""

    store: str
    fp: str
    run: dict
    facets: dict
    known: list[str]                 # every metric column of the store's schema
    columns: list[str]               # metric columns this run fills (non-null somewhere)
    filter: RowFilter
    methods: list[str] = field(default_factory=list)   # chosen methods (in the run's order)

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def protocol(self) -> str | None:
        return self.filter.protocol


def _run_label(r: dict) -> str:
    created = str(r.get("created") or "")[:16].replace("T", " ")
    return " · ".join(b for b in (created, r["run_id"]) if b)


def _run_facts(r: dict) -> str:
    bits = [f"weights `{r['weights']}`" if r.get("weights") else "", f"split {r['split']}" if r.get("split") else "",
            f"{int(r['images']):,} images", f"{int(r['rows']):,} rows"]
    return " · ".join(b for b in bits if b)


def _selection(sb, store: str, fp: str, run_id: str) -> tuple[str, ...]:
    """The selection of image ids (URL ``sel``, set by "show in the grid"): a filter of every page, with its
    CSV export and a button that clears it."""
    from dashboard.common import SELECTION, ids_csv

    us.declare(us.choices(SELECTION, data.metric_image_ids(store, fp, run_id), []), shared=True)
    chosen = tuple(st.session_state.get(SELECTION) or ())
    if chosen:
        sb.markdown(f"**Selection:** {len(chosen):,} image(s) — every page shows only these")
        c1, c2 = sb.columns(2)
        c1.download_button("Export CSV", ids_csv(chosen), file_name="vitlens-selection.csv", mime="text/csv",
                           key="sel_csv", icon=":material/download:")
        if c2.button("Clear", key="sel_clear", icon=":material/close:"):
            us.forget([SELECTION])
            st.rerun()
    return chosen


def sidebar(store: Path) -> View | None:
    """Draw the filters; None when the store has no run to show."""
    s, fp = str(store), data.fingerprint(str(store))
    runs = data.runs(s, fp)
    if runs.empty:
        return None
    runs_by_id = {r["run_id"]: r for r in runs.to_dict("records")}
    sb = st.sidebar
    sb.markdown("### Filters")

    models = list(dict.fromkeys(runs["model"].fillna("?").tolist()))
    # A link leaves the model out when it was the newest one; a link that names a run then opens that run's
    # model, so it still opens that run after runs of another model were added.
    linked_run = st.query_params.get("run")
    us.declare(us.choice("model", models, models[0]), shared=True,
               initial=(runs_by_id[linked_run]["model"] or "?") if linked_run in runs_by_id else None)
    sb.selectbox("Model", models, key="model", disabled=len(models) == 1)
    model = st.session_state["model"]

    run_ids = [r for r, rec in runs_by_id.items() if (rec["model"] or "?") == model]
    us.declare(us.choice("run", run_ids, run_ids[0]), shared=True)
    sb.selectbox("Run", run_ids, key="run", format_func=lambda r: _run_label(runs_by_id[r]),
                 disabled=len(run_ids) == 1)
    run = runs_by_id[st.session_state["run"]]
    sb.caption(_run_facts(run))
    fac = data.facets(s, fp, run["run_id"])
    known = data.known_columns(s, fp)

    protocols = fac["protocols"] or ["report"]
    us.declare(us.choice("protocol", protocols, "report" if "report" in protocols else protocols[0]), shared=True)
    sb.radio("Protocol", protocols, key="protocol", horizontal=True,
             help="report: every non-background pixel is object, void included (the source report); "
                  "clean: void excluded, object = the explained class")

    methods = fac["methods"]
    us.declare(us.choices("method", methods, methods), shared=True)
    sb.multiselect("Methods", methods, key="method", placeholder="choose at least one method")

    classes = fac["classes"]
    us.declare(us.choices("cls", classes, []), shared=True)
    sb.multiselect("Classes (image contains any)", classes, key="cls", placeholder="all classes")

    if fac["groups"]:
        us.declare(us.choices("group", fac["groups"], []), shared=True)
        sb.multiselect("Image groups", fac["groups"], key="group", placeholder="all groups")
    groups = tuple(st.session_state.get("group") or ()) if fac["groups"] else ()

    conf_known = fac["confidence_known"] > 0
    us.declare(us.float_range("conf", 0.0, 1.0), shared=True)
    sb.slider("Confidence (top-1 probability)", 0.0, 1.0, key="conf", step=0.01, disabled=not conf_known,
              help=None if conf_known else "this run's model has no classifier head")
    conf = tuple(st.session_state["conf"])
    if not conf_known and conf != (0.0, 1.0):  # a link's range that nothing here can apply
        us.reject("conf", list(conf), "(no confidence filter)")

    correct_known = fac["correct_known"] > 0
    us.declare(us.choice("correct", list(CORRECT_OPTIONS), "all"), shared=True)
    sb.radio("Prediction", CORRECT_OPTIONS, key="correct", horizontal=True, disabled=not correct_known,
             help="correct: the top-1 class is (or maps to) a class present in the image" if correct_known else
             "unknown for this run: " + data.correct_unknown_reason(s, fp, run["run_id"]))
    correct = {"correct": True, "incorrect": False}.get(st.session_state["correct"]) if correct_known else None

    columns = fac["columns"]
    us.declare(us.choices("thr", columns, []), shared=True)
    sb.multiselect("Metric thresholds", columns, key="thr", format_func=label, placeholder="no threshold")
    thresholds = []
    for c in st.session_state["thr"]:
        stats = fac["stats"][c]
        lo = min(0.0, float(stats["min"])) if stats["min"] is not None else 0.0
        hi = max(1.0, float(stats["max"])) if stats["max"] is not None else 1.0
        us.declare(us.float_range(f"thr_{c}", lo, hi), shared=True)
        a, b = sb.slider(label(c), lo, hi, key=f"thr_{c}", step=0.01,
                         help="rows where this metric is undefined are left out once the range is narrowed")
        if a > lo or b < hi:  # the full range filters nothing, not even rows where the metric is undefined
            thresholds.append((c, float(a), float(b)))
            sb.caption(f"only rows with {label(c)} in [{a:.2f}, {b:.2f}]; rows where it is undefined are left out")

    selection = _selection(sb, s, fp, run["run_id"])

    if sb.button("Reset filters", key="reset_filters", width="stretch"):
        us.forget(list(FILTER_KEYS) + [f"thr_{c}" for c in columns])
        st.rerun()

    chosen = [m for m in methods if m in st.session_state["method"]]
    f = RowFilter(
        run_id=run["run_id"], protocol=st.session_state["protocol"],
        methods=None if chosen == methods else tuple(chosen), classes=tuple(st.session_state["cls"]),
        groups=groups, confidence=None if (not conf_known or conf == (0.0, 1.0)) else conf,
        correct=correct, thresholds=tuple(thresholds), images=selection)
    return View(store=s, fp=fp, run=run, facets=fac, known=known, columns=columns, filter=f, methods=chosen)

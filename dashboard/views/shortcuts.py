"""Shortcuts: is the model right for the wrong reasons? Measured without trusting any map, from counterfactual
inputs (the object or its context replaced, the object moved onto another background, the planted cue removed),
then: which explanation methods agree with that measurement.

Sections: per class, the share of confident correct decisions that are context-driven (with 95 % intervals and
counts) and the BG-Gap; the images ranked by context reliance, each with its variants and the maps of chosen
methods; the method-trust leaderboard; on stores with planted cues, the cue view. The formulas are those of
:mod:`store.shortcuts`.
"""

import threading
from concurrent.futures import Future

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from dashboard import charts, common, data, data_cf
from dashboard import urlstate as us
from store.schema import PROTOCOLS
from store.shortcuts import CONFIDENT, SURVIVES, VERDICTS
from store.variants import SHOWN_VARIANTS

PER_PAGE = (5, 10, 20)
TABLE_ROWS = 1000  # rows of the ranked-decisions table sent to the browser
VERDICT_CHOICES = ("all", *VERDICTS)
RECOMPUTE = ("vitlens compute --voc-root <VOC folder> --out {store}  "
             "# counterfactuals are on by default: leave out --no-counterfactuals")

view = common.page_view()
st.title("Shortcuts")
st.caption("Right for the wrong reasons? Measured per image with counterfactual inputs — the object removed "
           "(`no_fg`), the context removed (`only_fg`), the object on another image's background (`mixed_rand`), "
           "the planted cue removed (`no_cue`) — by forward passes only, without trusting any map.")
protocol = view.protocol or "report"


def interval(low, high, digits: int = 2) -> str:
    return "–" if common.is_missing(low) or common.is_missing(high) else f"[{low:.{digits}f}, {high:.{digits}f}]"


def no_counterfactuals() -> None:
    st.info("This run stored no counterfactual rows, so nothing here can be measured. Recompute it with "
            "counterfactuals (they are on by default; a run made with `--no-counterfactuals`, or by an older "
            "vitlens, has none):")
    st.code(RECOMPUTE.format(store=view.store), language="bash")


def per_class_section() -> bool:
    """The per-class shares (chart and table); False when there are none, and so no BG-Gap line either."""
    st.subheader("Context-driven decisions per class")
    share = data_cf.statistic(view.store, view.fp, view.run_id, protocol, "context_share", FILL)
    if view.filter.classes:
        share = share[share["gt_target"].isin(view.filter.classes)]
    if share.empty:
        st.info("No confident, correct decision with a verdict under this protocol (a headless model's scores are "
                "not probabilities, and correctness must be known).")
        return False
    table = share.assign(interval=[interval(a, b) for a, b in zip(share["low"], share["high"])])
    left, right = st.columns([3, 2])
    with left:
        st.markdown(charts.interval_bars(
            table["gt_target"].tolist(), table["share"].tolist(), table["low"].tolist(), table["high"].tolist(),
            [f"{c}: {s:.2f} ({k} of {n}), 95 % interval {i}" for c, s, k, n, i in
             zip(table["gt_target"], table["share"], table["context_driven"], table["n"], table["interval"])],
            "share context-driven", y_max=1.0), unsafe_allow_html=True)
    with right:
        st.dataframe(table[["gt_target", "context_driven", "n", "share", "interval"]], hide_index=True,
                     key="context_share_table", column_config={
                         "gt_target": st.column_config.TextColumn("Class"),
                         "context_driven": st.column_config.NumberColumn("Context-driven"),
                         "n": st.column_config.NumberColumn("Decisions", help="confident, correct, with a verdict"),
                         "share": st.column_config.NumberColumn("Share", format="%.2f"),
                         "interval": st.column_config.TextColumn("95 % interval", help="bootstrap over decisions")})
    st.caption(f"Of the confident (top-1 probability ≥ {CONFIDENT}) correct decisions, the share whose context "
               f"alone keeps ≥ {SURVIVES} of the class's probability while the object alone does not "
               f"(protocol **{protocol}**; class = the object region's class). Bars: 95 % bootstrap intervals "
               f"({data_cf.RESAMPLES} resamples).")
    return True


def bg_gap_line() -> None:
    gap = data_cf.statistic(view.store, view.fp, view.run_id, protocol, "bg_gap", FILL)
    if not gap.empty:
        g = gap.iloc[0]
        st.markdown(f"**BG-Gap** (accuracy on `only_fg` − on `mixed_rand`, {int(g['n'])} decisions): "
                    f"{g['acc_only_fg']:.2f} − {g['acc_mixed_rand']:.2f} = **{g['gap']:+.2f}** "
                    f"{interval(g['low'], g['high'])}")


def evidence(decisions: pd.DataFrame) -> pd.DataFrame:
    """The decisions under the sidebar's classes / confidence / correctness, strongest context reliance first."""
    f = view.filter
    d = decisions
    if f.classes:
        d = d[d["gt_classes"].fillna("").str.split(",").map(lambda cs: bool(set(cs) & set(f.classes)))]
    if f.confidence is not None:
        d = d[d["confidence"].between(*f.confidence)]
    if f.correct is not None:
        d = d[d["correct"] == f.correct]
    return d.sort_values(["context_reliance", "confidence", "image_id"], ascending=[False, False, True],
                         na_position="last", kind="stable").reset_index(drop=True)


def variant_caption(row: dict | None, variant: str) -> str:
    if row is None:
        return f"`{variant}` · {'no cue in this image' if variant == 'no_cue' else 'not stored'}"
    if not common.is_missing(row.get("reason")):
        return f"`{variant}` · not made: {row['reason']}"
    p = row.get("score")
    kept = f" (×{p / row['orig_score']:.2f})" if row.get("orig_score") and not common.is_missing(p) else ""
    same = row.get("same_top1")
    flip = "" if common.is_missing(same) else (" · same top-1" if same else " · **changed**")
    extra = f" · background of `{row['partner_id']}` ({row['partner_classes']})" if variant == "mixed_rand" else ""
    return f"`{variant}` · {row.get('pred_label') or '–'} · p {common.fmt(p, 2)}{kept}{flip}{extra}"


def evidence_card(rank: int, d: dict, cf_rows: pd.DataFrame, batch: tuple, shown: list[str], methods: list[str],
                  style) -> str:
    """One decision: the original, each variant of ``shown`` (redrawn) with what the model predicted on it, and
    the maps of ``methods``; returns the fill its variants were made with."""
    image_id = d["image_id"]
    st.markdown(f"**#{rank} · {image_id}** · object {d.get('gt_target') or '–'} · verdict "
                f"**{d.get('verdict') or '–'}** · context reliance {common.fmt(d.get('context_reliance'), 2)} · "
                f"object sufficiency {common.fmt(d.get('object_sufficiency'), 2)} · confidence "
                f"{common.fmt(d.get('confidence'), 2)}")
    tc = common.nan_to_none(d.get("target_class"))
    same_target = cf_rows["target_class"].isna() if tc is None else cf_rows["target_class"] == tc
    rows = {r["variant"]: r for r in cf_rows[(cf_rows["image_id"] == image_id) & same_target].to_dict("records")}
    cols = st.columns(1 + len(shown) + len(methods))
    gt_target = common.nan_to_none(d.get("gt_target"))
    fill = next((r["fill"] for r in rows.values() if r.get("fill")), "gray")
    with cols[0]:
        base = data.overlay(view.store, view.fp, view.run_id, batch, image_id, None, None, None, protocol, gt_target,
                            (style[0], 0.0, True, False, True))
        if base:
            st.image(base, width="stretch")
        st.caption(f"original · p {common.fmt(d.get('p_orig'), 2)}")
    for col, v in zip(cols[1:], shown):
        r = rows.get(v)
        with col:
            made = r is not None and common.is_missing(r.get("reason"))
            img = data_cf.variant_jpeg(view.store, view.fp, view.run_id, batch, image_id, v, protocol, gt_target,
                                       fill, common.nan_to_none(r.get("partner_id")) if r else None) if made else b""
            if img:
                st.image(img, width="stretch")
            st.caption(variant_caption(r, v))
    for col, m in zip(cols[1 + len(shown):], methods):
        with col:
            img = data.overlay(view.store, view.fp, view.run_id, batch, image_id, m,
                               common.nan_to_none(d.get("target_kind")), None if tc is None else int(tc), protocol,
                               gt_target, style, tuple(methods))
            if img:
                st.image(img, width="stretch")
            st.caption(f"map · **{m}**")
    return fill


def evidence_section(decisions: pd.DataFrame) -> None:
    st.subheader("Images ranked by evidence")
    c1, c2, c3 = st.columns([2, 3, 1], vertical_alignment="bottom")
    with c1:
        us.declare(us.choice("sc_verdict", list(VERDICT_CHOICES), "all"))
        verdict = st.selectbox("Verdict", VERDICT_CHOICES, key="sc_verdict")
    with c2:
        us.declare(us.choices("sc_maps", view.methods, view.methods[:2]))
        methods = st.multiselect("Maps of", view.methods, key="sc_maps", placeholder="no maps")
    with c3:
        us.declare(us.choice("sc_n", list(PER_PAGE), PER_PAGE[0]))
        n = st.selectbox("Per page", PER_PAGE, key="sc_n")
    ranked = evidence(decisions)
    if verdict != "all":
        ranked = ranked[ranked["verdict"] == verdict].reset_index(drop=True)
    if ranked.empty:
        common.empty_result("decisions")
        return
    pages = max(1, -(-len(ranked) // int(n)))
    us.declare(us.integer("sc_page", 1, pages, 1))
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, key="sc_page", width=160)
    start = (int(page) - 1) * int(n)
    shown = ranked.iloc[start:start + int(n)]
    ids = tuple(dict.fromkeys(shown["image_id"]))
    outcomes = data_cf.outcomes(view.store, view.fp, view.run_id, ids, protocol, FILL)
    partners = tuple(p for p in dict.fromkeys(outcomes["partner_id"].dropna()) if p not in ids)
    batch = ids + partners
    # the same columns on every card: no_cue only where some image of the page has a cue
    variants = [v for v in SHOWN_VARIANTS if v != "no_cue" or (outcomes["variant"] == v).any()]
    style = common.overlay_controls(view)
    fill = "gray"
    for k, d in enumerate(shown.to_dict("records")):
        fill = evidence_card(start + k + 1, d, outcomes, batch, variants, methods, style) or fill
    st.caption(f"{len(ranked)} decisions (the sidebar's classes, confidence range and prediction filter apply), "
               "strongest context reliance first (p(no_fg) / p(original), clipped to "
               f"[0, 1]). The variant pictures are **display reconstructions** from the stored thumbnail and masks "
               f"(fill `{fill}`{', computed at display resolution' if fill == 'blur' else ''}): the store keeps "
               "what the model did on each variant, not the pictures it was fed; predictions and probabilities are "
               "the stored ones.")
    listed = min(len(ranked), TABLE_ROWS)
    with st.expander(f"All ranked decisions (the first {listed:,}; select one to open the image)"):
        table = ranked.head(TABLE_ROWS)[["image_id", "gt_target", "verdict", "context_reliance", "object_sufficiency",
                        "background_following", "confidence", "correct"]]
        event = st.dataframe(table, hide_index=True, key="evidence_table", on_select="rerun",
                             selection_mode="single-row", column_config={
                                 "image_id": st.column_config.TextColumn("Image id"),
                                 "gt_target": st.column_config.TextColumn("Object"),
                                 "verdict": st.column_config.TextColumn("Verdict"),
                                 "context_reliance": st.column_config.NumberColumn("Context reliance", format="%.2f"),
                                 "object_sufficiency": st.column_config.NumberColumn("Object sufficiency",
                                                                                     format="%.2f"),
                                 "background_following": st.column_config.CheckboxColumn("Follows background"),
                                 "confidence": st.column_config.NumberColumn("Confidence", format="%.2f"),
                                 "correct": st.column_config.CheckboxColumn("Correct")})
        picked = ((event or {}).get("selection") or {}).get("rows") or []
        if picked and 0 <= int(picked[0]) < len(ranked):
            common.open_image(ranked["image_id"].iloc[int(picked[0])])


def trust_section() -> None:
    st.subheader("Which explanation exposes shortcuts best")
    us.declare(us.flag("sc_boot", False))
    boot = st.toggle("Bootstrap intervals", key="sc_boot",
                     help=f"{data_cf.RESAMPLES} resamples of the decisions, as `vitlens report --shortcuts` "
                          "(seconds on a large store); off: normal approximations (Fisher's z for ρ, Hanley & McNeil "
                          "for ROC-AUC)")
    trust = data_cf.method_trust(view.store, view.fp, view.run_id, protocol, "bootstrap" if boot else "normal", FILL)
    trust = trust[trust["method"].isin(view.methods)] if view.methods else trust
    if trust.empty:
        st.info("No method's map has a relevance mass on decisions with a reliance score under this protocol.")
        return
    table = trust.assign(rho_ci=[interval(a, b) for a, b in zip(trust["rho_low"], trust["rho_high"])],
                         auc_ci=[interval(a, b) for a, b in zip(trust["auc_low"], trust["auc_high"])])
    st.dataframe(table[["method", "auc", "auc_ci", "n_pos", "n_neg", "rho", "rho_ci", "n_rho"]], hide_index=True,
                 key="method_trust_table", column_config={
                     "method": st.column_config.TextColumn("Method", pinned=True),
                     "auc": st.column_config.NumberColumn("ROC-AUC", format="%.2f",
                                                          help="mass off the object flags context-driven decisions"),
                     "auc_ci": st.column_config.TextColumn("95 % interval (AUC)"),
                     "n_pos": st.column_config.NumberColumn("Context-driven"),
                     "n_neg": st.column_config.NumberColumn("Other verdicts"),
                     "rho": st.column_config.NumberColumn("Spearman ρ", format="%.2f",
                                                          help="mass off the object vs context reliance"),
                     "rho_ci": st.column_config.TextColumn("95 % interval (ρ)"),
                     "n_rho": st.column_config.NumberColumn("Decisions")})
    how = (f"bootstrap over decisions, {data_cf.RESAMPLES} resamples" if boot else
           "normal approximations; switch on bootstrap intervals for those of `vitlens report --shortcuts`")
    st.caption("Best ROC-AUC first. A method that exposes shortcuts puts its mass off the object (1 − relevance "
               "mass) exactly where the model measurably relies on context: ROC-AUC of that mass for flagging "
               "context-driven decisions (0.5 = chance) and Spearman ρ with the context reliance. "
               f"95 % intervals: {how}.")


def cue_section() -> None:
    cue = data_cf.statistic(view.store, view.fp, view.run_id, protocol, "cue_trust", FILL)
    if cue.empty:
        return
    st.subheader("Planted cue")
    cue = cue[cue["method"].isin(view.methods)] if view.methods else cue
    table = cue.assign(auc_ci=[interval(a, b) for a, b in zip(cue["auc_low"], cue["auc_high"])])
    st.dataframe(table[["method", "auc", "auc_ci", "n_pos", "n_neg"]], hide_index=True, key="cue_trust_table",
                 column_config={"method": st.column_config.TextColumn("Method", pinned=True),
                                "auc": st.column_config.NumberColumn("ROC-AUC", format="%.2f"),
                                "auc_ci": st.column_config.TextColumn("95 % interval"),
                                "n_pos": st.column_config.NumberColumn("Flip without cue"),
                                "n_neg": st.column_config.NumberColumn("Keep top-1")})
    st.caption("Ground truth from the data: a confident decision whose top-1 changes when the planted cue is "
               "filled (`no_cue`) rests on the cue. ROC-AUC of each map's cue mass for flagging those decisions.")


def choose_fill() -> str | None:
    """The variants' fill the page shows: the run's only one, or the one picked when a rerun added another."""
    found = list(data_cf.fills(view.store, view.fp, view.run_id))
    if len(found) <= 1:
        return found[0] if found else None
    us.declare(us.choice("sc_fill", found, "blur" if "blur" in found else found[0]))
    return st.radio("Fill of the removed pixels", found, key="sc_fill", horizontal=True,
                    help="This run holds variants made with several fills (`--cf-fill`); a verdict that changes "
                         "with the fill is a verdict about the fill.")


def compute_statistics(proto: str, cues: bool, page: bool = False) -> None:
    """Compute (into the caches) the statistics drawn below the per-class table under ``proto``: the BG-Gap,
    the trust tables' per-map rows, the cue table; with ``page`` also the decisions, the per-class shares and
    the method-trust table's default intervals, that is everything the page's tables show."""
    args = (view.store, view.fp, view.run_id, proto)
    if page:
        data_cf.statistic(*args, "context_share", FILL)
    data_cf.method_rows(*args, FILL)
    for name in ("bg_gap", *(("cue_trust",) if cues else ())):
        data_cf.statistic(*args, name, FILL)
    if page:
        data_cf.method_trust(*args, "normal", FILL)


def in_background(work, name: str) -> Future:
    """Run ``work()`` on a daemon thread attached to this script run; the future holds its outcome."""
    done: Future = Future()
    ctx = get_script_run_ctx()

    def run() -> None:
        add_script_run_ctx(threading.current_thread(), ctx)
        try:
            work()
            done.set_result(None)
        except BaseException as e:  # noqa: BLE001 (re-raised by done.result() where it is awaited)
            done.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return done


def statistics_meanwhile(cues: bool) -> Future:
    """Start :func:`compute_statistics` of the page's protocol on a worker thread and return its future. They mostly run
    outside the GIL (DuckDB, NumPy), so on a protocol or fill not seen before they overlap with the per-class
    table and the evidence pictures drawn meanwhile instead of adding to them; the page's later calls of the
    same cached functions are then cache hits. The method-trust table itself is left to the page (its interval
    follows a toggle)."""
    return in_background(lambda: compute_statistics(protocol, cues), "shortcuts-statistics")


@st.cache_resource(show_spinner=False)
def _prefetched() -> set:
    """The (store, fingerprint, run, protocol, fill) whose statistics a page has started to compute ahead."""
    return set()


def prefetch_other_protocols(cues: bool) -> None:
    """Once the page is drawn, compute the other protocols' tables in the background, so that switching the
    protocol in the sidebar, the page's most common change, finds them cached. A switch made meanwhile waits
    for the value being computed instead of computing it twice (Streamlit's cache holds a lock per value)."""
    for proto in PROTOCOLS:
        key = (view.store, view.fp, view.run_id, proto, FILL)
        if proto != protocol and key not in _prefetched():
            _prefetched().add(key)
            in_background(lambda p=proto: compute_statistics(p, cues, page=True), "shortcuts-prefetch")


stored = data_cf.stored_variants(view.store, view.fp, view.run_id)
if not stored:
    no_counterfactuals()
else:
    FILL = choose_fill()
    decisions = data_cf.reliance(view.store, view.fp, view.run_id, protocol, FILL)
    if decisions.empty:
        st.info(f"No counterfactual rows under protocol **{protocol}**: choose another in the sidebar.")
    else:
        cues = "no_cue" in stored  # planted cues: the data's own ground truth of a shortcut
        statistics = statistics_meanwhile(cues)
        shares = per_class_section()  # first: its chart and table make a new browser tab load their code early
        above_evidence = st.container()
        evidence_section(decisions)  # drawn below the other tables while the worker computes them
        statistics.result()
        with above_evidence:
            if shares:
                bg_gap_line()
            trust_section()
            if cues:
                cue_section()
        prefetch_other_protocols(cues)

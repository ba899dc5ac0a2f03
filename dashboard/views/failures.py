"""Failure cases: the model is sure (and, optionally, right) but the map lies off the object.

Ranked by ``score = confidence × (1 − agreement)``, with ``agreement`` a metric of map-on-object agreement in
[0, 1] (IoU, relevance mass, ...): high when the model is confident and the map misses the object; or, where the
store has planted-cue metrics, by ``confidence × cue mass`` (the map on the cue). Select a row to open the
image.
"""

import streamlit as st

from dashboard import common, data
from dashboard import urlstate as us
from dashboard.metrics_info import failure_formula, failure_score_columns, label, meaning

view = common.page_view()
st.title("Failure cases")
st.caption("Right for the wrong reasons? Confident predictions whose explanation lies on the background.")

agree = failure_score_columns(view.columns)
if not agree:
    st.info("This run has no map-on-object agreement metric (IoU, relevance mass, ...) to rank by.")
elif common.need_methods(view):
    c1, c2, c3 = st.columns([3, 2, 2], vertical_alignment="bottom")
    with c1:
        us.declare(us.choice("fc_metric", agree, agree[0]))
        metric = st.selectbox("Ranked by", agree, key="fc_metric", format_func=failure_formula)
    correct_known = view.facets["correct_known"] > 0
    with c2:
        us.declare(us.flag("fc_correct", False))
        correct_only = st.toggle("Only correct predictions", key="fc_correct", disabled=not correct_known,
                                 help=None if correct_known else "correctness is unknown for this run")
    with c3:
        us.declare(us.choice("fc_n", [25, 50, 100, 200], 50))
        n = st.selectbox("Show", [25, 50, 100, 200], key="fc_n", format_func=lambda k: f"top {k}")
    st.markdown(f"**score = {failure_formula(metric)}** — {meaning(metric)}. Highest first; the sidebar's "
                "filters (confidence range, classes, …) apply.")
    # the score's form (1 − column, or the column) follows the metric's catalogue direction
    cases = data.failures(view.store, view.fp, view.filter, metric, int(n), bool(correct_only and correct_known))
    if cases.empty:
        common.empty_result("confident rows with a defined score")
    else:
        ids = tuple(dict.fromkeys(cases["image_id"]))
        cases.insert(0, "rank", range(1, len(cases) + 1))
        cases.insert(1, "thumbnail", [data.mini_thumbnail(view.store, view.fp, view.run_id, ids, i)
                                      for i in cases["image_id"]])
        columns = ["rank", "thumbnail", "image_id", "method", "pred_label", "confidence", "value", "score",
                   "gt_classes", "target_label"]
        if correct_known:
            columns.insert(5, "correct")
        config = {
            "rank": st.column_config.NumberColumn("#", width="small"),
            "thumbnail": st.column_config.ImageColumn("Image", width="small"),
            "image_id": st.column_config.TextColumn("Image id"),
            "method": st.column_config.TextColumn("Method"),
            "pred_label": st.column_config.TextColumn("Prediction"),
            "correct": st.column_config.CheckboxColumn("Correct"),
            "confidence": st.column_config.NumberColumn("Confidence", format="%.3f"),
            "value": st.column_config.NumberColumn(label(metric), format="%.3f", help=meaning(metric)),
            "score": st.column_config.ProgressColumn("Score", format="%.3f", min_value=0.0, max_value=1.0,
                                                     help=failure_formula(metric)),
            "gt_classes": st.column_config.TextColumn("Ground truth"),
            "target_label": st.column_config.TextColumn("Explained", help="the class the map explains"),
        }
        glance = cases.head(4)
        style = ("jet", 0.5, True, False, True)
        # fetch and decode only what the previews show, not the maps of every row of the table
        glance_ids = tuple(dict.fromkeys(glance["image_id"]))
        glance_methods = tuple(dict.fromkeys(glance["method"]))
        for col, r in zip(st.columns(4), glance.to_dict("records")):
            with col:
                tc = common.nan_to_none(r.get("target_class"))
                img = data.overlay(view.store, view.fp, view.run_id, glance_ids, r["image_id"], r["method"],
                                   common.nan_to_none(r.get("target_kind")), None if tc is None else int(tc),
                                   view.protocol or "report", common.nan_to_none(r.get("gt_target")), style,
                                   glance_methods)
                if img:
                    st.image(img, width="stretch")
                st.caption(f"#{r['rank']} · **{r['image_id']}** · {r['method']} · score {common.fmt(r['score'])}")
        event = st.dataframe(cases[columns], hide_index=True, column_config=config, key="failure_table",
                             on_select="rerun", selection_mode="single-row", row_height=64,
                             height=min(40 + 65 * len(cases), 720))
        st.caption(f"{len(cases)} rows · select a row to open the image with every method's map")
        rows = (event or {}).get("selection", {}).get("rows", []) if event is not None else []
        if rows:
            row = int(rows[0])
            if 0 <= row < len(cases):
                common.open_image(cases["image_id"].iloc[row])

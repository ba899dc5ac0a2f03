"""Failure cases: images whose decision seems to rest on the wrong reason, one row per image, ranked by the
strongest evidence the store holds:

1. counterfactual context reliance, when the run has counterfactual inputs: how much of the explained class's
   probability survives with the object removed (:mod:`store.shortcuts`);
2. on a store with planted-cue metrics, ``confidence × cue mass`` (the maps sit on the cue);
3. otherwise ``confidence × (1 − agreement)``, with ``agreement`` a map-on-object metric (IoU, relevance mass,
   ...): the model is sure and the maps miss the object.

Per-map scores are averaged over the chosen methods, whose values are shown as columns. A model without a
classifier head has no confidence: its images are ranked by the maps alone. Select a row (or a preview card's
button) to open the image; the ranked list can be sent to the grid or saved as image ids.
"""

import streamlit as st

from dashboard import common, data
from dashboard import urlstate as us
from dashboard.metrics_info import AGREEMENT, MISPLACEMENT, failure_formula, label, meaning

RELIANCE = "context reliance"
PREVIEWS = 4

view = common.page_view()
st.title("Failure cases")
st.caption("Right for the wrong reasons? Confident predictions whose evidence lies off the object.")


def rankings(view) -> list[str]:
    """What the page can rank by, strongest evidence first: counterfactual context reliance, then the cue
    columns, then the map-on-object agreement columns the run fills."""
    out = [RELIANCE] if data.has_counterfactuals(view.store, view.fp, view.run_id) else []
    out += [c for c in MISPLACEMENT if c in view.columns] + [c for c in AGREEMENT if c in view.columns]
    return out


def formula(key: str, headless: bool) -> str:
    if key == RELIANCE:
        return "context reliance: p(class | object removed) / p(class), the image's highest"
    text = failure_formula(key).replace(label(key), f"mean over methods of {label(key)}", 1)
    return text.replace("confidence × ", "") if headless else text


def map_column(key: str) -> str:
    """The per-method column shown beside the ranking (reliance is per decision, not per map: show IoU)."""
    return key if key != RELIANCE else next((c for c in AGREEMENT if c in view.columns), view.columns[0])


options = rankings(view)
if not options:
    st.info("This run has no map-on-object agreement metric (IoU, relevance mass, ...) to rank by.")
elif common.need_methods(view):
    headless = view.facets["confidence_known"] == 0
    c1, c2, c3 = st.columns([3, 2, 2], vertical_alignment="bottom")
    with c1:
        us.declare(us.choice("fc_metric", options, options[0]))
        key = st.selectbox("Ranked by", options, key="fc_metric", format_func=lambda k: formula(k, headless))
    correct_known = view.facets["correct_known"] > 0
    with c2:
        us.declare(us.flag("fc_correct", False))
        correct_only = st.toggle("Only correct predictions", key="fc_correct", disabled=not correct_known,
                                 help=None if correct_known else "correctness is unknown for this run: "
                                 + data.correct_unknown_reason(view.store, view.fp, view.run_id))
    with c3:
        us.declare(us.choice("fc_n", [25, 50, 100, 200], 50))
        n = st.selectbox("Show", [25, 50, 100, 200], key="fc_n", format_func=lambda k: f"top {k} images")
    column = map_column(key)
    st.markdown(f"**score = {formula(key, headless)}** — "
                + (meaning(column) if key != RELIANCE else "1: the context alone supports the decision")
                + ". Highest first; the sidebar's filters (confidence range, classes, …) apply.")
    if headless:
        st.info("This run's model has no classifier head, so there is no confidence: images are ranked by their "
                "maps alone.", icon=":material/info:")
    cases = data.failure_images(view.store, view.fp, view.filter, column, int(n),
                                bool(correct_only and correct_known), key == RELIANCE)
    if cases.empty:
        common.empty_result("images with a defined score")
    else:
        ids = tuple(cases["image_id"])
        cases.insert(0, "rank", range(1, len(cases) + 1))
        cases.insert(1, "thumbnail", [data.mini_thumbnail(view.store, view.fp, view.run_id, ids, i) for i in ids])
        method_cols = [f"method:{m}" for m in view.methods if f"method:{m}" in cases]
        columns = ["rank", "thumbnail", "image_id", "score", "pred_label", "confidence"] + method_cols + \
            ["gt_classes"]
        if correct_known:
            columns.insert(5, "correct")
        if headless:
            columns.remove("confidence")
            columns.remove("pred_label")
        config = {
            "rank": st.column_config.NumberColumn("#", width="small"),
            "thumbnail": st.column_config.ImageColumn("Image", width="small"),
            "image_id": st.column_config.TextColumn("Image id"),
            "pred_label": st.column_config.TextColumn("Prediction"),
            "correct": st.column_config.CheckboxColumn("Correct"),
            "confidence": st.column_config.NumberColumn("Confidence", format="%.3f"),
            "score": st.column_config.ProgressColumn("Score", format="%.3f", min_value=0.0, max_value=1.0,
                                                     help=formula(key, headless)),
            "gt_classes": st.column_config.TextColumn("Ground truth"),
        }
        for c in method_cols:
            config[c] = st.column_config.NumberColumn(c.split(":", 1)[1], format="%.2f",
                                                      help=f"{label(column)} of this method's map")
        glance = cases.head(PREVIEWS)
        style = ("jet", 0.5, True, False, True)
        # fetch and decode only what the previews show (each image's worst map), not every row's maps
        glance_ids = tuple(glance["image_id"])
        glance_methods = tuple(dict.fromkeys(glance["worst_method"].dropna()))
        cells = common.primary_rows(data.rows_for_images(view.store, view.fp, view.filter, glance_ids))
        by_cell = {(c["image_id"], c["method"]): c for c in cells.to_dict("records")}
        for col, r in zip(st.columns(PREVIEWS), glance.to_dict("records")):
            with col:
                method = common.nan_to_none(r.get("worst_method"))
                img = common.cell_image(view, glance_ids, r["image_id"], by_cell.get((r["image_id"], method), {}),
                                        method, style, glance_methods)
                if img:
                    st.image(img, width="stretch")
                st.caption(f"#{r['rank']} · **{r['image_id']}** · score {common.fmt(r['score'])}"
                           + (f" · map: {method}" if method else ""))
                if st.button("open", key=f"fc_open_{r['image_id']}", icon=":material/open_in_new:",
                             type="tertiary"):
                    common.open_image(r["image_id"])
        event = st.dataframe(cases[columns], hide_index=True, column_config=config, key="failure_table",
                             on_select="rerun", selection_mode="single-row", row_height=64,
                             height=min(40 + 65 * len(cases), 720))
        st.caption(f"{len(cases)} images · select a row to open the image with every method's map")
        common.selection_actions(list(ids), key="fc", what="ranked images")
        rows = (event or {}).get("selection", {}).get("rows", []) if event is not None else []
        if rows and 0 <= int(rows[0]) < len(cases):
            common.open_image(cases["image_id"].iloc[int(rows[0])])

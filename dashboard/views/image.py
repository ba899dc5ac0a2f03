"""Image detail: one image, every chosen method's map side by side, the prediction, the ground truth and every
metric of every protocol.

The images to step through are those under the sidebar's filters (previous / next, or the ← / → keys); an image
opened by a link or from another page that the filters leave out is still shown, with a note."""

import json

import pandas as pd
import streamlit as st

from dashboard import common, data
from dashboard import urlstate as us
from dashboard.metrics_info import label, meaning
from dashboard.overlay import legend

MAX_COLUMNS = 4



def _step(ids: list[str], by: int) -> None:
    """Move the image choice ``by`` places along ``ids`` (a button's callback: runs before the widgets)."""
    current = st.session_state.get("image")
    i = ids.index(current) if current in ids else -1
    st.session_state["image"] = ids[max(0, min(len(ids) - 1, i + by))]


view = common.page_view()
every = data.image_ids(view.store, view.fp, view.run_id)
filtered = data.filtered_image_ids(view.store, view.fp, view.filter)
st.title("Image detail")
asked = us.pending("image")
# the filtered images, and the asked one where the filters leave it out (it exists: it is still shown)
ids = filtered + ([asked] if asked in every and asked not in filtered else [])
if not ids:
    common.empty_result("images")
else:
    us.declare(us.choice("image", ids, ids[0]))
    c_sel, c_prev, c_next, c_pos = st.columns([4, 1, 1, 3], vertical_alignment="bottom")
    image_id = c_sel.selectbox("Image", ids, key="image")
    position = ids.index(image_id)
    c_prev.button("Previous", key="img_prev", on_click=_step, args=(ids, -1), disabled=position == 0,
                  icon=":material/arrow_back:", shortcut="Left", width="stretch")
    c_next.button("Next", key="img_next", on_click=_step, args=(ids, 1), disabled=position == len(ids) - 1,
                  icon=":material/arrow_forward:", shortcut="Right", width="stretch")
    if image_id in filtered:
        c_pos.caption(f"image {position + 1} of {len(filtered):,} under the sidebar's filters (← / → keys)")
    else:
        c_pos.caption("this image is outside the sidebar's filters; ← / → step through the filtered images")
    batch = (image_id,)
    rec = data.images(view.store, view.fp, view.run_id, batch).get(image_id, {})
    rows = data.image_rows(view.store, view.fp, view.run_id, image_id)
    protocol = view.protocol or "report"
    here = rows[rows["protocol"] == protocol] if not rows.empty else rows

    gt = common.as_list(rec.get("gt_classes"))
    first = here.iloc[0].to_dict() if not here.empty else (rows.iloc[0].to_dict() if not rows.empty else {})
    correct = common.nan_to_none(first.get("correct"))
    facts = [f"**ground truth** {', '.join(gt) if gt else '–'}",
             f"**size** {rec.get('width', '?')}×{rec.get('height', '?')}"]
    prediction = common.prediction_text(first)
    if prediction:
        verdict = {True: " ✓ correct", False: " ✗ incorrect"}.get(correct, "")
        facts.append(f"**prediction** {prediction}{verdict}")
    if common.nan_to_none(first.get("image_group")):
        facts.append(f"**group** {first['image_group']}")
    st.markdown(" · ".join(facts))

    left, right = st.columns([1, 2])
    with left:
        style = (st.session_state.get("cmap", "jet"), 0.0, True, False, True)
        base = data.overlay(view.store, view.fp, view.run_id, batch, image_id, None, None, None, protocol,
                            common.nan_to_none(first.get("gt_target")), style)
        if base:
            st.image(base, caption=f"{image_id} · ground truth ({protocol}) outlined", width="stretch")
    with right:
        labels, probs = common.as_list(rec.get("top_labels")), common.as_list(rec.get("top_probs"))
        if labels:
            st.markdown("**Top-5 prediction**")
            top = pd.DataFrame({"rank": range(1, len(labels) + 1), "class": labels,
                                "probability": [float(p) for p in probs]})
            # a static table: a data grid's hover toolbar would sit on the probability column
            top["probability"] = top["probability"].map(lambda p: f"{p:.4f}")
            st.table(top.set_index("rank"))
        else:
            st.info("Headless model: no class prediction.")
        meta = rec.get("meta")
        if meta:
            with st.expander("Image metadata (what the data source recorded for this image)"):
                try:
                    st.json(json.loads(meta), expanded=True)
                except (TypeError, ValueError):
                    st.caption(str(meta))

    st.subheader(f"Maps ({protocol})")
    style = common.overlay_controls(view)
    methods = [m for m in view.methods if m in set(here["method"])] if not here.empty else []
    if not methods:
        st.info("No map of the chosen methods for this image under this protocol.")
    else:
        targets = list(dict.fromkeys(here["target_label"].fillna("–")))
        if len(targets) > 1:
            us.declare(us.choice("target", targets, targets[0]))
            target = st.radio("Explained target", targets, key="target", horizontal=True)
            shown = here[here["target_label"].fillna("–") == target]
        else:
            shown = here
        cells = {r["method"]: r for r in common.primary_rows(shown).to_dict("records")}
        ordered = [m for m in methods if m in cells]
        for start in range(0, len(ordered), MAX_COLUMNS):
            cols = st.columns(MAX_COLUMNS)
            for col, m in zip(cols, ordered[start:start + MAX_COLUMNS]):
                r = cells[m]
                tc = common.nan_to_none(r.get("target_class"))
                img = data.overlay(view.store, view.fp, view.run_id, batch, image_id, m,
                                   common.nan_to_none(r.get("target_kind")), None if tc is None else int(tc), protocol,
                                   common.nan_to_none(r.get("gt_target")), style)
                with col:
                    st.markdown(f"**{m}**")
                    if img:
                        st.image(img, width="stretch")
                    st.caption(common.caption_for(r, view.columns) + f" · explains {r.get('target_label')}")
        st.caption(legend(common.has_cues(view)))

    st.subheader("Every metric")
    if rows.empty:
        common.empty_result()
    else:
        present = [c for c in view.known if c in rows.columns and rows[c].notna().any()]
        table = rows[["method", "protocol", "target_label", "gt_target"] + present].copy()
        table = table[table["method"].isin(view.methods)] if view.methods else table
        config = {c: st.column_config.NumberColumn(label(c), format="%.3f", help=meaning(c)) for c in present}
        config.update({"method": st.column_config.TextColumn("Method", pinned=True),
                       "protocol": st.column_config.TextColumn("Protocol"),
                       "target_label": st.column_config.TextColumn("Explained"),
                       "gt_target": st.column_config.TextColumn("Object mask")})
        st.dataframe(table, hide_index=True, column_config=config, key="metrics_table")
        st.caption("all protocols; raw values (fractions); None where a metric is undefined for the row")

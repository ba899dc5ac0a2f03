"""Heatmap grid: one row per image, one column per method; only the page on screen is fetched and drawn."""

import math
from dataclasses import replace

import streamlit as st

from dashboard import common, data
from dashboard import urlstate as us
from dashboard.metrics_info import label
from dashboard.overlay import legend
from store.catalogue import higher_is_better
from store.query import IMAGE_ORDERS

PER_PAGE = (4, 8, 12, 16)

def _metric_option(column: str) -> str:
    """A metric with its direction, so that "worst first" reads right (highest cue mass first, lowest IoU)."""
    arrow = {True: " (higher is better)", False: " (lower is better)"}.get(higher_is_better(column), "")
    return label(column) + arrow


def breakable(name: str) -> str:
    """A method name that a narrow header may wrap only after its underscores, never mid-word."""
    return name.replace("_", "_\u200b")


view = common.page_view()
st.title("Heatmap grid")

if common.need_methods(view):
    style = common.overlay_controls(view)
    c1, c2, c3 = st.columns([3, 3, 2], vertical_alignment="bottom")
    orders = list(IMAGE_ORDERS)
    with c1:
        us.declare(us.choice("order", orders, "image id"))
        order = st.selectbox("Order", orders, key="order")
    with c2:
        metric_options = view.columns or view.known[:1]
        us.declare(us.choice("order_metric", metric_options, metric_options[0]))
        order_metric = st.selectbox("Order by metric (mean over methods)", metric_options, key="order_metric",
                                    format_func=_metric_option, disabled=order not in ("worst first", "best first"))
    with c3:
        us.declare(us.choice("per_page", list(PER_PAGE), 8))
        per_page = st.selectbox("Images per page", PER_PAGE, key="per_page")

    # the count first (cheap), then only this page's images
    _, total = data.image_page(view.store, view.fp, view.filter, order_metric, order, 1, 0)
    if total == 0:
        common.empty_result("images")
    else:
        pages = max(1, math.ceil(total / per_page))
        us.declare(us.integer("page", 1, pages, 1))
        page_no = int(st.session_state["page"])
        ids_df, _ = data.image_page(view.store, view.fp, view.filter, order_metric, order, int(per_page),
                                    (page_no - 1) * int(per_page))
        ids = tuple(ids_df["image_id"])
        methods = tuple(view.methods)
        rows = common.primary_rows(data.rows_for_images(view.store, view.fp, view.filter, ids))
        by_cell = {(r["image_id"], r["method"]): r for r in rows.to_dict("records")}
        unfiltered = set()
        if view.filter.thresholds:  # a cell whose row a threshold removed is "filtered", not a missing map
            every = data.rows_for_images(view.store, view.fp, replace(view.filter, thresholds=()), ids)
            unfiltered = set(zip(every["image_id"], every["method"]))
        if order in ("worst first", "best first"):
            st.caption(f"ordered by the mean {_metric_option(order_metric)} over the chosen methods, "
                       f"{order.replace(' first', '')} first")
        st.caption(f"{total:,} images · page {page_no} of {pages} · {legend(common.has_cues(view))}")

        header = st.columns([1] + [1] * len(methods))
        header[0].markdown("**image**")
        for col, m in zip(header[1:], methods):
            col.markdown(f"**{breakable(m)}**", help=m)
        for image_id in ids:
            cols = st.columns([1] + [1] * len(methods))
            any_row = next((by_cell[(image_id, m)] for m in methods if (image_id, m) in by_cell), {})
            base = common.cell_image(view, ids, image_id, {"gt_target": any_row.get("gt_target")}, None, style,
                                     methods)
            with cols[0]:
                if base:
                    st.image(base, width="stretch")
                st.caption(f"**{image_id}** · GT {any_row.get('gt_classes', '')}"
                           + common.prediction_text(any_row, digits=2, prefix=" · pred "))
                if st.button("open", key=f"open_{image_id}", type="tertiary", icon=":material/open_in_new:"):
                    common.open_image(image_id)
            for col, m in zip(cols[1:], methods):
                row = by_cell.get((image_id, m))
                with col:
                    if row is None:
                        st.caption("filtered out by a metric threshold" if (image_id, m) in unfiltered
                                   else "no map")
                        continue
                    img = common.cell_image(view, ids, image_id, row, m, style, methods)
                    if img:
                        st.image(img, width="stretch")
                    st.caption(common.caption_for(row, view.columns, compact=len(methods) > 5))
        st.pagination(pages, key="page")

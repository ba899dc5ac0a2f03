"""Leaderboard: the source report's table per method, every other metric the run has, and a per-class view."""

import plotly.graph_objects as go
import streamlit as st

from dashboard import common, data
from dashboard import urlstate as us
from dashboard.metrics_info import label, meaning
from store.query import CLASS_AWARE_PROTOCOLS

#: the columns whose cells carry a 95 % bootstrap interval: the evaluation report's main three (resampling
#: every column would cost seconds on a large run)
INTERVAL_COLUMNS = ("iou", "f1", "pixel_accuracy")
#: up to this many (method, image) means the intervals are on by default (about 0.3 s of resampling on two
#: cores); above, a switch turns them on, so that a filter change on a large run stays within a second
INTERVALS_BY_DEFAULT = 20_000


def interval_text(lo: float, hi: float, n) -> str:
    """A cell's uncertainty as the report prints it (×100), with the number of images behind the mean."""
    ci = f"[{lo * 100:.1f}, {hi * 100:.1f}]" if not (common.is_missing(lo) or common.is_missing(hi)) else "–"
    return f"{ci} · n={int(n)}" if not common.is_missing(n) else ci


def show_skips(view) -> None:
    """Methods (or images) the run left out, with the reason the job recorded: a method skipped for the whole
    run has no rows, so without this it would simply be absent from the table."""
    skipped = data.skips(view.store, view.fp, view.run_id)
    if skipped.empty:
        return
    methods = sorted(set(skipped["method"].dropna()))
    st.warning(f"This run skipped work on {int(skipped['images'].sum()):,} image(s)"
               + (f"; methods with skips: {', '.join(methods)}" if methods else "")
               + ". The reasons are below.", icon=":material/block:")
    table = skipped[["stage", "method", "images", "reason"]]
    st.dataframe(table, hide_index=True, key="skips_table", column_config={
        "stage": st.column_config.TextColumn("Stage"), "method": st.column_config.TextColumn("Method"),
        "images": st.column_config.NumberColumn("Images"), "reason": st.column_config.TextColumn("Reason")})

view = common.page_view()
st.title("Leaderboard")
run = view.run
st.caption(f"run `{view.run_id}` · model `{run['model']}` · protocol **{view.protocol}** · "
           "means ×100 over images, as in `vitlens report`: each image's rows (one per explained target) are "
           "averaged first, so every image weighs the same; undefined values are skipped (see the counts)")

if common.need_methods(view):
    board = data.leaderboard(view.store, view.fp, view.filter, tuple(view.columns))
    if board.empty:
        common.empty_result()
    else:
        table = board[["method", "images", "rows"]].copy()
        config = {"method": st.column_config.TextColumn("Method", pinned=True),
                  "images": st.column_config.NumberColumn("Images", help="distinct images"),
                  "rows": st.column_config.NumberColumn("Rows", help="metric rows (image × explained target)")}
        cells = int(board["images"].sum())
        us.declare(us.flag("lb_ci", cells <= INTERVALS_BY_DEFAULT))
        show_ci = st.toggle("95 % intervals", key="lb_ci",
                            help=f"bootstrap intervals of the means (on by default up to {INTERVALS_BY_DEFAULT:,} "
                                 f"method × image means; this view has {cells:,})")
        with_ci = tuple(c for c in INTERVAL_COLUMNS if c in view.columns) if show_ci else ()
        ci = data.leaderboard_intervals(view.store, view.fp, view.filter, with_ci) if with_ci else None
        for c in view.columns:
            table[c] = board[c] * 100.0
            config[c] = st.column_config.NumberColumn(label(c), format="%.1f", help=meaning(c))
            if c in with_ci:
                bounds = ci.reindex(board["method"])
                table[f"{c}_ci"] = [interval_text(lo, hi, n) for lo, hi, n in
                                    zip(bounds[f"{c}_lo"], bounds[f"{c}_hi"], board[f"n_{c}"])]
                config[f"{c}_ci"] = st.column_config.TextColumn(
                    f"{label(c)} 95 % CI", help="percentile bootstrap interval of the mean (×100, 1000 resamples "
                    "of the images, as `vitlens report`) and the number of images with a defined value")
        table["ms_per_image"] = board["seconds"] * 1000.0
        config["ms_per_image"] = st.column_config.NumberColumn(
            "ms / image", format="%.2f", help="this method's share of the compute time per image (summed over "
                                              "the image's explained targets)")
        st.dataframe(table, hide_index=True, column_config=config, key="leaderboard_table")
    show_skips(view)
    if not board.empty:
        with st.expander("Images with a defined value, per metric"):
            counts = board[["method"] + [f"n_{c}" for c in view.columns]].rename(
                columns={f"n_{c}": label(c) for c in view.columns})
            st.dataframe(counts, hide_index=True)

        st.subheader("Per class")
        if common.need_columns(view):
            us.declare(us.choice("lb_metric", view.columns, view.columns[0]))
            metric = st.selectbox("Metric", view.columns, key="lb_metric", format_func=label, width=260)
            per_class = data.class_breakdown(view.store, view.fp, view.filter, metric)
            if per_class.empty:
                common.empty_result("classes")
            else:
                grid = per_class.pivot(index="method", columns="cls", values="value") * 100.0
                counts = per_class.pivot(index="method", columns="cls", values="n")
                methods = [m for m in board["method"] if m in grid.index]
                grid, counts = grid.loc[methods], counts.loc[methods]
                fig = go.Figure(go.Heatmap(
                    z=grid.values, x=list(grid.columns), y=list(grid.index), colorscale="Viridis",
                    text=[[common.fmt(v, 1) for v in row] for row in grid.values], texttemplate="%{text}",
                    customdata=counts.values,
                    hovertemplate="%{y} · %{x}<br>" + label(metric) + " ×100: %{z:.1f}<br>images: %{customdata}"
                                  "<extra></extra>",
                    colorbar={"title": {"text": "×100"}}))
                fig.update_layout(height=140 + 36 * len(methods), margin={"l": 10, "r": 10, "t": 30, "b": 10},
                                  xaxis={"side": "top"}, yaxis={"autorange": "reversed"})
                st.plotly_chart(fig, key="class_heatmap")
                if view.protocol in CLASS_AWARE_PROTOCOLS:
                    how = ("a row counts for the VOC class it explains (its object mask), so the rows of an "
                           "image with several classes explained separately land in separate cells")
                else:
                    how = "a row counts for every VOC class present in its image"
                st.caption(f"mean {label(metric)} ×100 per method and VOC class over images ({view.protocol}: "
                           f"{how})")

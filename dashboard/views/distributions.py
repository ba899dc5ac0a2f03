"""Distributions of any metric per method, and confidence against a metric (click a point to open it)."""

import plotly.graph_objects as go
import streamlit as st

from dashboard import common, data
from dashboard import urlstate as us
from dashboard.metrics_info import label, meaning
from store.catalogue import higher_is_better

CHARTS = ("box", "violin", "histogram")
SCATTER_POINTS = 3000
BINS = 40
VIOLIN_POINTS = 6000

view = common.page_view()
st.title("Distributions")


def suspicious_corner(metric: str) -> str:
    """Where the scatter's sure-but-wrong-reason points lie, by the metric's direction (one place: the
    catalogue): low agreement (IoU) is the lower right, high misplacement (cue mass) the upper right."""
    better = higher_is_better(metric)
    if better is None:
        return f"{label(metric)} is descriptive (neither high nor low is better)"
    corner = "lower right" if better else "upper right"
    return (f"the {corner} is where the model is sure and {label(metric)} is "
            f"{'low' if better else 'high'}: " + meaning(metric))


def _colours(methods):
    import plotly.express as px

    palette = px.colors.qualitative.D3
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


if common.need_methods(view) and common.need_columns(view):
    c1, c2 = st.columns([2, 3])
    with c1:
        us.declare(us.choice("metric", view.columns, view.columns[0]))
        metric = st.selectbox("Metric", view.columns, key="metric", format_func=label, help=None)
    with c2:
        us.declare(us.choice("chart", list(CHARTS), "box"))
        chart = st.radio("Chart", CHARTS, key="chart", horizontal=True)
    st.caption(meaning(metric))
    colours = _colours(view.facets["methods"])

    fig = go.Figure()
    if chart == "box":
        stats = data.box_stats(view.store, view.fp, view.filter, metric)
        for r in stats.to_dict("records"):
            fig.add_trace(go.Box(name=r["method"], x=[r["method"]], q1=[r["q1"]], median=[r["median"]], q3=[r["q3"]],
                                 lowerfence=[r["min"]], upperfence=[r["max"]], mean=[r["mean"]],
                                 marker_color=colours.get(r["method"]), boxpoints=False, boxmean=True,
                                 hovertemplate=f"{r['method']} · n={r['n']}<extra></extra>"))
        empty = stats.empty
        note = "box: quartiles, whiskers at min / max, dashed line the mean (computed over every filtered row)"
    elif chart == "violin":
        values, total = data.sample(view.store, view.fp, view.filter, metric, VIOLIN_POINTS)
        for m, part in values.groupby("method", sort=True):
            fig.add_trace(go.Violin(y=part["value"], name=m, box_visible=True, meanline_visible=True,
                                    points=False, line_color=colours.get(m), spanmode="hard"))
        empty = values.empty
        note = (f"violin of a fixed subset of {len(values):,} of {total:,} rows" if total > len(values)
                else f"violin of all {total:,} rows")
    else:
        # about sqrt(rows per method) bins, between 10 and 40
        bins = int(min(BINS, max(10, round((int(view.run['rows']) / max(1, len(view.methods))) ** 0.5))))
        hist = data.histogram(view.store, view.fp, view.filter, metric, bins)
        if not hist.empty:  # every method shares the bins: recover them from any row
            width = float(hist["hi"].iloc[0] - hist["lo"].iloc[0])
            start = float(hist["lo"].iloc[0]) - int(hist["k"].iloc[0]) * width
            centres = [start + (k + 0.5) * width for k in range(bins)]
        for m, part in hist.groupby("method", sort=True):
            counts = dict(zip(part["k"].astype(int), part["n"].astype(int)))
            fig.add_trace(go.Scatter(x=centres, y=[counts.get(k, 0) for k in range(bins)], name=m,
                                     mode="lines", line={"shape": "hvh", "width": 2, "color": colours.get(m)},
                                     hovertemplate="%{x:.3f}: %{y} rows<extra>" + m + "</extra>"))
        fig.update_layout(xaxis_title=label(metric), yaxis_title="rows")
        empty = hist.empty
        note = f"histogram over {bins} common bins (counted in the database), one step line per method"
    if empty:
        common.empty_result()
    else:
        if chart != "histogram":
            fig.update_layout(yaxis_title=label(metric), showlegend=False)
        fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 30, "b": 10})
        st.plotly_chart(fig, key=f"dist_{chart}")
        st.caption(note)

    st.subheader(f"Confidence vs {label(metric)}")
    if view.facets["confidence_known"] == 0:
        st.info("This run's model has no classifier head, so there is no confidence to plot.")
    else:
        points, total = data.sample(view.store, view.fp, view.filter, metric, SCATTER_POINTS, True)
        if points.empty:
            common.empty_result()
        else:
            sfig = go.Figure()
            traces = []  # the image ids of each trace's points, to resolve a selection without customdata
            for m, part in points.groupby("method", sort=True):
                traces.append(part["image_id"].astype(str).tolist())
                sfig.add_trace(go.Scatter(
                    x=part["confidence"], y=part["value"], mode="markers", name=m,
                    marker={"color": colours.get(m), "size": 7, "opacity": 0.75},
                    customdata=part[["image_id", "pred_label", "gt_classes"]].astype(str).values,
                    hovertemplate="%{customdata[0]}<br>pred %{customdata[1]} · GT %{customdata[2]}<br>"
                                  "confidence %{x:.3f} · " + label(metric) + " %{y:.3f}<extra>" + m + "</extra>"))
            sfig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                               xaxis_title="confidence (top-1 probability)", yaxis_title=label(metric))
            # no dragmode of our own: Streamlit turns clicks into selections only while the drag tool is not
            # box/lasso select (the toolbar's select tools still draw boxes)
            event = st.plotly_chart(sfig, key="scatter", on_select="rerun", selection_mode=("points", "box"))
            shown = (f"a fixed subset of {len(points):,} of {total:,} rows" if total > len(points)
                     else f"all {total:,} rows")
            st.caption(f"{shown}; {suspicious_corner(metric)}. Click a point to open its image, or draw a box "
                       "(or lasso) to select several.")
            selected = common.selected_image_ids(event, traces)
            if len(selected) == 1:
                common.open_image(selected[0])
            elif selected:
                st.markdown(f"**{len(selected)} images selected**")
                common.selection_actions(selected, key="scatter")
                c1, _ = st.columns([2, 4])
                chosen = c1.selectbox("Open one of them", selected, index=None, key="scatter_open",
                                      placeholder=f"choose one of the {len(selected)} images")
                if chosen:
                    common.open_image(chosen)

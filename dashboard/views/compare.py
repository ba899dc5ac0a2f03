"""Compare runs: the sidebar's run (A) beside a second run (B) of the same store — another model, other weights or
another input size over the same images. Per method, the paired difference of the mean per-image metric over the
images both runs scored, with a bootstrap interval; then one image's maps of both runs side by side."""

import plotly.graph_objects as go
import streamlit as st

from dashboard import common, data, data_compare
from dashboard import urlstate as us
from dashboard.metrics_info import label, meaning
from dashboard.overlay import LEGEND
from store.catalogue import lower_is_better

view = common.page_view()
st.title("Compare runs")
protocol = view.protocol or "report"

others = data_compare.run_choices(view.store, view.fp, view.run_id)
if others.empty:
    st.info("This store holds one run only. Compute a second one over the same images into it (another `--model`, "
            "weights or input size, same `--out`) to compare them here.")
    st.stop()
facts = {r["run_id"]: r for r in others.to_dict("records")}


def run_label(run_id: str) -> str:
    r = facts[run_id]
    return f"{r['model']} · {run_id} · {int(r['shared'])} shared images"


us.declare(us.choice("cmp_run", list(facts), next(iter(facts))))
c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
run_b = c1.selectbox("Compare with run (B)", list(facts), key="cmp_run", format_func=run_label)
b = facts[run_b]
st.caption(f"**A** `{view.run_id}` · model `{view.run['model']}` — **B** `{run_b}` · model `{b['model']}`"
           f"{' · weights `' + str(b['weights']) + '`' if b.get('weights') else ''} · protocol **{protocol}** · "
           "the sidebar's filters apply to each run's own rows")
if not int(b["shared"]):
    st.warning("The two runs have no image in common: nothing to pair.")
    st.stop()

if common.need_methods(view) and common.need_columns(view):
    us.declare(us.choice("cmp_metric", view.columns, view.columns[0]))
    metric = c2.selectbox("Metric", view.columns, key="cmp_metric", format_func=label)
    board = data_compare.leaderboard(view.store, view.fp, view.filter, run_b, metric)
    st.subheader(f"{label(metric)}: B − A per method")
    if board.empty:
        common.empty_result("images scored by both runs")
    else:
        table = board.assign(mean_a=board["mean_a"] * 100, mean_b=board["mean_b"] * 100, diff=board["diff"] * 100,
                             low=board["low"] * 100, high=board["high"] * 100)
        fig = go.Figure(go.Scatter(
            x=table["diff"], y=table["method"], mode="markers", marker={"size": 10},
            error_x={"type": "data", "symmetric": False, "array": table["high"] - table["diff"],
                     "arrayminus": table["diff"] - table["low"]},
            customdata=table[["n", "mean_a", "mean_b"]].to_numpy(),
            hovertemplate="%{y}: %{x:+.1f} (A %{customdata[1]:.1f}, B %{customdata[2]:.1f}; %{customdata[0]} images)"
                          "<extra></extra>"))
        fig.add_vline(x=0, line_dash="dot")
        fig.update_layout(height=120 + 40 * len(table), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                          xaxis={"title": f"B − A ({label(metric)} ×100)"}, yaxis={"autorange": "reversed"})
        st.plotly_chart(fig, key="compare_chart")
        better = "lower" if lower_is_better(metric) else "higher"
        st.dataframe(table[["method", "n", "mean_a", "mean_b", "diff", "low", "high", "better"]], hide_index=True,
                     key="compare_table", column_config={
                         "method": st.column_config.TextColumn("Method", pinned=True),
                         "n": st.column_config.NumberColumn("Images", help="images with a value in both runs"),
                         "mean_a": st.column_config.NumberColumn("A", format="%.1f", help=meaning(metric)),
                         "mean_b": st.column_config.NumberColumn("B", format="%.1f", help=meaning(metric)),
                         "diff": st.column_config.NumberColumn("B − A", format="%+.1f"),
                         "low": st.column_config.NumberColumn("95 % low", format="%+.1f"),
                         "high": st.column_config.NumberColumn("95 % high", format="%+.1f"),
                         "better": st.column_config.ProgressColumn("B better on", format="%.2f", min_value=0.0,
                                                                   max_value=1.0,
                                                                   help=f"share of images where B is {better}")})
        st.caption(f"×100, over the images both runs scored (each image's rows averaged first, as on the "
                   f"leaderboard); 95 % paired bootstrap interval over those images ({data_compare.RESAMPLES} "
                   f"resamples); {better} is better for {label(metric)}. Largest improvement of B first.")

st.subheader("One image, both runs")
ids = data_compare.shared_image_ids(view.store, view.fp, view.run_id, run_b)
if not ids:
    st.info("No image has a stored picture in both runs.")
    st.stop()
us.declare(us.choice("image", ids, ids[0]))
image_id = st.selectbox("Image", ids, key="image", width=320)
style = common.overlay_controls(view)
runs = {"A": view.run_id, "B": run_b}


def protocol_rows(run_id: str):
    """The image's metric rows of one run under the page's protocol, one per method."""
    rows = data.image_rows(view.store, view.fp, run_id, image_id)
    return common.primary_rows(rows[rows["protocol"] == protocol]) if not rows.empty else rows


rows = {k: protocol_rows(r) for k, r in runs.items()}
PAIRS_PER_ROW = 2  # methods per row, each as its pair of maps (A, B)


def prediction(k: str) -> str:
    first = rows[k].iloc[0].to_dict() if not rows[k].empty else {}
    verdict = {True: " ✓", False: " ✗"}.get(common.nan_to_none(first.get("correct")), "")
    return (f"prediction **{first['pred_label']}** ({common.fmt(first.get('confidence'), 3)}){verdict}"
            if common.nan_to_none(first.get("pred_label")) else "no class prediction")


def map_cell(k: str, m: str) -> None:
    """Run ``k``'s map of method ``m`` over the image, with its scores."""
    cell = rows[k][rows[k]["method"] == m]
    if cell.empty:
        st.caption(f"**{m}** · run {k} · no map")
        return
    c = cell.iloc[0].to_dict()
    tc = common.nan_to_none(c.get("target_class"))
    img = data.overlay(view.store, view.fp, runs[k], (image_id,), image_id, m, common.nan_to_none(c.get("target_kind")),
                       None if tc is None else int(tc), protocol, common.nan_to_none(c.get("gt_target")), style)
    if img:
        st.image(img, width="stretch")
    st.caption(f"**{m}** · run {k} · " + common.caption_for(c, view.columns, compact=True))


st.markdown(" — ".join(f"**{k}** `{r}` · {prediction(k)}" for k, r in runs.items()))
methods = [m for m in view.methods if m in set(rows["A"]["method"]) | set(rows["B"]["method"])]
if not methods:
    st.info("No map of the chosen methods for this image under this protocol in either run.")
for start in range(0, len(methods), PAIRS_PER_ROW):
    cols = iter(st.columns(2 * PAIRS_PER_ROW))
    for m in methods[start:start + PAIRS_PER_ROW]:
        for k in runs:
            with next(cols):
                map_cell(k, m)
st.caption(LEGEND + " · each map is min-max normalised on its own")

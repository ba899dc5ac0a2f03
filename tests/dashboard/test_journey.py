"""What a user meets on the way from "which method?" to "right for the wrong reason?", through Streamlit's
AppTest on the demo store (a planted cue, a model whose labels are the data's classes) and the synthetic one:
each test pins a behaviour that used to mislead."""

from __future__ import annotations

import pytest

from tests.dashboard.helpers import goto, has_table, run, table, texts

pytestmark = pytest.mark.slow


def warnings(at) -> list[str]:
    return [w.value for w in at.warning]


def test_a_folder_holding_the_store_one_level_down_shows_it(demo_out, app_at):
    at = run(app_at(demo_out))
    assert [t.value for t in at.title] == ["Leaderboard"]
    assert "subfolder `store`" in "\n".join(i.value for i in at.info)
    assert table(at, "leaderboard_table").shape[0] > 0


def test_a_folder_holding_several_stores_names_them(small_store, tmp_path, app_at):
    for name in ("a", "b"):
        (tmp_path / name).symlink_to(small_store, target_is_directory=True)
    at = run(app_at(tmp_path))
    shown = texts(at)
    assert "No results to show yet" in shown
    assert str(tmp_path / "a") in shown and str(tmp_path / "b") in shown


# ------------------------------------------------------------------------------------------------ leaderboard
def test_leaderboard_cells_carry_the_reports_interval_and_image_count(small_store, app_at):
    from compute.report import build_report

    at = run(app_at(small_store, model="vit_a", run="top1run02", protocol="report"))
    board = table(at, "leaderboard_table").set_index("method")
    report = build_report(small_store, protocol="report", run_id="top1run02").table.set_index("method")
    for method in board.index:
        lo, hi = report.loc[method, "iou_lo"], report.loc[method, "iou_hi"]
        assert board.loc[method, "iou_ci"] == f"[{lo:.1f}, {hi:.1f}] · n={int(report.loc[method, 'images'])}"


def _with_skips(folder, rows):
    from store.writer import StoreWriter
    from tests.dashboard import synth

    store = synth.build(folder)
    writer = StoreWriter(store, "top1run02")
    writer.write_skips("0000000000000000", rows)
    return store


def test_leaderboard_names_skipped_methods_with_their_reason(tmp_path, app_at):
    reason = "NotImplementedError: chefer_lrp needs a classifier head"
    store = _with_skips(tmp_path / "s", [{"image_id": f"img_00{i}", "stage": "method:chefer_lrp", "reason": reason}
                                         for i in range(3)])
    at = run(app_at(store, model="vit_a", run="top1run02"))
    assert any("chefer_lrp" in w for w in warnings(at))
    skipped = table(at, "skips_table")
    assert skipped.to_dict("records") == [{"stage": "method:chefer_lrp", "method": "chefer_lrp", "images": 3,
                                           "reason": reason}]


def test_a_run_without_skips_shows_no_skip_table(small_store, app_at):
    at = run(app_at(small_store, model="vit_a", run="top1run02"))
    assert has_table(at, "leaderboard_table") and not has_table(at, "skips_table")


# -------------------------------------------------------------------------------------------------- correct
def test_unknown_correctness_gives_the_manifests_reason(odd_store, tmp_path, app_at):
    import json
    import shutil

    store = tmp_path / "odd"
    shutil.copytree(odd_store, store)
    manifest = next((store / "runs").glob("*.json"))
    m = json.loads(manifest.read_text())
    m["class_map"] = {"unsupported": "the model is headless (no class predictions)"}
    manifest.write_text(json.dumps(m))
    at = run(app_at(store))
    radio = at.sidebar.radio(key="correct")
    assert radio.disabled
    assert "the model is headless (no class predictions)" in radio.help


def test_demo_store_knows_which_predictions_are_correct(demo_store, app_at):
    at = run(app_at(demo_store))
    assert not at.sidebar.radio(key="correct").disabled


# ------------------------------------------------------------------------------------------------ links
def test_a_link_with_one_bad_method_warns_about_it(small_store, app_at):
    at = run(app_at(small_store, model="vit_a", run="top1run02", method=["rollout", "no_such_method"]))
    assert at.sidebar.multiselect(key="method").value == ["rollout"]
    assert any("no_such_method" in w for w in warnings(at))


def test_a_threshold_range_without_its_column_warns(small_store, app_at):
    at = run(app_at(small_store, model="vit_a", run="top1run02", thr_iou=["0.2", "0.9"]))
    assert any("thr_iou" in w and "thr=iou" in w for w in warnings(at))
    assert "thr_iou" not in at.query_params


def test_a_confidence_range_on_a_headless_run_warns(odd_store, app_at):
    at = run(app_at(odd_store, conf=["0.5", "1"]))
    assert any("conf=" in w and "no classifier head" in w for w in warnings(at))


def test_a_clean_link_warns_about_nothing(small_store, app_at):
    at = run(app_at(small_store, model="vit_a", run="top1run02", method=["rollout"], thr="iou",
                    thr_iou=["0.2", "0.9"]))
    assert not warnings(at)


# ------------------------------------------------------------------------------------------ orderings
def _mean_per_image(store, run_id, column, protocol="report"):
    from store import query as q

    con = q.connect(store)
    df = con.execute(f"SELECT image_id, {column} AS v FROM metrics WHERE run_id = ? AND protocol = ?",
                     [run_id, protocol]).df()
    con.close()
    return df.groupby("image_id")["v"].mean()


def test_grid_worst_first_by_cue_mass_shows_the_highest_cue_mass_first(demo_store, app_at):
    at = goto(app_at(demo_store, order="worst first", order_metric="cue_mass", per_page="4"), "grid")
    shown = [c.value.split("**")[1] for c in at.caption if c.value.startswith("**")]
    means = _mean_per_image(demo_store, _run_id(demo_store), "cue_mass").dropna()
    assert shown[0] == means.idxmax() and means[shown[0]] > means.median()
    assert "lower is better" in texts(at) and "worst first" in texts(at)


def _run_id(store):
    from store import query as q

    con = q.connect(store)
    try:
        return q.run_catalog(con)["run_id"].iloc[0]
    finally:
        con.close()


def test_scatter_caption_follows_the_metrics_direction(demo_store, app_at):
    at = goto(app_at(demo_store, metric="cue_mass"), "distributions")
    assert "upper right" in texts(at) and "lower right" not in texts(at)
    at = goto(app_at(demo_store, metric="iou"), "distributions")
    assert "lower right" in texts(at) and "upper right" not in texts(at)


# ------------------------------------------------------------------------------------------------- grid
def test_grid_cells_removed_by_a_threshold_read_as_filtered(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02", thr="iou", thr_iou=["0.5", "1"], per_page="16"),
              "grid")
    captions = [c.value for c in at.caption]
    assert any(c == "filtered out by a metric threshold" for c in captions)
    assert "no map" not in captions


def test_grid_headers_wrap_only_between_words_and_cue_legend_needs_cues(small_store, demo_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02"), "grid")
    assert "planted cue" not in texts(at) and "min-max normalised" in texts(at)
    assert not [t for t in at.toggle if t.key == "cue"]
    at = goto(app_at(demo_store, per_page="4"), "grid")
    headers = [m.value for m in at.markdown if m.value.startswith("**") and "_" in m.value]
    assert headers and all("_\u200b" in h for h in headers)
    assert "planted cue" in texts(at) and [t for t in at.toggle if t.key == "cue"]


def test_no_prediction_never_reads_none(odd_store, app_at):
    at = goto(app_at(odd_store, per_page="4"), "grid")
    assert "None" not in texts(at) and "pred" not in texts(at)


# ---------------------------------------------------------------------------------------- failure cases
def test_failure_cases_rank_images_by_context_reliance_when_the_store_has_it(tmp_path, app_at):
    from tests.dashboard import synth

    store = synth.build(tmp_path / "s")
    wanted = {"img_000": 0.1, "img_001": 0.9, "img_002": 0.4, "img_003": 0.7, "img_004": 0.2, "img_005": 0.6}
    synth.add_counterfactuals(store, "top1run02", wanted)
    at = goto(app_at(store, model="vit_a", run="top1run02"), "failures")
    assert at.selectbox(key="fc_metric").value == "context reliance"
    cases = table(at, "failure_table")
    assert list(cases["image_id"]) == sorted(wanted, key=wanted.get, reverse=True)
    assert cases["score"].to_numpy() == pytest.approx(sorted(wanted.values(), reverse=True), abs=1e-5)


def test_failure_cases_rank_a_cue_store_by_cue_mass_one_row_per_image(demo_store, app_at):
    # the demo store also holds counterfactual rows, the strongest evidence, which rank by default ...
    assert goto(app_at(demo_store), "failures").selectbox(key="fc_metric").value == "context reliance"
    at = goto(app_at(demo_store, fc_metric="cue_mass"), "failures")  # ... then the planted cue
    assert at.selectbox(key="fc_metric").value == "cue_mass"
    cases = table(at, "failure_table")
    assert cases["image_id"].is_unique
    methods = [c for c in cases if c.startswith("method:")]
    assert len(methods) == len(at.sidebar.multiselect(key="method").value)
    expected = cases["confidence"] * cases[methods].mean(axis=1)
    assert cases["score"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-5)
    assert list(cases["score"]) == sorted(cases["score"], reverse=True)


def test_failure_preview_card_opens_its_image(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02"), "failures")
    first = table(at, "failure_table")["image_id"].iloc[0]
    at.button(key=f"fc_open_{first}").click()
    run(at)
    assert [t.value for t in at.title] == ["Image detail"] and at.query_params["image"] == first


# ------------------------------------------------------------------------------- selections lead somewhere
def test_the_failure_list_goes_to_the_grid_and_stays_in_the_url(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02", fc_n="25"), "failures")
    ids = list(table(at, "failure_table")["image_id"])
    csv = next(b for b in at.get("download_button") if b.proto.id and "fc_csv" in b.proto.id)
    assert csv is not None
    at.button(key="fc_to_grid").click()
    run(at)
    assert [t.value for t in at.title] == ["Heatmap grid"]
    assert sorted(at.query_params.get_all("sel") if hasattr(at.query_params, "get_all")
                  else at.query_params["sel"]) == sorted(ids)
    assert f"{len(ids)} images" in texts(at)


def test_a_box_selection_in_the_scatter_goes_to_the_grid(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02"), "distributions")
    picked = ["img_001", "img_004", "img_005"]
    at.session_state["scatter"] = {"selection": {"points": [{"customdata": [i]} for i in picked],
                                                 "point_indices": [], "box": [], "lasso": []}}
    run(at)
    assert f"{len(picked)} images selected" in texts(at)
    at.button(key="scatter_to_grid").click()
    run(at)
    assert [t.value for t in at.title] == ["Heatmap grid"]
    shown = sorted(c.value.split("**")[1] for c in at.caption if c.value.startswith("**img_"))
    assert shown == picked


def test_a_scatter_click_without_customdata_opens_the_image(small_store, app_at):
    from dashboard.common import selected_image_ids

    event = {"selection": {"points": [{"curve_number": 1, "point_index": 2}]}}
    assert selected_image_ids(event, [["a", "b"], ["c", "d", "e"]]) == ["e"]
    assert selected_image_ids(event, None) == []


def test_a_shared_selection_link_shows_only_those_images(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02", sel=["img_002", "img_003"]), "grid")
    shown = sorted(c.value.split("**")[1] for c in at.caption if c.value.startswith("**img_"))
    assert shown == ["img_002", "img_003"]
    assert "2 image(s)" in texts(at)
    at.sidebar.button(key="sel_clear").click()
    run(at)
    assert "sel" not in at.query_params


def test_ids_csv_lists_the_selection():
    from dashboard.common import ids_csv

    assert ids_csv(["a", "b"]).decode().splitlines() == ["image_id", "a", "b"]


# ------------------------------------------------------------------------------------------ image detail
def test_image_detail_steps_through_the_filtered_images(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02", cls="cat"), "image")
    options = at.selectbox(key="image").options
    assert options == ["img_001", "img_003", "img_005"]  # the cat images only (odd ids), in order
    assert at.selectbox(key="image").value == "img_001"
    at.button(key="img_next").click()
    run(at)
    assert at.selectbox(key="image").value == "img_003" and at.query_params["image"] == "img_003"
    at.button(key="img_prev").click()
    run(at)
    assert at.selectbox(key="image").value == "img_001"
    assert at.button(key="img_prev").disabled


def test_image_outside_the_filters_is_still_shown_with_a_note(small_store, app_at):
    at = goto(app_at(small_store, model="vit_a", run="top1run02", cls="cat", image="img_002"), "image")
    assert at.selectbox(key="image").value == "img_002"
    assert "outside the sidebar's filters" in texts(at)


def test_scatter_clicks_select_points(small_store, app_at):
    """Streamlit turns a click into a selection only while the drag tool is not box or lasso select."""
    from tests.dashboard.helpers import charts

    at = goto(app_at(small_store, model="vit_a", run="top1run02"), "distributions")
    scatter = charts(at)[-1]
    assert scatter["layout"].get("dragmode") not in ("select", "lasso")
    assert all(t["type"] == "scatter" for t in scatter["data"])  # SVG points: a click picks the point


def test_image_detail_labels_its_metadata_and_binds_the_arrow_keys(odd_store, app_at):
    at = goto(app_at(odd_store, image="syn_001"), "image")
    assert [e.label for e in at.main.expander if "metadata" in e.label]
    assert at.main.json and all(j in [x for e in at.main.expander for x in e.json] for j in at.main.json)
    shortcuts = {b.key: b.proto.shortcut for b in at.main.button if b.key in ("img_prev", "img_next")}
    assert shortcuts == {"img_prev": "left", "img_next": "right"} or \
        {k: v.lower() for k, v in shortcuts.items()} == {"img_prev": "left", "img_next": "right"}


def test_the_dashboards_bootstrap_is_the_reports(app_at):
    """The leaderboard draws its resampling indices once per sample size; the intervals stay the report's."""
    import numpy as np

    from compute.report import bootstrap_interval
    from dashboard.data import bootstrap

    rng = np.random.default_rng(5)
    for n in (1, 7, 300):
        v = rng.random(n)
        v[rng.random(n) < 0.2] = np.nan
        assert bootstrap(v) == pytest.approx(bootstrap_interval(v), abs=1e-12, nan_ok=True)

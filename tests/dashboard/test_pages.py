"""Every page of the dashboard on a small real store, driven through Streamlit's AppTest: what is shown follows
the filters, the URL restores a view, and bad input never breaks a page."""

from __future__ import annotations

import pytest

from tests.dashboard.helpers import charts, goto, has_table, images, run, table, texts, values

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------- leaderboard
def test_leaderboard_lists_every_method_with_the_report_columns(store, store_info, app_at):
    from store import query as q

    at = run(app_at(store))
    assert [t.value for t in at.title] == ["Leaderboard"]
    board = table(at, "leaderboard_table")
    facets = store_info["facets"]
    assert sorted(board["method"]) == sorted(facets["methods"])
    assert {"iou", "f1", "pixel_accuracy"} <= set(board.columns)
    assert set(facets["columns"]) <= set(board.columns)  # every metric the run fills, not only the five
    assert (board["images"] == len(store_info["image_ids"])).all()
    con = q.connect(store)
    expected = q.leaderboard(con, q.RowFilter(run_id=store_info["run_id"], protocol="report"), ["iou"],
                             store_info["columns"]).set_index("method")["iou"] * 100
    for row in board.itertuples():
        assert row.iou == pytest.approx(expected[row.method], rel=1e-6)


def test_method_filter_drops_leaderboard_rows_and_goes_into_the_url(store, store_info, app_at):
    at = run(app_at(store))
    methods = store_info["facets"]["methods"]
    assert len(table(at, "leaderboard_table")) == len(methods)
    at.sidebar.multiselect(key="method").set_value(methods[:-1])
    run(at)
    board = table(at, "leaderboard_table")
    assert len(board) == len(methods) - 1
    assert methods[-1] not in set(board["method"])
    assert at.query_params["method"] == methods[:-1]


def test_class_filter_restricts_images_and_the_per_class_view(store, app_at):
    at = run(app_at(store, cls="sheep"))
    board = table(at, "leaderboard_table")
    assert (board["images"] == 2).all()  # voc-mini holds two sheep images
    heat = charts(at)[0]["data"][0]
    assert values(heat["x"]) == ["sheep"]


def test_protocol_switch_changes_the_numbers(store, app_at):
    at = run(app_at(store))
    report = table(at, "leaderboard_table").set_index("method")["iou"]
    at.sidebar.radio(key="protocol").set_value("clean")
    run(at)
    clean = table(at, "leaderboard_table").set_index("method")["iou"]
    assert at.query_params["protocol"] == "clean"
    assert (report.sort_index() != clean.sort_index()).any()


def test_confidence_range_with_no_rows_says_so(store, app_at):
    at = run(app_at(store, conf=["0.5", "1"]))  # a random-init model is never that sure
    assert not has_table(at, "leaderboard_table")
    assert "No rows match the filters" in texts(at)


def test_metric_threshold_keeps_only_rows_inside_it(store, store_info, app_at):
    at = run(app_at(store))
    full = table(at, "leaderboard_table").set_index("method")
    at.sidebar.multiselect(key="thr").set_value(["iou"])
    run(at)
    at.sidebar.slider(key="thr_iou").set_value((0.3, 1.0))
    run(at)
    cut = table(at, "leaderboard_table").set_index("method")
    assert (cut["iou"] >= 30.0 - 1e-6).all()
    assert (cut["rows"] <= full.loc[cut.index, "rows"]).all() and cut["rows"].sum() < full["rows"].sum()
    assert at.query_params["thr"] == "iou" and at.query_params["thr_iou"] == ["0.3", "1"]


def test_correct_filter_splits_the_rows_or_is_disabled(store, store_info, app_at):
    at = run(app_at(store))
    radio = at.sidebar.radio(key="correct")
    if store_info["facets"]["correct_known"] == 0:
        assert radio.disabled
        return
    from store import query as q

    con = q.connect(store)
    known = con.execute("SELECT count(*) FROM metrics WHERE protocol = 'report' AND correct IS NOT NULL").fetchone()[0]
    con.close()
    seen = 0
    for choice in ("correct", "incorrect"):
        at.sidebar.radio(key="correct").set_value(choice)
        run(at)
        if has_table(at, "leaderboard_table"):
            seen += table(at, "leaderboard_table")["rows"].sum()
    assert seen == known  # rows whose correctness is unknown (unmappable class) are in neither


def test_url_restores_a_shared_view(store, store_info, app_at):
    methods = store_info["facets"]["methods"][:2]
    at = run(app_at(store, method=methods, protocol="clean", lb_metric="f1"))
    assert sorted(table(at, "leaderboard_table")["method"]) == sorted(methods)
    assert at.sidebar.radio(key="protocol").value == "clean"
    assert at.selectbox(key="lb_metric").value == "f1"


def test_bad_url_parameters_fall_back_to_defaults(store, store_info, app_at):
    at = app_at(store, method="no_such_method", conf="banana", run="0' OR 1=1 --", protocol="both",
                thr=["iou", "nope"], thr_iou=["0.9", "0.1"], lb_metric="iou; DROP TABLE metrics",
                correct="maybe", cls="unicorn", model="x" * 500)
    run(at)
    board = table(at, "leaderboard_table")
    assert len(board) == len(store_info["facets"]["methods"])
    assert at.sidebar.radio(key="protocol").value == "report"
    assert at.sidebar.slider(key="conf").value == (0.0, 1.0)
    assert at.selectbox(key="lb_metric").value == "iou"
    # what was not valid is gone from the URL; the valid part of a list is kept
    assert set(at.query_params) <= {"thr"}
    assert at.query_params.get("thr") in (None, "iou")


def test_bad_url_parameters_on_every_page(store, app_at):
    for page in ("distributions", "failures", "grid", "image"):
        at = app_at(store, metric="x", chart="pie", fc_metric="1/0", fc_n="-3", fc_correct="perhaps",
                    page="-2", per_page="1000000", order="random()", alpha="2", cmap="<b>", gt="yes please",
                    image="../../etc/passwd", target="?")
        goto(at, page)
        assert not at.error, [e.value for e in at.error]


# ----------------------------------------------------------------------------------------- distributions
@pytest.mark.parametrize("chart", ["box", "violin", "histogram"])
def test_distribution_chart_has_one_trace_per_chosen_method(store, store_info, app_at, chart):
    methods = store_info["facets"]["methods"]
    at = goto(app_at(store, chart=chart, metric="f1"), "distributions")  # opened as a link to the page
    dist, scatter = charts(at)
    assert sorted(t["name"] for t in dist["data"]) == sorted(methods)
    assert sum(len(values(t["x"])) for t in scatter["data"]) == len(methods) * len(store_info["image_ids"])
    at.sidebar.multiselect(key="method").set_value(methods[:1])
    run(at)
    dist, scatter = charts(at)
    assert [t["name"] for t in dist["data"]] == methods[:1]
    assert [t["name"] for t in scatter["data"]] == methods[:1]


# ----------------------------------------------------------------------------------------- failure cases
def test_failure_cases_are_ranked_by_the_displayed_score(store, store_info, app_at):
    at = run(app_at(store))
    goto(at, "failures")
    at.selectbox(key="fc_metric").set_value("iou")  # the store also has counterfactuals, which rank first
    run(at)
    cases = table(at, "failure_table")
    assert "confidence × (1 − mean over methods of IoU)" in texts(at)
    methods = store_info["facets"]["methods"]
    assert len(cases) == len(store_info["image_ids"])  # one row per image, the methods as columns
    per_method = cases[[f"method:{m}" for m in methods]]
    assert cases["score"].to_numpy() == pytest.approx(
        (cases["confidence"] * (1 - per_method).mean(axis=1)).to_numpy(), rel=1e-5)
    assert list(cases["score"]) == sorted(cases["score"], reverse=True)
    assert cases["thumbnail"].str.startswith("data:image/jpeg;base64,").all()
    at.selectbox(key="fc_n").set_value(25)
    run(at)
    assert len(table(at, "failure_table")) == min(25, len(store_info["image_ids"]))
    assert at.query_params["fc_n"] == "25"


def test_selecting_a_failure_row_opens_that_image(store, store_info, app_at):
    methods = store_info["facets"]["methods"][1:3]
    at = run(app_at(store, method=methods))
    goto(at, "failures")
    cases = table(at, "failure_table")
    assert {c for c in cases if c.startswith("method:")} == {f"method:{m}" for m in methods}
    wanted = cases["image_id"].iloc[2]
    at.session_state["failure_table"] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    run(at)
    assert [t.value for t in at.title] == ["Image detail"]
    assert at.selectbox(key="image").value == wanted
    assert at.query_params["image"] == wanted
    assert at.query_params["method"] == methods  # the filters travel with the link
    assert at.sidebar.multiselect(key="method").value == methods


# ------------------------------------------------------------------------------------------ heatmap grid
def test_grid_pages_through_the_images(store, store_info, app_at):
    methods = store_info["facets"]["methods"]
    n_images = len(store_info["image_ids"])
    at = goto(app_at(store, per_page="4"), "grid")
    assert len(images(at)) == 4 * (1 + len(methods))
    assert sum(c.value.startswith("IoU ") for c in at.caption) == 4 * len(methods)
    last = -(-n_images // 4)
    assert at.get("pagination")[0].num_pages == last
    at.get("pagination")[0].set_value(last)
    run(at)
    assert len(images(at)) == (n_images - 4 * (last - 1)) * (1 + len(methods))
    assert at.query_params["page"] == str(last)


def test_grid_follows_method_filter_and_overlay_switches(store, store_info, app_at):
    methods = store_info["facets"]["methods"]
    at = goto(app_at(store, per_page="4", method=methods[:2]), "grid")
    assert len(images(at)) == 4 * 3
    before = images(at)
    at.toggle(key="otsu").set_value(True)
    run(at)
    after = images(at)
    assert after[0] == before[0]  # the plain image has no map, so no Otsu outline
    assert all(a != b for a, b in zip(after[1:3], before[1:3]))
    assert at.query_params["otsu"] == "1"


# ------------------------------------------------------------------------------------------ image detail
def test_image_detail_shows_every_method_prediction_and_metric(store, store_info, app_at):
    image_id = store_info["image_ids"][-1]
    facets = store_info["facets"]
    at = goto(app_at(store, image=image_id), "image")
    assert at.selectbox(key="image").value == image_id
    top5 = at.main.table[0].value
    assert len(top5) == 5 and "probability" in top5.columns
    metrics = table(at, "metrics_table")
    assert len(metrics) == len(facets["methods"]) * len(facets["protocols"])
    assert set(facets["columns"]) <= set(metrics.columns)
    assert len(images(at)) == 1 + len(facets["methods"])
    assert "ground truth" in texts(at)


# ------------------------------------------------------------------------------------ empty / missing store
def test_missing_store_shows_the_command_to_fill_it(tmp_path, app_at):
    from store.query import FILL_HINT

    missing = tmp_path / "nowhere"
    at = run(app_at(missing))
    assert [t.value for t in at.title] == ["No results to show yet"]
    text = texts(at)
    assert "does not exist" in text and f"--out {missing}" in text and FILL_HINT in text
    goto(at, "failures")  # every page of a shared link says the same, without a traceback
    assert [t.value for t in at.title] == ["No results to show yet"]


def test_empty_store_shows_the_command_to_fill_it(tmp_path, app_at):
    empty = tmp_path / "empty"
    (empty / "metrics").mkdir(parents=True)
    (empty / "runs").mkdir()
    at = run(app_at(empty))
    text = texts(at)
    assert "holds no results yet" in text and f"vitlens compute --voc-root <VOC folder> --out {empty}" in text


def test_reset_filters_restores_defaults_and_the_url(store, store_info, app_at):
    methods = store_info["facets"]["methods"]
    at = run(app_at(store, method=methods[:1], protocol="clean", cls="sheep"))
    assert len(table(at, "leaderboard_table")) == 1
    at.sidebar.button(key="reset_filters").click()
    run(at)
    assert len(table(at, "leaderboard_table")) == len(methods)
    assert at.sidebar.radio(key="protocol").value == "report"
    assert at.sidebar.multiselect(key="cls").value == []
    assert dict(at.query_params) == {}

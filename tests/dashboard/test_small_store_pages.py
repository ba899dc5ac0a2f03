"""Pages of the dashboard on the synthetic store of :mod:`tests.dashboard.synth`, through Streamlit's AppTest:
metric thresholds on the grid, a threshold left at its full range, only the shown maps decoded, the leaderboard
equal to ``vitlens report``, and links whose values are not available."""

from __future__ import annotations

import numpy as np
import pytest

from tests.dashboard.helpers import goto, images, run, table, texts
from tests.dashboard.synth import METHODS, ORPHAN, build

pytestmark = pytest.mark.slow


def warnings(at) -> list[str]:
    return [w.value for w in at.warning]


# ------------------------------------------------------------------------------------- metric thresholds
@pytest.mark.parametrize("bounds", [None, ["0.2", "0.9"]])
def test_grid_with_a_metric_threshold(small_store, app_at, bounds):
    params = {"model": "vit_a", "run": "present01", "thr": "iou", "per_page": "4"}
    if bounds:
        params["thr_iou"] = bounds
    at = goto(app_at(small_store, **params), "grid")
    assert not at.error, [e.value for e in at.error]
    assert [t.value for t in at.title] == ["Heatmap grid"]
    assert images(at)  # the page drew its cells
    if bounds:
        shown = [c.value for c in at.caption if c.value.startswith("IoU ")]
        assert shown and all(0.2 <= float(c.split()[1]) <= 0.9 for c in shown)


def test_a_threshold_at_its_full_range_filters_nothing(small_store, app_at):
    # top1run02 / clean: a third of the rows have no object mask, so their IoU is undefined
    at = run(app_at(small_store, model="vit_a", run="top1run02", protocol="clean"))
    before = table(at, "leaderboard_table").set_index("method")
    at.sidebar.multiselect(key="thr").set_value(["iou"])
    run(at)
    same = table(at, "leaderboard_table").set_index("method")
    assert same["rows"].tolist() == before["rows"].tolist() and same["images"].tolist() == before["images"].tolist()
    assert "left out" not in texts(at)
    at.sidebar.slider(key="thr_iou").set_value((0.0, 0.99))  # narrowed: now rows without an IoU go, and it says so
    run(at)
    cut = table(at, "leaderboard_table").set_index("method")
    assert (cut["rows"] < before["rows"]).all()
    assert "undefined are left out" in texts(at)


# -------------------------------------------------------------------------------------- decoded maps
@pytest.fixture
def counted_decodes(monkeypatch):
    """Counts calls of the real map decoder the dashboard uses (wrapped, not replaced)."""
    from dashboard import data

    calls = []
    real = data.decode_heatmap

    def counting(*args, **kwargs):
        calls.append(args[1:])
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "decode_heatmap", counting)
    return calls


def test_failure_cases_decode_only_the_previews(tmp_path, app_at, counted_decodes):
    store = build(tmp_path / "store")  # a store of its own: no cached picture of another test
    at = goto(app_at(store, model="vit_a", run="present01", protocol="clean", fc_n="200"), "failures")
    cases = table(at, "failure_table")
    assert len(cases) == 6  # one row per image (of 1 or 2 explained classes, 2 methods)
    previews = [im for im in at.main.image if im.value]
    assert len(previews) == 4
    assert len(counted_decodes) == 4  # one map per preview, not the maps of every row of the table


def test_grid_decodes_only_the_cells_on_screen(tmp_path, app_at, counted_decodes):
    store = build(tmp_path / "store")
    at = goto(app_at(store, model="vit_a", run="present01", protocol="clean", per_page="4"), "grid")
    assert len(images(at)) == 4 * (1 + len(METHODS))
    assert len(counted_decodes) == 4 * len(METHODS)


# --------------------------------------------------------------------------------- leaderboard = report
def test_leaderboard_page_shows_the_report_numbers_on_a_present_mode_run(small_store, app_at):
    from compute.report import build_report

    at = run(app_at(small_store, model="vit_a", run="present01", protocol="clean"))
    board = table(at, "leaderboard_table").set_index("method").sort_index()
    report = build_report(small_store, protocol="clean", run_id="present01", resamples=10)
    report = report.table.set_index("method").sort_index()
    for c in ("iou", "f1", "pixel_accuracy", "precision", "recall"):
        np.testing.assert_allclose(board[c].to_numpy(float), report[c].to_numpy(float), rtol=1e-5, err_msg=c)
    assert board["rows"].tolist() == report["rows"].astype(int).tolist()
    assert "as in `vitlens report`" in texts(at)
    assert "explains" in texts(at)  # the per-class caption says how clean rows are assigned


# ----------------------------------------------------------------------------------------------- links
def test_a_link_with_a_run_but_no_model_opens_that_run(small_store, app_at):
    # present01 is a run of vit_a; the newest run (the default) is of vit_b
    at = run(app_at(small_store, run="present01"))
    assert at.sidebar.selectbox(key="model").value == "vit_a"
    assert at.sidebar.selectbox(key="run").value == "present01"
    assert not warnings(at)
    assert at.query_params["run"] == "present01"  # the link written back still opens the same run
    at2 = run(app_at(small_store, **dict(at.query_params)))
    assert at2.sidebar.selectbox(key="run").value == "present01"
    # the newest run of an older model: the link keeps the model, so it opens that model's newest run
    at.sidebar.selectbox(key="run").set_value("top1run02")
    run(at)
    assert dict(at.query_params) == {"model": "vit_a"}
    at3 = run(app_at(small_store, **dict(at.query_params)))
    assert (at3.sidebar.selectbox(key="model").value, at3.sidebar.selectbox(key="run").value) == \
        ("vit_a", "top1run02")


def test_unknown_link_values_are_named_in_a_warning(small_store, app_at):
    at = run(app_at(small_store, run="gone42"))
    assert at.sidebar.selectbox(key="run").value == "newest03"
    assert any("run=gone42" in w and "newest03" in w for w in warnings(at)), warnings(at)
    at = run(app_at(small_store, model="vit_b", run="present01"))  # a run of another model
    assert at.sidebar.selectbox(key="model").value == "vit_b"
    assert any("run=present01" in w for w in warnings(at)), warnings(at)
    at = run(app_at(small_store, model="vit_zz"))
    assert any("model=vit_zz" in w for w in warnings(at)), warnings(at)
    # within the session the widgets rule: changing the model is no reason for a warning
    at = run(app_at(small_store, run="present01"))
    at.sidebar.selectbox(key="model").set_value("vit_b")
    run(at)
    assert at.sidebar.selectbox(key="run").value == "newest03" and not warnings(at)


def test_image_page_warns_about_an_image_it_cannot_show(small_store, app_at):
    at = goto(app_at(small_store, run="present01", image="img_777"), "image")
    assert at.selectbox(key="image").value == "img_000"
    assert any("image=img_777" in w and "img_000" in w for w in warnings(at)), warnings(at)
    at = goto(app_at(small_store, run="present01", image="img_003"), "image")
    assert at.selectbox(key="image").value == "img_003" and not warnings(at)


def test_opening_an_image_without_a_stored_picture_says_so(small_store, app_at):
    # newest03 has metric rows of ORPHAN but no picture of it: the failure table lists it, the detail page
    # cannot show it and says which image it could not show
    at = goto(app_at(small_store, run="newest03", fc_n="200"), "failures")
    cases = table(at, "failure_table")
    row = int(np.flatnonzero(cases["image_id"].to_numpy() == ORPHAN)[0])
    at.session_state["failure_table"] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    run(at)
    assert [t.value for t in at.title] == ["Image detail"]
    assert any(f"image={ORPHAN}" in w and "images table" in w for w in warnings(at)), warnings(at)

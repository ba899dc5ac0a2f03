"""A store unlike a VOC run (headless model, image groups, cue masks, partly empty metrics): every page still
works, and the filters that cannot apply are disabled or hidden."""

from __future__ import annotations

import pytest

from tests.dashboard.helpers import charts, goto, images, run, table, texts

PAGES = ("leaderboard", "distributions", "failures", "grid", "image")


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders(odd_store, app_at, page):
    at = goto(app_at(odd_store), page)
    assert not at.error, [e.value for e in at.error]


def test_filters_that_cannot_apply_are_disabled_and_groups_appear(odd_store, app_at):
    at = run(app_at(odd_store))
    assert at.sidebar.slider(key="conf").disabled      # no confidence without a classifier head
    assert at.sidebar.radio(key="correct").disabled    # correctness unknown
    board = table(at, "leaderboard_table")
    assert "cue_mass" in board and "relevance_mass" in board  # what this store has, beyond the five
    assert board["images"].tolist() == [6, 6]
    at.sidebar.multiselect(key="group").set_value(["conflict"])
    run(at)
    assert table(at, "leaderboard_table")["images"].tolist() == [2, 2]
    assert at.query_params["group"] == "conflict"


def test_headless_pages_explain_what_is_missing(odd_store, app_at):
    at = goto(app_at(odd_store), "distributions")
    assert len(charts(at)) == 1 and "no classifier head" in texts(at)
    at = goto(app_at(odd_store), "failures")
    # no confidence, still a ranking (by the maps alone: the mean cue mass), and a note that says so
    assert "no classifier head" in texts(at) and "No confident rows" not in texts(at)
    cases = table(at, "failure_table")
    assert set(cases["image_id"]) == {"syn_000", "syn_001", "syn_003", "syn_004"}  # the images with a cue
    assert list(cases["score"]) == sorted(cases["score"], reverse=True)
    assert "confidence" not in cases and "pred_label" not in cases


def test_grid_and_detail_draw_headless_maps(odd_store, app_at):
    at = goto(app_at(odd_store, per_page="4"), "grid")
    assert len(images(at)) == 4 * 3
    at = goto(app_at(odd_store, image="syn_001"), "image")
    assert len(images(at)) == 1 + 2
    assert "Headless model" in texts(at)
    assert len(table(at, "metrics_table")) == 2

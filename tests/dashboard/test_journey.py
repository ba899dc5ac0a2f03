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

"""What a user meets on the way from "which method?" to "right for the wrong reason?", through Streamlit's
AppTest on the demo store (a planted cue, a model whose labels are the data's classes) and the synthetic one:
each test pins a behaviour that used to mislead."""

from __future__ import annotations

import pytest

from tests.dashboard.helpers import goto, run, table, texts

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

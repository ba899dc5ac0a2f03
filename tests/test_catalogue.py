"""The metric catalogue: it names exactly the schema's metric columns, every metric list derives from it, and
the orderings that put the best or the worst first read each metric's direction from it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from store import catalogue
from store import query as q
from store.schema import METRICS
from store.writer import StoreWriter


def _schema_metric_columns() -> list[str]:
    numeric = [f.name for f in METRICS if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
    return [c for c in numeric if c not in catalogue.CONTEXT_COLUMNS]


def test_every_schema_metric_column_has_an_entry_and_every_entry_a_column():
    assert [m.name for m in catalogue.CATALOGUE] == _schema_metric_columns()


def test_former_lists_derive_from_the_catalogue():
    from compute.report import HEADERS, SHORT
    from dashboard import metrics_info
    from store.schema import METRIC_COLUMNS

    in_report = [m.name for m in catalogue.CATALOGUE if m.in_report]
    assert list(q.REPORT_METRICS) == in_report
    assert set(METRIC_COLUMNS) == {m.name for m in catalogue.CATALOGUE if m.in_report and m.family == "localisation"}
    assert {c: HEADERS[c] for c in in_report} == {c: catalogue.BY_NAME[c].header for c in in_report}
    assert all(SHORT[c] == catalogue.BY_NAME[c].short for c in SHORT if c in catalogue.BY_NAME)
    assert not set(metrics_info.AGREEMENT) & set(metrics_info.MISPLACEMENT)
    assert all(catalogue.higher_is_better(c) is True for c in metrics_info.AGREEMENT)
    assert all(catalogue.lower_is_better(c) for c in metrics_info.MISPLACEMENT)


def test_labels_and_meanings_fall_back_for_unknown_columns():
    assert catalogue.label("cue_mass") == "Cue mass" and catalogue.label("new_score") == "new score"
    assert catalogue.meaning("cue_mass").endswith("(lower is better)")
    assert catalogue.meaning("iou").endswith("(higher is better)")
    assert catalogue.meaning("new_score") == "new_score" and catalogue.higher_is_better("new_score") is None
    with pytest.raises(ValueError):
        catalogue.Metric("x", "no_such_family", "X", "x", True)


# ---- directions in the dashboard's orderings ------------------------------------------------------------------
# three images whose cue mass and IoU disagree: a is the best on IoU, the worst on cue mass
CUE_MASS = {"a": 0.9, "b": 0.1, "c": 0.5}
IOU = {"a": 0.8, "b": 0.2, "c": 0.5}


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    out = tmp_path_factory.mktemp("cue-store")
    rows = [{"image_id": i, "method": m, "protocol": "report", "target_class": 1, "confidence": 0.9,
             "cue_mass": CUE_MASS[i] + (0.05 if m == "m2" else 0.0), "iou": IOU[i]}
            for i in CUE_MASS for m in ("m1", "m2")]
    StoreWriter(out, "run0").write_batch("0", {"metrics": rows})
    c = q.connect(out)
    yield c
    c.close()


def _page(con, column, order):
    df, _ = q.image_page(con, q.RowFilter(run_id="run0"), column, q.metric_columns(con), order, 10, 0)
    return list(df["image_id"])


def test_worst_first_puts_the_highest_cue_mass_first(con):
    assert _page(con, "cue_mass", "worst first") == ["a", "c", "b"]
    assert _page(con, "cue_mass", "best first") == ["b", "c", "a"]
    assert _page(con, "iou", "worst first") == ["b", "c", "a"]       # higher is better: the plain reading


def test_leaderboard_ranks_lower_cue_mass_first(con):
    board = q.leaderboard(con, q.RowFilter(run_id="run0"), ["cue_mass"], q.metric_columns(con))
    assert list(board["method"]) == ["m1", "m2"]
    board = q.leaderboard(con, q.RowFilter(run_id="run0"), ["iou", "cue_mass"], q.metric_columns(con))
    assert list(board["method"]) == ["m1", "m2"] and board["iou"].nunique() == 1  # tie on IoU: by name


def test_failure_score_of_a_lower_is_better_metric_grows_with_it(con):
    cases = q.failure_cases(con, q.RowFilter(run_id="run0"), "cue_mass", q.metric_columns(con))
    assert list(cases["image_id"])[:2] == ["a", "a"]
    assert cases["score"].to_numpy() == pytest.approx((cases["confidence"] * cases["value"]).to_numpy(), rel=1e-5)

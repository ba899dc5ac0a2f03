"""The dashboard's queries in store/query.py: discovered columns, bound parameters, validated identifiers."""

from __future__ import annotations

import pytest

from store import query as q

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def con(store):
    c = q.connect(store)
    yield c
    c.close()


def test_metric_columns_come_from_the_schema(con):
    from store.schema import METRICS

    cols = q.metric_columns(con)
    assert cols[:3] == ["iou", "f1", "pixel_accuracy"]
    assert "relevance_mass" in cols and "cue_mass" in cols  # every numeric score column of the schema
    assert not set(cols) & set(q.CONTEXT_COLUMNS)
    assert set(cols) <= set(METRICS.names)


def test_values_are_bound_parameters_never_sql(con, store_info):
    run_id = store_info["run_id"]
    hostile = "x' OR '1'='1"
    for f in (q.RowFilter(run_id=hostile), q.RowFilter(run_id=run_id, methods=(hostile,)),
              q.RowFilter(run_id=run_id, classes=(hostile,)), q.RowFilter(run_id=run_id, protocol=hostile)):
        assert q.leaderboard(con, f, ["iou"], store_info["columns"]).empty
    assert len(q.leaderboard(con, q.RowFilter(run_id=run_id), ["iou"], store_info["columns"])) == 4


def test_identifiers_must_be_known_columns(con, store_info):
    f = q.RowFilter(run_id=store_info["run_id"])
    known = store_info["columns"]
    for call in (lambda c: q.leaderboard(con, f, [c], known), lambda c: q.class_breakdown(con, f, c, known),
                 lambda c: q.failure_cases(con, f, c, known), lambda c: q.metric_histogram(con, f, c, known),
                 lambda c: q.leaderboard(con, q.RowFilter(run_id=f.run_id, thresholds=((c, 0, 1),)), ["iou"],
                                         known)):
        with pytest.raises(ValueError):
            call('iou" FROM metrics; --')
    with pytest.raises(ValueError):
        q.image_page(con, f, "iou", known, "random()", 5, 0)


def test_failure_score_and_order(con, store_info):
    f = q.RowFilter(run_id=store_info["run_id"], protocol="report")
    cases = q.failure_cases(con, f, "iou", store_info["columns"], limit=100)
    assert len(cases) == 40
    assert cases["score"].to_numpy() == pytest.approx((cases["confidence"] * (1 - cases["value"])).to_numpy(),
                                                      rel=1e-5)
    assert cases["score"].is_monotonic_decreasing


def test_image_pages_partition_the_images(con, store_info):
    f = q.RowFilter(run_id=store_info["run_id"], protocol="report")
    seen = []
    for offset in range(0, 12, 4):
        page, total = q.image_page(con, f, "iou", store_info["columns"], "worst first", 4, offset)
        seen += list(page["image_id"])
        assert total == len(store_info["image_ids"])
        assert page["value"].is_monotonic_increasing
    assert sorted(seen) == sorted(store_info["image_ids"])


def test_histogram_counts_every_defined_value(con, store_info):
    f = q.RowFilter(run_id=store_info["run_id"], protocol="report")
    hist = q.metric_histogram(con, f, "f1", store_info["columns"], bins=7)
    assert hist["n"].sum() == 40 and hist["k"].between(0, 6).all()
    box = q.metric_box_stats(con, f, "f1", store_info["columns"])
    assert (box["q1"] <= box["median"]).all() and (box["median"] <= box["q3"]).all()


def test_existing_report_query_is_unchanged(con):
    summary = q.method_summary(con, protocol="report")
    assert list(summary.columns) == ["method", "images", "rows", *q.METRIC_COLUMNS]


def test_misplacement_score(con, store_info):
    f = q.RowFilter(run_id=store_info["run_id"], protocol="report")
    cases = q.failure_cases(con, f, "pred_area", store_info["columns"], limit=10, misplaced=True)
    assert cases["score"].to_numpy() == pytest.approx((cases["confidence"] * cases["value"]).to_numpy(), rel=1e-5)
    assert cases["score"].is_monotonic_decreasing

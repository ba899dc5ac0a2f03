"""The dashboard's queries on the synthetic store of :mod:`tests.dashboard.synth`, against pandas recomputations
from its Parquet parts: metric thresholds on every query, per-image means equal to ``vitlens report``, and the
per-class view of ``--explain present`` rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from store import query as q
from tests.dashboard.synth import METHODS, VOC


@pytest.fixture(scope="module")
def con(small_store):
    c = q.connect(small_store)
    yield c
    c.close()


@pytest.fixture(scope="module")
def rows(small_store) -> pd.DataFrame:
    files = sorted(small_store.glob("metrics/run_id=*/part-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def test_rows_for_images_applies_a_metric_threshold(con, rows):
    known = q.metric_columns(con)
    ids = [f"img_{i:03d}" for i in range(6)]
    f = q.RowFilter(run_id="present01", protocol="clean", thresholds=(("iou", 0.3, 1.0), ("f1", 0.0, 0.9)))
    got = q.rows_for_images(con, f, ids, known)
    want = rows[(rows.run_id == "present01") & (rows.protocol == "clean") & rows.iou.between(0.3, 1.0)
                & rows.f1.between(0.0, 0.9)]
    assert 0 < len(got) < len(rows[(rows.run_id == "present01") & (rows.protocol == "clean")])
    assert sorted(zip(got.image_id, got.method, got.target_class)) == \
        sorted(zip(want.image_id, want.method, want.target_class))
    with pytest.raises(q.QueryError):  # an unknown column is still refused, by name
        q.rows_for_images(con, q.RowFilter(run_id="present01", thresholds=(("nope", 0, 1),)), ids, known)


@pytest.mark.parametrize("protocol", ["report", "clean"])
@pytest.mark.parametrize("run_id", ["present01", "top1run02"])
def test_leaderboard_means_equal_the_report(small_store, con, rows, run_id, protocol):
    from compute.report import build_report

    columns = ["iou", "f1", "pixel_accuracy", "precision", "recall", "relevance_mass"]
    board = q.leaderboard(con, q.RowFilter(run_id=run_id, protocol=protocol), columns, q.metric_columns(con))
    board = board.set_index("method").sort_index()
    report = build_report(small_store, protocol=protocol, run_id=run_id, resamples=10)
    report = report.table.set_index("method").sort_index()
    assert list(board.index) == sorted(METHODS) == list(report.index)
    for c in columns:
        np.testing.assert_allclose(board[c].to_numpy(float) * 100, report[c].to_numpy(float), rtol=1e-6,
                                   err_msg=c)
    assert board["n_iou"].tolist() == report["images"].tolist()        # images with a defined IoU
    assert board["images"].tolist() == report["all_images"].tolist()
    assert board["rows"].tolist() == report["rows"].astype(int).tolist()
    if run_id == "present01" and protocol == "clean":
        # the case the per-image mean is about: a mean over rows would weigh two-class images double
        sub = rows[(rows.run_id == run_id) & (rows.protocol == protocol)]
        per_row = sub.groupby("method")["iou"].mean().sort_index()
        assert not np.allclose(per_row.to_numpy(), board["iou"].to_numpy(), rtol=1e-6)
        assert (board["rows"] > board["images"]).all()


def test_leaderboard_seconds_are_per_image(con, rows):
    board = q.leaderboard(con, q.RowFilter(run_id="present01", protocol="clean"), ["iou"], q.metric_columns(con))
    sub = rows[(rows.run_id == "present01") & (rows.protocol == "clean")]
    want = sub.groupby(["method", "image_id"])["seconds"].sum().groupby("method").mean()
    got = board.set_index("method")["seconds"]
    np.testing.assert_allclose(got.sort_index().to_numpy(), want.sort_index().to_numpy(), rtol=1e-6)


def _expected_breakdown(sub: pd.DataFrame, column: str, by) -> pd.DataFrame:
    """pandas: rows exploded to their classes (``by`` gives a row's class list), per (method, class, image)
    the mean, then per (method, class) the mean over images and the count of images with a value."""
    cells = sub.assign(cls=sub.apply(by, axis=1)).explode("cls")
    cells = cells[cells.cls.notna() & (cells.cls != "")]
    per_image = cells.groupby(["method", "cls", "image_id"])[column].mean().reset_index()
    out = per_image.groupby(["method", "cls"])[column].agg(["mean", "count"]).reset_index()
    return out.rename(columns={"mean": "value", "count": "n"}).sort_values(["method", "cls"], ignore_index=True)


def test_class_breakdown_under_clean_puts_a_row_in_the_class_it_explains(con, rows):
    known = q.metric_columns(con)
    got = q.class_breakdown(con, q.RowFilter(run_id="present01", protocol="clean"), "iou", known)
    sub = rows[(rows.run_id == "present01") & (rows.protocol == "clean")]
    want = _expected_breakdown(sub, "iou", lambda r: [r.gt_target])
    pd.testing.assert_frame_equal(got[["method", "cls", "value", "n"]], want, check_dtype=False, rtol=1e-6)
    # img_000 has a dog and a person, explained separately: each row lands in its own class's cell only
    two = sub[(sub.image_id == "img_000") & (sub.method == "rollout")].set_index("target_class")["iou"]
    dog_cell = sub[(sub.method == "rollout") & (sub.gt_target == "dog")]
    assert got.set_index(["method", "cls"]).loc[("rollout", "dog"), "value"] == \
        pytest.approx(dog_cell.iou.mean(), rel=1e-6)
    assert two[VOC["dog"]] in set(dog_cell.iou) and two[VOC["person"]] not in set(dog_cell.iou)
    assert got.set_index(["method", "cls"]).loc[("rollout", "dog"), "value"] != pytest.approx(
        got.set_index(["method", "cls"]).loc[("rollout", "person"), "value"])


def test_class_breakdown_of_top1_clean_rows_and_of_report_rows(con, rows):
    known = q.metric_columns(con)
    for run_id, protocol, by in (("top1run02", "clean", lambda r: [r.gt_target]),
                                 ("present01", "report", lambda r: r.gt_classes.split(",")),
                                 ("top1run02", "report", lambda r: r.gt_classes.split(","))):
        got = q.class_breakdown(con, q.RowFilter(run_id=run_id, protocol=protocol), "f1", known)
        sub = rows[(rows.run_id == run_id) & (rows.protocol == protocol)]
        want = _expected_breakdown(sub, "f1", by)
        pd.testing.assert_frame_equal(got[["method", "cls", "value", "n"]], want, check_dtype=False, rtol=1e-6,
                                      obj=f"{run_id}/{protocol}")
    # report: an image counts for each of its classes, so dog and person (always together here) are equal
    rep = q.class_breakdown(con, q.RowFilter(run_id="present01", protocol="report"), "iou", known)
    rep = rep.set_index(["method", "cls"])["value"]
    assert rep[("rollout", "dog")] == pytest.approx(rep[("rollout", "person")])


def test_class_filter_keeps_only_the_chosen_cells(con):
    f = q.RowFilter(run_id="present01", protocol="clean", classes=("person",))
    got = q.class_breakdown(con, f, "iou", q.metric_columns(con))
    assert set(got.cls) == {"person"} and len(got) == len(METHODS)

"""store.compare on a store written through the real writer (tests.dashboard.synth_cf: two runs over the same
images), against a direct pandas recomputation of the paired per-image comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from store import compare
from store.query import QueryError, RowFilter, connect, metric_columns
from tests.dashboard import synth_cf

A, B = "cfbase01", "cfnew02"


@pytest.fixture(scope="module")
def cf_store(tmp_path_factory):
    return synth_cf.build(tmp_path_factory.mktemp("cf-store"))


@pytest.fixture(scope="module")
def con(cf_store):
    c = connect(cf_store)
    yield c
    c.close()


def _expected(metrics: pd.DataFrame, protocol: str, column: str, methods=None, classes=()) -> pd.DataFrame:
    m = metrics[metrics["protocol"] == protocol]
    if methods is not None:
        m = m[m["method"].isin(methods)]
    if classes:
        m = m[m["gt_classes"].str.split(",").map(lambda cs: bool(set(cs) & set(classes)))]
    per_image = m.groupby(["run_id", "method", "image_id"])[column].mean().unstack("run_id")
    per_image = per_image.dropna(subset=[A, B])
    g = per_image.groupby("method")
    return pd.DataFrame({"n": g.size(), "mean_a": g[A].mean(), "mean_b": g[B].mean(),
                         "diff": g.apply(lambda d: (d[B] - d[A]).mean())})


@pytest.mark.parametrize("column", ["iou", "cue_mass"])
@pytest.mark.parametrize("protocol", ["report", "clean"])
def test_compare_leaderboard_equals_pandas(con, column, protocol):
    metrics = con.execute("SELECT * FROM metrics").df()
    got = compare.compare_leaderboard(con, RowFilter(run_id=A, protocol=protocol), B, column, metric_columns(con),
                                      resamples=200).set_index("method")
    want = _expected(metrics, protocol, column)
    assert sorted(got.index) == sorted(want.index)
    for c in ("n", "mean_a", "mean_b", "diff"):
        assert got[c].to_numpy() == pytest.approx(want.loc[got.index, c].to_numpy(), rel=1e-6)
    assert (got["low"] <= got["diff"]).all() and (got["diff"] <= got["high"]).all()


def test_filters_apply_to_both_runs(con):
    metrics = con.execute("SELECT * FROM metrics").df()
    f = RowFilter(run_id=A, protocol="report", methods=("gradcam",), classes=("dog",))
    got = compare.compare_leaderboard(con, f, B, "iou", metric_columns(con), resamples=50)
    want = _expected(metrics, "report", "iou", methods=["gradcam"], classes=["dog"])
    assert list(got["method"]) == ["gradcam"]
    assert got["n"].iloc[0] == want.loc["gradcam", "n"] == synth_cf.N_IMAGES // len(synth_cf.CLASSES)
    assert got["diff"].iloc[0] == pytest.approx(want.loc["gradcam", "diff"], rel=1e-6)


def test_better_share_follows_the_metric_direction(con):
    pairs = compare.per_image_pairs(con, RowFilter(run_id=A, protocol="report"), B, "cue_mass", metric_columns(con))
    got = compare.compare_leaderboard(con, RowFilter(run_id=A, protocol="report"), B, "cue_mass",
                                      metric_columns(con), resamples=50).set_index("method")
    lower = pairs.assign(lower=pairs["b"] < pairs["a"]).groupby("method")["lower"].mean()
    assert got["better"].to_numpy() == pytest.approx(lower.loc[got.index].to_numpy())  # cue mass: lower is better


def test_paired_interval_is_seeded_and_covers_the_mean():
    d = np.random.default_rng(1).normal(0.3, 1.0, 200)
    lo, hi = compare.paired_interval(d, seed=4)
    assert (lo, hi) == compare.paired_interval(d, seed=4)
    assert lo < d.mean() < hi and hi - lo < 0.5
    assert np.isnan(compare.paired_interval(np.array([]))[0])


def test_run_choices_count_shared_images(con):
    other = compare.run_choices(con, B)
    assert list(other["run_id"]) == [A]
    assert int(other["shared"].iloc[0]) == synth_cf.N_IMAGES
    assert compare.shared_image_ids(con, A, B) == [f"cf_{i:03d}" for i in range(synth_cf.N_IMAGES)]


@pytest.mark.parametrize("bad", ['iou" FROM metrics; --', "run_id", "no_such"])
def test_a_column_that_is_not_a_metric_is_refused(con, bad):
    with pytest.raises(QueryError):
        compare.compare_leaderboard(con, RowFilter(run_id=A, protocol="report"), B, bad, metric_columns(con))


def test_run_ids_are_bound_not_spliced(con):
    f = RowFilter(run_id="x' OR 1=1 --", protocol="report")
    assert compare.compare_leaderboard(con, f, B, "iou", metric_columns(con)).empty
    assert compare.run_choices(con, "x' OR 1=1 --")["shared"].sum() == 0

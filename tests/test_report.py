"""`vitlens report` against a direct pandas recomputation from the store's Parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from compute.cli import app
from compute.report import MAIN, bootstrap_interval, build_report
from compute.runner import RunConfig, run
from store.query import REPORT_METRICS

cli = CliRunner()
FAST = dict(model="vit_tiny_patch16_224", random_init=True, batch_size=5, num_workers=0, device="cpu")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(voc_mini, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    # run 1: the report's set-up, two methods; run 2: one row per present class and faithfulness
    run(RunConfig(out=str(out), voc_root=str(voc_mini), methods="raw_attention,agcam", **FAST))
    run(RunConfig(out=str(out), voc_root=str(voc_mini), methods="raw_attention", explain="present",
                  faithfulness=True, faithfulness_steps=2, **FAST))
    return out


def parquet_rows(store: Path) -> pd.DataFrame:
    files = sorted(store.glob("metrics/run_id=*/part-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def recompute(df: pd.DataFrame) -> pd.DataFrame:
    """Per image the mean of its rows, then per (run, protocol, method) the mean over images, ×100."""
    cols = list(REPORT_METRICS) + ["correct"]
    df = df.assign(correct=df["correct"].astype("float64"))
    per_image = (df.groupby(["run_id", "protocol", "method", "image_id"])[cols]
                 .mean().reset_index())
    rows = df.groupby(["run_id", "protocol", "method"]).size().rename("rows")
    means = per_image.groupby(["run_id", "protocol", "method"])[cols].mean() * 100
    images = per_image.groupby(["run_id", "protocol", "method"])["iou"].count().rename("images")
    return pd.concat([means, images, rows], axis=1).reset_index(), per_image


def compare(rep, want: pd.DataFrame):
    got = rep.table.set_index(["run_id", "protocol", "method"]).sort_index()
    want = want.set_index(["run_id", "protocol", "method"]).sort_index()
    assert list(got.index) == list(want.index)
    assert got["images"].tolist() == want["images"].tolist()
    assert got["rows"].astype(int).tolist() == want["rows"].tolist()
    for c in list(REPORT_METRICS) + ["correct"]:
        np.testing.assert_allclose(got[c].to_numpy(float), want[c].to_numpy(float), rtol=1e-5, atol=1e-6,
                                   equal_nan=True, err_msg=c)


def test_table_equals_a_pandas_recomputation(store):
    rep = build_report(store)
    want, _ = recompute(parquet_rows(store))
    compare(rep, want)
    assert len(rep.table) == 6                                  # 2 runs: 2 protocols × 2 methods + 2 × 1
    faith = rep.table.dropna(subset=["deletion_auc"])
    assert len(faith) == 2 and set(faith["method"]) == {"raw_attention"}


@pytest.mark.parametrize("protocol", ["report", "clean"])
def test_filters_equal_the_same_filters_in_pandas(store, protocol):
    df = parquet_rows(store)
    cut = float(df["confidence"].median())
    run_id = sorted(df["run_id"].unique())[0]
    rep = build_report(store, protocol=protocol, min_confidence=cut, run_id=run_id)
    sub = df[(df["protocol"] == protocol) & (df["confidence"] > cut) & (df["run_id"] == run_id)]
    assert 0 < sub["image_id"].nunique() < df["image_id"].nunique()
    want, _ = recompute(sub)
    compare(rep, want)


def test_bootstrap_interval_is_seeded_over_images_and_brackets_the_mean(store):
    rep = build_report(store, resamples=500, seed=7)
    again = build_report(store, resamples=500, seed=7)
    pd.testing.assert_frame_equal(rep.table, again.table)
    _, per_image = recompute(parquet_rows(store))
    for row in rep.table.itertuples(index=False):
        g = per_image[(per_image.run_id == row.run_id) & (per_image.protocol == row.protocol)
                      & (per_image.method == row.method)]
        for c in MAIN:
            mean, lo, hi = getattr(row, c), getattr(row, f"{c}_lo"), getattr(row, f"{c}_hi")
            if np.isnan(mean):
                assert np.isnan(lo) and np.isnan(hi)
                continue
            assert lo <= mean + 1e-9 and mean <= hi + 1e-9
            vals = g[c].dropna().to_numpy() * 100
            rng = np.random.default_rng(7)
            boot = vals[rng.integers(0, len(vals), size=(500, len(vals)))].mean(axis=1)
            assert (lo, hi) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    assert all(np.isnan(bootstrap_interval(np.array([np.nan]))))  # nothing to resample: undefined
    assert bootstrap_interval(np.array([0.3, 0.3, 0.3])) == pytest.approx((0.3, 0.3))


def test_cli_prints_and_writes_csv_and_markdown(store, tmp_path):
    csv, md = tmp_path / "t.csv", tmp_path / "t.md"
    result = cli.invoke(app, ["report", "--store", str(store), "--protocol", "report", "--csv", str(csv),
                              "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    assert "Table 1" in result.output and "raw_attention" in result.output and "agcam" in result.output
    table = pd.read_csv(csv)
    rep = build_report(store, protocol="report")
    np.testing.assert_allclose(table["iou"], rep.table["iou"], rtol=1e-5)
    assert {"iou_lo", "iou_hi", "images", "relevance_mass", "roc_auc", "deletion_auc"} <= set(table.columns)
    text = md.read_text()
    assert text.startswith("Table 1") and "| Method |" in text and "IoU" in text
    first = rep.table.iloc[0]
    assert f"{first['iou']:.2f} [{first['iou_lo']:.2f}, {first['iou_hi']:.2f}]" in text


def test_cli_on_an_empty_or_unmatched_store_says_what_to_do(store, tmp_path):
    result = cli.invoke(app, ["report", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "vitlens compute" in result.output
    result = cli.invoke(app, ["report", "--store", str(store), "--run", "nope"])
    assert result.exit_code == 2 and "no rows match" in result.output


def test_cli_on_a_store_whose_every_image_was_skipped_says_so(voc_mini, tmp_path):
    from tests.test_voc import make_broken_tree

    root, _ = make_broken_tree(voc_mini, tmp_path / "voc")
    (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").write_text("corrupt\nnomask\n")
    out = tmp_path / "store"
    run(RunConfig(out=str(out), voc_root=str(root), methods="raw_attention", **FAST))
    result = cli.invoke(app, ["report", "--store", str(out)])
    assert result.exit_code == 2 and "every image or method was skipped" in result.output, result.output


def test_cli_names_only_the_filters_given(store):
    result = cli.invoke(app, ["report", "--store", str(store), "--protocol", "clean", "--min-confidence", "0.99"])
    assert result.exit_code == 2, result.output
    assert "no rows match --protocol clean, --min-confidence 0.99;" in result.output and "--run" not in result.output

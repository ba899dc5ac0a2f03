"""``vitlens report --shortcuts`` (compute.report.build_shortcuts) on a store the batch job wrote from voc-mini,
against a direct pandas recomputation from the store's rows; its CSV/Markdown outputs and its refusals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from compute.cli import app
from compute.report import SHORTCUT_TITLES, build_shortcuts
from compute.runner import RunConfig, run
from store import shortcuts
from store.query import connect
from tests.test_shortcuts import _expected_decisions

KEY = ["image_id", "target_class", "protocol"]


@pytest.fixture(scope="module")
def store(voc_mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("shortcut-store")
    run(RunConfig(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True, img_size=112,
                  methods="raw_attention,gradcam,rollout", batch_size=4, num_workers=0, device="cpu"))
    return out


@pytest.fixture
def every_decision_confident(monkeypatch):
    """A random-init model is never confident: count every decision, in SQL and in the pandas reference."""
    monkeypatch.setattr(shortcuts, "CONFIDENT", 0.0)


def _tables(store):
    con = connect(store)
    return con.execute("SELECT * FROM metrics").df(), con.execute("SELECT * FROM counterfactuals").df()


def test_shortcut_report_matches_pandas(store, every_decision_confident):
    metrics, cfs = _tables(store)
    rep = build_shortcuts(store, protocol="report", resamples=200)
    (sec,) = rep.sections
    assert (sec.fill, sec.protocol) == ("blur", "report")
    d = _expected_decisions(metrics, cfs)
    d = d[d.protocol == "report"]

    # method trust: Spearman of the mass off the object with the context reliance, AUC for context-driven
    maps = metrics[metrics.protocol == "report"][KEY + ["method", "relevance_mass"]].merge(d, on=KEY)
    maps["off_mass"] = 1 - maps["relevance_mass"]
    trust = sec.tables["method_trust"].set_index("method")
    assert set(trust.index) == {"raw_attention", "gradcam", "rollout"}
    for method, g in maps.groupby("method"):
        g = g[g.off_mass.notna() & g.context_reliance.notna()]
        row = trust.loc[method]
        assert row["n_rho"] == len(g) > 5
        assert row["rho"] == pytest.approx(g["off_mass"].corr(g["context_reliance"], method="spearman"), abs=1e-6)
        pos = (g.verdict == "context-driven").to_numpy()
        assert (row["n_pos"], row["n_neg"]) == (pos.sum(), (~pos).sum())
        if 0 < pos.sum() < len(pos):
            assert row["auc"] == pytest.approx(roc_auc_score(pos, g["off_mass"]), abs=1e-6)

    # BG-Gap: accuracy (top-1 maps to a class of the image) on only_fg vs mixed_rand
    both = d[d.pred_voc_only_fg.notna() & d.pred_voc_mixed_rand.notna()]
    gap = sec.tables["bg_gap"].set_index("protocol").loc["report"]
    only = np.mean([v in c.split(",") for v, c in zip(both.pred_voc_only_fg, both.gt_classes)])
    mixed = np.mean([v in c.split(",") for v, c in zip(both.pred_voc_mixed_rand, both.gt_classes)])
    assert gap["n"] == len(both) > 0
    assert (gap["acc_only_fg"], gap["acc_mixed_rand"]) == (pytest.approx(only), pytest.approx(mixed))

    # per class: confident correct decisions with a verdict (a random model is rarely correct: maybe none)
    share = sec.tables["context_share"]
    kept = d[d.verdict.notna() & (d.correct == True)]  # noqa: E712
    assert share["n"].sum() == len(kept)


def test_cli_prints_and_writes_the_tables(store, tmp_path, every_decision_confident):
    res = CliRunner().invoke(app, ["report", "--store", str(store), "--shortcuts", "--protocol", "report",
                                   "--resamples", "200", "--csv", str(tmp_path / "s.csv"),
                                   "--markdown", str(tmp_path / "s.md")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert SHORTCUT_TITLES["method_trust"] in text and SHORTCUT_TITLES["bg_gap"] in text
    csv = pd.read_csv(tmp_path / "s.csv")
    want = build_shortcuts(store, protocol="report", resamples=200).sections[0].tables["method_trust"]
    got = csv[csv.table == "method_trust"].reset_index(drop=True)
    assert got["method"].tolist() == want["method"].tolist()
    assert np.allclose(got["rho"], want["rho"], equal_nan=True, atol=1e-5)
    md = (tmp_path / "s.md").read_text()
    assert SHORTCUT_TITLES["method_trust"] in md and "| Method |" in md
    for method in want["method"]:
        assert method in md


def test_several_fills_are_reported_apart(voc_mini, tmp_path):
    for fill in ("blur", "mean"):
        run(RunConfig(out=str(tmp_path), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                      img_size=112, methods="raw_attention", batch_size=4, num_workers=0, device="cpu", limit=3,
                      cf_fill=fill))
    rep = build_shortcuts(tmp_path, resamples=10)
    assert [s.fill for s in rep.sections] == ["blur", "mean"]
    with pytest.raises(ValueError, match="several fills"):
        shortcuts.reliance(connect(tmp_path))
    assert len(shortcuts.reliance(connect(tmp_path), fill="mean")) == 6


def test_refusals(voc_mini, tmp_path, store):
    cli = CliRunner()
    run(RunConfig(out=str(tmp_path), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                  img_size=112, methods="raw_attention", batch_size=4, num_workers=0, device="cpu", limit=1,
                  counterfactuals=False))
    res = cli.invoke(app, ["report", "--store", str(tmp_path), "--shortcuts"])
    assert res.exit_code == 2 and "no counterfactual rows" in " ".join(res.output.split())
    res = cli.invoke(app, ["report", "--store", str(store), "--cf-fill", "blur"])
    assert res.exit_code == 2 and "--cf-fill applies to --shortcuts" in res.output

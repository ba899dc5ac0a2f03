"""store.shortcuts on a store written through the real writer (Parquet parts, DuckDB views), against a direct
pandas recomputation of the documented formulas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from store import shortcuts
from store.query import connect
from store.writer import StoreWriter

CLASSES = ("cat", "dog", "car", "bus")
METHODS = ("alpha", "beta", "gamma")
RUN = "run0"


def _fake_run(seed: int = 0, n: int = 160):
    """Metric rows (3 methods × 2 protocols) and counterfactual rows of ``n`` images with random outcomes; the
    map mass of method ``alpha`` follows the context reliance, ``gamma``'s cue mass follows the cue flips."""
    rng = np.random.default_rng(seed)
    metrics, cfs = [], []
    for i in range(n):
        image_id = f"im{i:03d}"
        own = CLASSES[i % 4]
        partner = CLASSES[(i + 1 + rng.integers(0, 3)) % 4]
        confidence = float(rng.uniform(0.2, 1.0))
        correct = bool(rng.random() < 0.8)
        p_orig = float(rng.uniform(0.3, 1.0))
        p_no_fg = float(rng.uniform(0, 1.2) * p_orig)     # sometimes above p_orig: clipped to 1
        p_only_fg = float(rng.uniform(0, 1.2) * p_orig)
        flips = bool(rng.random() < 0.4)
        for protocol in ("clean", "report"):
            reliance = min(max(p_no_fg / p_orig, 0), 1)
            for method in METHODS:
                noise = rng.normal(0, 0.15 if method == "alpha" else 1.0)
                metrics.append({"image_id": image_id, "split": "val", "method": method, "protocol": protocol,
                                "target_kind": "logit", "target_class": 7, "confidence": confidence,
                                "correct": correct, "gt_classes": own, "gt_target": own,
                                "relevance_mass": float(np.clip(1 - reliance + noise, 0, 1)),
                                "cue_mass": float(np.clip(flips * 0.5 + rng.normal(0, 0.3 if method == "gamma" else 2),
                                                          0, 1)) if i % 5 else None})
            base = {"image_id": image_id, "target_kind": "logit", "target_class": 7, "protocol": protocol,
                    "fill": "blur", "gt_target": own, "region_area": 0.3, "score_kind": "probability",
                    "orig_score": p_orig, "orig_pred_class": 1}
            mixed_voc = str(rng.choice([own, partner, "horse"]))
            made = i % 11 != 0
            variants = {
                "only_fg": {"score": p_only_fg, "pred_voc": str(rng.choice([own, partner])),
                            "same_top1": bool(rng.random() < .5)},
                "no_fg": {"score": p_no_fg, "pred_voc": partner, "same_top1": False},
                "mixed_rand": ({"score": 0.1, "pred_voc": mixed_voc, "same_top1": mixed_voc == own,
                                "partner_id": f"im{(i + 1) % n:03d}", "partner_classes": f"{partner},horse"}
                               if made else {"reason": "no other image of the split has background"}),
                "no_cue": {"score": 0.2, "pred_voc": own, "same_top1": not flips},
            }
            for variant, v in variants.items():
                cfs.append({**base, "variant": variant, "pred_class": 3 if "score" in v else None, **v})
    return metrics, cfs


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    metrics, cfs = _fake_run()
    writer = StoreWriter(out, RUN)
    half = len(metrics) // 2, len(cfs) // 2  # two batches, as the job commits them
    writer.write_batch("a", {"metrics": metrics[:half[0]], "counterfactuals": cfs[:half[1]]})
    writer.write_batch("b", {"metrics": metrics[half[0]:], "counterfactuals": cfs[half[1]:]})
    return out, pd.DataFrame(metrics), pd.DataFrame(cfs)


def _expected_decisions(metrics: pd.DataFrame, cfs: pd.DataFrame) -> pd.DataFrame:
    key = ["image_id", "target_class", "protocol"]
    wide = cfs.pivot_table(index=key, columns="variant", values=["score", "pred_voc", "same_top1"],
                           aggfunc="first", dropna=False)
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    wide = wide.reset_index()
    first = cfs.groupby(key).first()[["orig_score", "gt_target"]].reset_index()
    mixed = cfs[cfs.variant == "mixed_rand"][key + ["partner_classes"]]
    m = metrics.groupby(key).first()[["confidence", "correct", "gt_classes"]].reset_index()
    d = wide.merge(first, on=key).merge(mixed, on=key).merge(m, on=key)
    d["context_reliance"] = (d["score_no_fg"] / d["orig_score"]).clip(0, 1)
    d["object_sufficiency"] = (d["score_only_fg"] / d["orig_score"]).clip(0, 1)

    def verdict(r):
        if r.confidence < shortcuts.CONFIDENT:
            return None
        ctx, obj = r.context_reliance >= shortcuts.SURVIVES, r.object_sufficiency >= shortcuts.SURVIVES
        return {(False, True): "object-driven", (True, False): "context-driven", (True, True): "both",
                (False, False): "neither"}[(ctx, obj)]

    d["verdict"] = d.apply(verdict, axis=1)

    def follows(r):
        if not isinstance(r.pred_voc_mixed_rand, str):
            return None
        return (not r.same_top1_mixed_rand and r.pred_voc_mixed_rand in r.partner_classes.split(",")
                and r.pred_voc_mixed_rand not in r.gt_classes.split(","))

    d["background_following"] = d.apply(follows, axis=1)
    return d


def _per_method(metrics: pd.DataFrame, decisions: pd.DataFrame) -> pd.DataFrame:
    """Each clean map's masses beside its decision."""
    maps = metrics[metrics.protocol == "clean"][["image_id", "target_class", "protocol", "method", "relevance_mass",
                                                 "cue_mass"]]
    return maps.merge(decisions[decisions.protocol == "clean"], on=["image_id", "target_class", "protocol"])


def test_reliance_matches_pandas(store):
    out, metrics, cfs = store
    got = shortcuts.reliance(connect(out), RUN)
    want = _expected_decisions(metrics, cfs)
    merged = got.merge(want, on=["image_id", "protocol"], suffixes=("", "_want"))
    assert len(merged) == len(want) == len(got) == 2 * 160
    assert np.allclose(merged["context_reliance"], merged["context_reliance_want"], atol=1e-6)
    assert np.allclose(merged["object_sufficiency"], merged["object_sufficiency_want"], atol=1e-6)
    assert (merged["verdict"].fillna("-") == merged["verdict_want"].fillna("-")).all()
    assert set(merged["verdict"].dropna()) == set(shortcuts.VERDICTS)
    bf, bf_want = merged["background_following"], merged["background_following_want"]
    assert (bf.isna() == bf_want.isna()).all() and bf.isna().any()
    assert (bf[bf.notna()].astype(bool) == bf_want[bf.notna()].astype(bool)).all() and bf.dropna().astype(bool).any()


def test_context_share_by_class(store):
    out, metrics, cfs = store
    got = shortcuts.context_share_by_class(connect(out), RUN, "clean", seed=1, resamples=300)
    d = _expected_decisions(metrics, cfs)
    d = d[(d.protocol == "clean") & d.verdict.notna() & d.correct]
    want = d.groupby("gt_target")["verdict"].agg(n="size", context_driven=lambda v: int((v == "context-driven").sum()))
    got = got.set_index("gt_target")
    assert got["n"].tolist() == want["n"].tolist() and got["context_driven"].tolist() == want["context_driven"].tolist()
    assert np.allclose(got["share"], want["context_driven"] / want["n"])
    assert (got["low"] <= got["share"]).all() and (got["share"] <= got["high"]).all()
    mixed = got[(got["share"] > 0) & (got["share"] < 1)]
    assert len(mixed) and (mixed["low"] < mixed["high"]).all()
    again = shortcuts.context_share_by_class(connect(out), RUN, "clean", seed=1, resamples=300).set_index("gt_target")
    assert again.equals(got)  # seeded
    other = shortcuts.context_share_by_class(connect(out), RUN, "clean", seed=2, resamples=300).set_index("gt_target")
    assert not np.allclose(other["low"], got["low"]) or not np.allclose(other["high"], got["high"])


def test_bg_gap(store):
    out, metrics, cfs = store
    got = shortcuts.bg_gap(connect(out), RUN, seed=0, resamples=300).set_index("protocol")
    d = _expected_decisions(metrics, cfs)
    d = d[d.pred_voc_mixed_rand.notna()]
    for protocol, g in d.groupby("protocol"):
        only = np.mean([v in c.split(",") for v, c in zip(g.pred_voc_only_fg, g.gt_classes)])
        mixed = np.mean([v in c.split(",") for v, c in zip(g.pred_voc_mixed_rand, g.gt_classes)])
        row = got.loc[protocol]
        assert row["n"] == len(g)
        assert row["acc_only_fg"] == pytest.approx(only) and row["acc_mixed_rand"] == pytest.approx(mixed)
        assert row["gap"] == pytest.approx(only - mixed) and row["low"] <= row["gap"] <= row["high"]


def test_method_trust_matches_pandas_and_ranks_the_faithful_method_first(store):
    out, metrics, cfs = store
    got = shortcuts.method_trust(connect(out), RUN, "clean", seed=0, resamples=200).set_index("method")
    d = _expected_decisions(metrics, cfs)
    m = _per_method(metrics, d)
    m["off_mass"] = 1 - m["relevance_mass"]
    for method, g in m.groupby("method"):
        row = got.loc[method]
        assert row["n_rho"] == len(g)
        assert row["rho"] == pytest.approx(g["off_mass"].corr(g["context_reliance"], method="spearman"), abs=1e-6)
        v = g[g.verdict.notna()]
        pos = (v.verdict == "context-driven").to_numpy()
        assert (row["n_pos"], row["n_neg"]) == (pos.sum(), (~pos).sum())
        assert row["auc"] == pytest.approx(roc_auc_score(pos, v["off_mass"]), abs=1e-6)
        assert row["rho_low"] <= row["rho"] <= row["rho_high"]
    assert got.index[0] == "alpha" and got.loc["alpha", "rho"] > 0.8


def test_cue_trust_matches_pandas(store):
    out, metrics, cfs = store
    got = shortcuts.cue_trust(connect(out), RUN, "clean", seed=0, resamples=200).set_index("method")
    d = _expected_decisions(metrics, cfs)
    m = _per_method(metrics, d)
    m = m[m.cue_mass.notna() & (m.confidence >= shortcuts.CONFIDENT)]
    for method, g in m.groupby("method"):
        flips = ~g["same_top1_no_cue"].astype(bool).to_numpy()
        assert (got.loc[method, "n_pos"], got.loc[method, "n_neg"]) == (flips.sum(), (~flips).sum())
        assert got.loc[method, "auc"] == pytest.approx(roc_auc_score(flips, g["cue_mass"]), abs=1e-6)
    assert got.index[0] == "gamma"


def test_counterfactual_part_counts_only_beside_its_metrics_part(tmp_path):
    """The new table commits as heatmaps/images do: a part whose batch never wrote its metrics part is unseen."""
    metrics, cfs = _fake_run(n=4)
    writer = StoreWriter(tmp_path, RUN)
    writer.write_batch("a", {"metrics": metrics, "counterfactuals": cfs})
    writer._write("counterfactuals", "part-interrupted.parquet", [dict(r) for r in cfs])
    con = connect(tmp_path)
    assert con.execute("SELECT count(*) FROM counterfactuals").fetchone()[0] == len(cfs)
    empty = tmp_path / "empty"
    StoreWriter(empty, RUN).write_batch("a", {"metrics": metrics})
    assert connect(empty).execute("SELECT count(*) FROM counterfactuals").fetchone()[0] == 0
    assert shortcuts.reliance(connect(empty), RUN).empty


# ------------------------------------------------------------------------------------------- the bootstrap
def _percentile_interval(stats: list[float]) -> tuple[float, float]:
    stats = np.array(stats, dtype=float)
    stats = stats[np.isfinite(stats)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _loop_bootstrap(stat, n: int, seed: int, resamples: int) -> tuple[float, float]:
    """The straightforward bootstrap: one generator call and one statistic per resample."""
    rng = np.random.default_rng(seed)
    return _percentile_interval([stat(rng.integers(0, n, n)) for _ in range(resamples)])


@pytest.mark.parametrize("n", [1, 7, 600, 5001])
@pytest.mark.parametrize("per_chunk", [None, 1, 3, 64])
def test_resample_indices_are_the_successive_draws_of_one_generator(n, per_chunk):
    chunks = list(shortcuts.resample_indices(n, seed=4, resamples=130, per_chunk=per_chunk))
    assert sum(len(c) for c in chunks) == 130
    rng = np.random.default_rng(4)
    assert (np.concatenate(chunks) == np.stack([rng.integers(0, n, n) for _ in range(130)])).all()


@pytest.mark.parametrize("seed", [0, 5])
def test_mean_intervals_equal_the_loop_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 37, 3000):
        a, b = (rng.random(n) < 0.3).astype(float), (rng.random(n) < 0.6).astype(float)
        mean_a, mean_b = shortcuts._mean_rows(a), shortcuts._mean_rows(b)
        assert shortcuts._bootstrap_rows(mean_a, n, seed, 500) == _loop_bootstrap(lambda i: a[i].mean(), n, seed,
                                                                                  500)
        assert shortcuts._bootstrap_rows(lambda i: mean_a(i) - mean_b(i), n, seed, 500) == _loop_bootstrap(
            lambda i: a[i].mean() - b[i].mean(), n, seed, 500)
    assert np.isnan(shortcuts._bootstrap_rows(shortcuts._mean_rows(np.empty(0)), 0, seed, 10)).all()


def test_table_intervals_equal_the_loop_over_the_decisions(store):
    out, _, _ = store
    con = connect(out)
    decisions = shortcuts.reliance(con, RUN, "clean")
    share = shortcuts.context_share_by_class(con, RUN, "clean", seed=3, resamples=400)
    kept = decisions[decisions.verdict.notna() & (decisions.correct == True)]  # noqa: E712
    for _, row in share.iterrows():
        hits = (kept[kept.gt_target == row["gt_target"]].verdict == "context-driven").to_numpy(float)
        assert (row["low"], row["high"]) == _loop_bootstrap(lambda i: hits[i].mean(), len(hits), 3, 400)
    gap = shortcuts.bg_gap(con, RUN, "clean", seed=3, resamples=400).iloc[0]
    both = decisions[decisions.only_fg_correct.notna() & decisions.mixed_rand_correct.notna()]
    a, b = both.only_fg_correct.to_numpy(float), both.mixed_rand_correct.to_numpy(float)
    assert (gap["low"], gap["high"]) == _loop_bootstrap(lambda i: a[i].mean() - b[i].mean(), len(a), 3, 400)


def test_rank_statistic_intervals_equal_the_loop(store):
    out, _, _ = store
    rows = shortcuts.method_rows(connect(out), shortcuts.reliance(connect(out), RUN, "clean"), RUN, "clean")
    got = shortcuts.method_trust_table(rows, seed=2, resamples=120).set_index("method")
    for method, g in rows.groupby("method"):
        x, y, s, pos = shortcuts.method_samples(g)
        assert (got.loc[method, "rho_low"], got.loc[method, "rho_high"]) == _loop_bootstrap(
            lambda i: shortcuts.spearman(x[i], y[i]), len(x), 2, 120)
        assert (got.loc[method, "auc_low"], got.loc[method, "auc_high"]) == _loop_bootstrap(
            lambda i: shortcuts.roc_auc(s[i], pos[i]), len(s), 2, 120)


def test_rank_average_is_scipys_rankdata():
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    for values in (rng.random(50), rng.integers(0, 5, 200).astype(float), rng.integers(0, 5, 30),
                   np.round(rng.normal(size=1000), 1), np.array([2.0]), np.array([1.0, np.nan, 0.5]),
                   np.array([np.inf, -np.inf, 0.0, np.inf]), np.empty(0)):
        want = rankdata(values)
        got = shortcuts.rank_average(values)
        assert got.dtype == want.dtype == np.float64
        assert np.array_equal(got, want, equal_nan=True)


def test_statistics_do_not_import_scipy_stats(store):
    """scipy.stats costs the dashboard's Shortcuts page a second on its first load."""
    import subprocess
    import sys

    out, _, _ = store
    code = ("import sys; from store import shortcuts, trust; from store.query import connect; "
            f"con = connect({str(out)!r}); shortcuts.context_share_by_class(con, {RUN!r}, resamples=5); "
            f"trust.method_trust(con, {RUN!r}, interval='normal'); shortcuts.method_trust(con, {RUN!r}, resamples=5); "
            "print('scipy.stats' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_method_rows_are_the_sql_join_in_a_fixed_order(store):
    """The per-map rows (joined in pandas onto the decisions already fetched) equal the SQL join of the decisions
    with the metrics, ordered by decision and method: the bootstrap resamples rows by position, so the order is
    part of the intervals."""
    out, _, _ = store
    con = connect(out)
    for protocol in ("clean", None):
        params = shortcuts._params(con, RUN, protocol, None)
        want = con.execute(f"""
            SELECT d.*, mm.method, 1.0 - mm.relevance_mass AS off_mass, mm.cue_mass
            FROM ({shortcuts._DECISIONS}) d
            JOIN metrics mm ON d.run_id = mm.run_id AND d.image_id = mm.image_id AND d.protocol = mm.protocol
                           AND d.target_class IS NOT DISTINCT FROM mm.target_class
            ORDER BY d.run_id, d.image_id, d.protocol, d.target_class, mm.method""", params).df()
        got = shortcuts.method_rows(con, shortcuts.reliance(con, RUN, protocol), RUN, protocol)
        assert len(got) == len(want) > 0
        assert got.equals(want[list(got.columns)])
    again = shortcuts.method_trust(con, RUN, "report", resamples=50)
    assert again.equals(shortcuts.method_trust(con, RUN, "report", resamples=50))

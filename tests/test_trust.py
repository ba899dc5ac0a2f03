"""store.trust: bootstrap intervals of rank statistics from resample counts equal the ones store.shortcuts gets
by ranking every resample again; the normal approximations come close to them on many decisions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from store import shortcuts, trust
from store.query import connect
from store.writer import StoreWriter
from tests.test_shortcuts import RUN, _fake_run


def test_resample_ranks_equal_ranking_each_resample():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 6, 40).astype(float)          # many ties
    for counts in trust.resample_counts(len(values), seed=2, resamples=7):
        ranks = trust.resample_ranks(values, counts)
        for c, r in zip(counts, ranks):
            drawn = np.repeat(np.arange(len(values)), c.astype(int))
            expected = rankdata(values[drawn])
            assert r[drawn] == pytest.approx(expected)


def test_resample_counts_are_the_draws_of_store_shortcuts():
    drawn = []
    shortcuts._bootstrap(lambda i: drawn.append(np.bincount(i, minlength=30)) or 0.0, 30, 9, 70)
    counts = np.concatenate(list(trust.resample_counts(30, 9, 70)))
    assert (counts == np.array(drawn)).all()


@pytest.mark.parametrize("seed", [0, 3])
def test_intervals_equal_the_resample_by_resample_ones(seed):
    rng = np.random.default_rng(seed)
    x = np.round(rng.random(60), 1)                          # ties on both sides
    y = np.round(x + rng.normal(0, 0.3, 60), 1)
    pos = rng.random(60) < 0.3
    slow_rho = shortcuts._bootstrap(lambda i: shortcuts.spearman(x[i], y[i]), 60, seed, 200)
    slow_auc = shortcuts._bootstrap(lambda i: shortcuts.roc_auc(x[i], pos[i]), 60, seed, 200)
    assert trust.spearman_interval(x, y, seed, 200) == pytest.approx(slow_rho, abs=1e-9)
    assert trust.roc_auc_interval(x, pos, seed, 200) == pytest.approx(slow_auc, abs=1e-9)


def test_degenerate_inputs_give_no_interval():
    assert np.isnan(trust.spearman_interval(np.array([1.0]), np.array([2.0]))).all()
    assert np.isnan(trust.spearman_interval(np.ones(10), np.arange(10.0), resamples=20)).all()
    assert np.isnan(trust.roc_auc_interval(np.arange(5.0), np.zeros(5, bool), resamples=20)).all()


def test_method_trust_equals_store_shortcuts(tmp_path):
    metrics, cfs = _fake_run(seed=1, n=120)
    StoreWriter(tmp_path, RUN).write_batch("a", {"metrics": metrics, "counterfactuals": cfs})
    con = connect(tmp_path)
    for protocol in ("clean", "report"):
        slow = shortcuts.method_trust(con, RUN, protocol, seed=4, resamples=150)
        fast = trust.method_trust(con, RUN, protocol, seed=4, resamples=150)
        assert list(fast.columns) == list(slow.columns) and list(fast["method"]) == list(slow["method"])
        numeric = [c for c in slow.columns if c != "method"]
        assert fast[numeric].to_numpy(float) == pytest.approx(slow[numeric].to_numpy(float), abs=1e-9, nan_ok=True)
    con.close()


def test_normal_intervals_come_close_to_the_bootstrap():
    rng = np.random.default_rng(7)
    x = rng.random(2000)
    y = x + rng.normal(0, 0.8, 2000)
    pos = rng.random(2000) < 1 / (1 + np.exp(-3 * (x - 0.5)))
    boot_rho = trust.spearman_interval(x, y, 0, 400)
    boot_auc = trust.roc_auc_interval(x, pos, 0, 400)
    norm_rho = trust.spearman_normal_interval(shortcuts.spearman(x, y), 2000)
    norm_auc = trust.roc_auc_normal_interval(shortcuts.roc_auc(x, pos), int(pos.sum()), int((~pos).sum()))
    assert norm_rho == pytest.approx(boot_rho, abs=0.01)
    assert norm_auc == pytest.approx(boot_auc, abs=0.01)
    assert norm_rho[0] < shortcuts.spearman(x, y) < norm_rho[1]


def test_normal_intervals_of_too_little_data_are_undefined():
    assert np.isnan(trust.spearman_normal_interval(0.5, 3)).all()
    assert np.isnan(trust.roc_auc_normal_interval(0.7, 0, 10)).all()
    assert trust.roc_auc_normal_interval(1.0, 5, 5) == (1.0, 1.0)

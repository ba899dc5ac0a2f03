"""The method-trust leaderboard (:func:`store.shortcuts.method_trust`) fast enough for a page that opens on a
large store: its intervals either by the same bootstrap without ranking every resample again, or by normal
approximations in microseconds.

**Bootstrap from resample counts.** :func:`store.shortcuts.method_trust` resamples decisions with replacement
and ranks each resample from scratch: a thousand resamples of ten thousand decisions per method take seconds.
A resample is fully described by how often it draws each original row (its *counts*), and the
average rank of a row inside the resample follows from the counts and the original order alone:

    rank_i = (draws of values below v_i) + (draws of values equal to v_i + 1) / 2

so the ranks of all resamples come from cumulative sums over the originally sorted values, with no sort per
resample. Spearman's ρ is then the count-weighted Pearson correlation of those ranks, and the ROC-AUC the
count-weighted Mann-Whitney statistic. The resamples are drawn exactly as :mod:`store.shortcuts` draws them
(the same seeded generator and calls), so the intervals equal its own up to floating-point rounding. Still
about a second per thousand resamples of ten thousand decisions per method.

**Normal approximations** (``interval="normal"``): Spearman's ρ through Fisher's z with Bonett & Wright's
standard error ``sqrt((1 + ρ²/2) / (n − 3))`` (Psychometrika, 2000); the ROC-AUC with Hanley & McNeil's
standard error (Radiology, 1982). Close to the bootstrap's for hundreds of decisions, cruder for a few.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from store import shortcuts

_CHUNK = 64  # resamples ranked at once (bounds the count matrices to _CHUNK × rows)


def resample_counts(n: int, seed: int, resamples: int):
    """Yield ``[k, n]`` count matrices, ``resamples`` rows in all: how often each of ``n`` rows is drawn by each
    resample of :func:`store.shortcuts._bootstrap` with this ``seed`` (the same index draws,
    :func:`store.shortcuts.resample_indices`), counted for all ``k`` resamples by one ``bincount``."""
    for idx in shortcuts.resample_indices(n, seed, resamples, per_chunk=_CHUNK):
        k = len(idx)
        flat = (idx + n * np.arange(k)[:, None]).ravel()  # resample r's rows counted in bins r·n … r·n + n − 1
        yield np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.float64)


@dataclass(frozen=True)
class _Order:
    """What ranking ``values`` needs, computed once for all resamples: their sort order and tie groups."""

    order: np.ndarray          # indices that sort the values
    starts: np.ndarray         # first sorted position of each tie group
    ends: np.ndarray           # last sorted position of each tie group
    group: np.ndarray | None   # tie group of each sorted position; None when there are no ties

    @classmethod
    def of(cls, values: np.ndarray) -> "_Order":
        v = np.asarray(values, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        v = v[order]
        new = np.r_[True, v[1:] != v[:-1]]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:] - 1, len(v) - 1]
        return cls(order, starts, ends, None if len(starts) == len(v) else np.cumsum(new) - 1)


def _sorted_ranks(o: _Order, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(counts, average ranks) of each resample, both ``[k, n]`` in the values' sorted order."""
    c = counts[:, o.order]
    cum = np.cumsum(c, axis=1)
    if o.group is None:  # no ties: a row's rank is the draws before it plus (its own draws + 1) / 2
        return c, cum - (c - 1.0) / 2.0
    end = cum[:, o.ends]
    before = cum[:, o.starts] - c[:, o.starts]
    return c, (before + (end - before + 1.0) / 2.0)[:, o.group]


def resample_ranks(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[k, n]`` average ranks (1-based, ties sharing their mean rank) of each row's value inside each
    resample described by ``counts`` (``[k, n]``); a row not drawn gets the rank it would have."""
    o = _Order.of(values)
    _, ranks_sorted = _sorted_ranks(o, counts)
    ranks = np.empty_like(ranks_sorted)
    ranks[:, o.order] = ranks_sorted
    return ranks


def spearman_interval(x: np.ndarray, y: np.ndarray, seed: int = 0,
                      resamples: int = shortcuts.BOOTSTRAP) -> tuple[float, float]:
    """95 % bootstrap interval of Spearman's ρ of ``x`` and ``y`` (rows resampled in pairs).

    Every resample draws ``n`` rows, so its ranks average exactly ``(n + 1) / 2``: ρ is the count-weighted
    correlation of the ranks centred on that (computed in ``x``'s sorted order)."""
    n = len(x)
    if n < 2:  # no resample, or every resample holds one value: no correlation
        return float("nan"), float("nan")
    ox, oy = _Order.of(x), _Order.of(y)
    to_x = np.argsort(ox.order)[oy.order]    # position sorted by y -> position sorted by x
    centre = (n + 1) / 2.0
    # a resample whose ranks are constant on either side has no correlation (as store.shortcuts.spearman); the
    # centred ranks' sums of squares are near n³ unless constant, so below n³·1e-12 is rounding noise
    floor = 1e-12 * float(n) ** 3
    stats = []
    for counts in resample_counts(n, seed, resamples):
        c, rx = _sorted_ranks(ox, counts)
        ry = np.empty_like(rx)
        ry[:, to_x] = _sorted_ranks(oy, counts)[1]
        rx -= centre
        ry -= centre
        crx = c * rx
        cov, var_x = np.einsum("ij,ij->i", crx, ry), np.einsum("ij,ij->i", crx, rx)
        var_y = np.einsum("ij,ij->i", c * ry, ry)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append(np.where((var_x > floor) & (var_y > floor), cov / np.sqrt(var_x * var_y), np.nan))
    return shortcuts._interval(np.concatenate(stats))


def roc_auc_interval(score: np.ndarray, positive: np.ndarray, seed: int = 0,
                     resamples: int = shortcuts.BOOTSTRAP) -> tuple[float, float]:
    """95 % bootstrap interval of the ROC-AUC of ``score`` for flagging ``positive`` (rows resampled): the
    Mann-Whitney statistic of each resample from its positives' ranks."""
    n = len(score)
    if n == 0:
        return float("nan"), float("nan")
    o = _Order.of(score)
    pos = np.asarray(positive, dtype=bool)[o.order]
    stats = []
    for counts in resample_counts(n, seed, resamples):
        c, ranks = _sorted_ranks(o, counts)
        c_pos = c[:, pos]
        n_pos = c_pos.sum(axis=1)
        n_neg = n - n_pos
        rank_sum = np.einsum("ij,ij->i", c_pos, ranks[:, pos])
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        stats.append(np.where((n_pos > 0) & (n_neg > 0), auc, np.nan))
    return shortcuts._interval(np.concatenate(stats))


Z95 = 1.959963984540054  # standard normal quantile of 0.975
INTERVALS = ("bootstrap", "normal")


def spearman_normal_interval(rho: float, n: int) -> tuple[float, float]:
    """95 % interval of Spearman's ρ over ``n`` pairs: Fisher's z with Bonett & Wright's standard error; NaN
    for ``n <= 3`` or an undefined ρ."""
    if n <= 3 or not np.isfinite(rho):
        return float("nan"), float("nan")
    z, se = np.arctanh(np.clip(rho, -0.999999, 0.999999)), np.sqrt((1 + rho * rho / 2) / (n - 3))
    return float(np.tanh(z - Z95 * se)), float(np.tanh(z + Z95 * se))


def roc_auc_normal_interval(auc: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """95 % interval of a ROC-AUC from ``n_pos`` positives and ``n_neg`` negatives: Hanley & McNeil's standard
    error, clipped to [0, 1]; NaN without both kinds or an undefined AUC."""
    if not n_pos or not n_neg or not np.isfinite(auc):
        return float("nan"), float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    se = float(np.sqrt(max(var, 0.0)))
    return max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se)


def method_trust(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
                 resamples: int = shortcuts.BOOTSTRAP, interval: str = "bootstrap",
                 fill: str | None = None) -> pd.DataFrame:
    """:func:`store.shortcuts.method_trust`: the same rows, columns and order. With ``interval="bootstrap"``
    the same intervals up to rounding, from resample counts (several times faster); with ``"normal"`` normal
    approximations (see the module doc), for a page that must open at once. ``fill``: as in
    :mod:`store.shortcuts` (None: the only fill the run holds)."""
    return method_trust_table(shortcuts._method_rows(con, run_id, protocol, fill), seed, resamples, interval)


def method_trust_table(rows: pd.DataFrame, seed: int = 0, resamples: int = shortcuts.BOOTSTRAP,
                       interval: str = "bootstrap") -> pd.DataFrame:
    """:func:`method_trust` of the rows of :func:`store.shortcuts.method_rows` (fetched once by a caller that
    also needs them for another table)."""
    if interval not in INTERVALS:
        raise ValueError(f"unknown interval {interval!r}; choose one of {', '.join(INTERVALS)}")
    out = []
    for method, g in rows.groupby("method", sort=True):
        x, y, s, pos = shortcuts.method_samples(g)
        rho, auc, n_pos = shortcuts.spearman(x, y), shortcuts.roc_auc(s, pos), int(pos.sum())
        if interval == "normal":
            rho_ci, auc_ci = spearman_normal_interval(rho, len(x)), roc_auc_normal_interval(auc, n_pos, len(s) - n_pos)
        else:
            rho_ci, auc_ci = spearman_interval(x, y, seed, resamples), roc_auc_interval(s, pos, seed, resamples)
        out.append(shortcuts.trust_row(method, len(x), rho, rho_ci, pos, auc, auc_ci))
    return shortcuts._best_auc_first(out, shortcuts.TRUST_COLUMNS)


__all__ = ["INTERVALS", "resample_counts", "resample_ranks", "spearman_interval", "roc_auc_interval",
           "spearman_normal_interval", "roc_auc_normal_interval", "method_trust", "method_trust_table"]

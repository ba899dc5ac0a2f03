"""Does the model rely on context, and which explanation methods say so? Queries over the ``counterfactuals``
table (:mod:`compute.counterfactuals`) joined with ``metrics``.

Connect with :func:`store.query.connect`; every function takes that connection, binds its values as
parameters, and returns a pandas DataFrame. Each takes one ``fill`` of the variants (a run may hold several:
:func:`fills`); left out, the only one there is. Bootstrap intervals are computed in NumPy over the SQL result,
resampling decisions (rows) with a seeded generator, so the same store gives the same intervals. Each statistic
also exists as a function of the decisions already fetched (``*_table``), so a caller that shows several of them
(the dashboard) runs the decisions query once.

Per decision (one image × explained target × protocol; classifiers only, as the scores are probabilities):

- ``context_reliance   = clip(p(no_fg) / p(orig), 0, 1)``: how much of the explained class's probability
  survives with the object removed (1: the context alone supports the decision as strongly);
- ``object_sufficiency = clip(p(only_fg) / p(orig), 0, 1)``: how much survives with the context removed;
- ``background_following``: under ``mixed_rand`` the top-1 changed and now maps to a VOC class of the partner
  image that is not a class of the image itself (NULL when mixed_rand was not made or nothing maps);
- ``verdict``, for confident decisions only (top-1 probability ``>= CONFIDENT``): ``object-driven`` (object
  sufficient, context not: ``object_sufficiency >= SURVIVES > context_reliance``), ``context-driven`` (the
  reverse), ``both`` (each alone keeps ``>= SURVIVES``), ``neither``.

A method's "mass off the object" is ``1 - metrics.relevance_mass`` (the share of the map's non-negative mass
outside the object mask of the row's protocol); its "cue mass" is ``metrics.cue_mass``.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

CONFIDENT = 0.5   # top-1 probability from which a decision gets a verdict
SURVIVES = 0.5    # share of the explained class's probability that counts as "still supported"
BOOTSTRAP = 1000  # resamples for the 95 % intervals
VERDICTS = ("object-driven", "context-driven", "both", "neither")

_DECISIONS = """
WITH cf AS (
    SELECT run_id, image_id, target_class, protocol,
           any_value(target_kind) AS target_kind, any_value(gt_target) AS gt_target,
           any_value(score_kind) AS score_kind, any_value(orig_score) AS p_orig,
           any_value(orig_pred_class) AS orig_pred_class,
           max(score) FILTER (WHERE variant = 'no_fg') AS p_no_fg,
           max(score) FILTER (WHERE variant = 'only_fg') AS p_only_fg,
           any_value(pred_voc) FILTER (WHERE variant = 'only_fg') AS only_fg_voc,
           any_value(pred_voc) FILTER (WHERE variant = 'mixed_rand') AS mixed_voc,
           bool_or(same_top1) FILTER (WHERE variant = 'mixed_rand') AS mixed_same,
           any_value(partner_classes) FILTER (WHERE variant = 'mixed_rand') AS partner_classes,
           bool_or(same_top1) FILTER (WHERE variant = 'no_cue') AS no_cue_same
    FROM counterfactuals
    WHERE ($run_id IS NULL OR run_id = $run_id) AND ($protocol IS NULL OR protocol = $protocol)
      AND ($fill IS NULL OR fill = $fill)
    GROUP BY run_id, image_id, target_class, protocol
), m AS (
    SELECT run_id, image_id, target_class, protocol, any_value(confidence) AS confidence,
           any_value(correct) AS correct, any_value(gt_classes) AS gt_classes
    FROM metrics
    WHERE ($run_id IS NULL OR run_id = $run_id) AND ($protocol IS NULL OR protocol = $protocol)
    GROUP BY run_id, image_id, target_class, protocol
), scored AS (
    SELECT cf.*, m.confidence, m.correct, m.gt_classes,
           CASE WHEN score_kind = 'probability' AND p_orig > 0
                THEN least(greatest(p_no_fg / p_orig, 0.0), 1.0) END AS context_reliance,
           CASE WHEN score_kind = 'probability' AND p_orig > 0
                THEN least(greatest(p_only_fg / p_orig, 0.0), 1.0) END AS object_sufficiency,
           CASE WHEN mixed_voc IS NOT NULL AND mixed_same IS NOT NULL
                THEN NOT mixed_same AND list_contains(string_split(partner_classes, ','), mixed_voc)
                     AND NOT list_contains(string_split(coalesce(m.gt_classes, ''), ','), mixed_voc) END
               AS background_following,
           CASE WHEN only_fg_voc IS NOT NULL
                THEN list_contains(string_split(coalesce(m.gt_classes, ''), ','), only_fg_voc) END AS only_fg_correct,
           CASE WHEN mixed_voc IS NOT NULL
                THEN list_contains(string_split(coalesce(m.gt_classes, ''), ','), mixed_voc) END AS mixed_rand_correct
    FROM cf LEFT JOIN m ON cf.run_id = m.run_id AND cf.image_id = m.image_id AND cf.protocol = m.protocol
                       AND cf.target_class IS NOT DISTINCT FROM m.target_class
)
SELECT *,
       CASE WHEN confidence >= $confident AND context_reliance IS NOT NULL AND object_sufficiency IS NOT NULL THEN
           CASE WHEN object_sufficiency >= $survives AND context_reliance < $survives THEN 'object-driven'
                WHEN context_reliance >= $survives AND object_sufficiency < $survives THEN 'context-driven'
                WHEN context_reliance >= $survives THEN 'both'
                ELSE 'neither' END
       END AS verdict
FROM scored
"""


def _params(con, run_id: str | None, protocol: str | None, fill: str | None) -> dict:
    if fill is None:
        found = fills(con, run_id)
        if len(found) > 1:
            raise ValueError(f"the counterfactual rows hold several fills ({', '.join(found)}); choose one")
    return {"run_id": run_id, "protocol": protocol, "fill": fill, "confident": CONFIDENT, "survives": SURVIVES}


def fills(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[str]:
    """The fills the counterfactual rows of a run (or of every run) were made with, sorted. A rerun with another
    ``--cf-fill`` adds that fill's rows to the same run; every query here then takes one ``fill``."""
    rows = con.execute("SELECT DISTINCT fill FROM counterfactuals WHERE $run_id IS NULL OR run_id = $run_id "
                       "ORDER BY 1", {"run_id": run_id}).fetchall()
    return [r[0] for r in rows]


def reliance(con: duckdb.DuckDBPyConnection, run_id: str | None = None, protocol: str | None = None,
             fill: str | None = None) -> pd.DataFrame:
    """One row per decision (image × explained target × protocol) with ``context_reliance``,
    ``object_sufficiency``, ``background_following``, ``only_fg_correct``/``mixed_rand_correct`` (the variant's
    top-1 maps to a class of the image), ``no_cue_same`` and the ``verdict`` (see the module's formulas).
    ``fill``: the variants' fill (None: the only one there is; a ValueError when there are several)."""
    sql = f"{_DECISIONS} ORDER BY run_id, image_id, protocol, target_class"
    return con.execute(sql, _params(con, run_id, protocol, fill)).df()


# ---------------------------------------------------------------------------------------------------------------
# statistics with bootstrap intervals

#: index draws held at once by :func:`resample_indices` (2 MB of indices: small enough to stay in cache)
_DRAWS_AT_ONCE = 1 << 18


def resample_indices(n: int, seed: int, resamples: int, per_chunk: int | None = None):
    """Yield ``[k, n]`` matrices of row indices drawn with replacement, ``resamples`` rows in all: row ``r`` is
    resample ``r``. One generator call per matrix: NumPy's bounded integers come off one continuous stream, so a
    ``[k, n]`` draw holds exactly the indices of ``k`` successive ``integers(0, n, n)`` calls and the intervals
    do not depend on how the resamples are chunked. ``per_chunk``: rows per matrix (default: as many as fit
    :data:`_DRAWS_AT_ONCE`)."""
    rng = np.random.default_rng(seed)
    per_chunk = per_chunk or max(1, _DRAWS_AT_ONCE // max(n, 1))
    for start in range(0, resamples, per_chunk):
        yield rng.integers(0, n, (min(per_chunk, resamples - start), n))


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _bootstrap(stat, n: int, seed: int, resamples: int) -> tuple[float, float]:
    """95 % percentile interval of ``stat(indices)`` over ``resamples`` draws of ``n`` rows with replacement, one
    call per resample (for statistics that rank each resample; :func:`_bootstrap_rows` for array ones)."""
    return _bootstrap_rows(lambda idx: [stat(i) for i in idx], n, seed, resamples)


def _bootstrap_rows(stat_rows, n: int, seed: int, resamples: int) -> tuple[float, float]:
    """95 % percentile interval of a statistic over ``resamples`` draws of ``n`` rows with replacement, where
    ``stat_rows(idx)`` computes it for every row of an index matrix ``idx`` (``[k, n]``) at once. The same draws
    as :func:`_bootstrap`, so the same interval for the same per-resample values."""
    if n == 0:
        return float("nan"), float("nan")
    stats = [np.asarray(stat_rows(idx), dtype=float) for idx in resample_indices(n, seed, resamples)]
    return _interval(np.concatenate(stats))


def _mean_rows(values: np.ndarray):
    """``stat_rows`` of the mean of ``values`` (0/1 here: sums of 0/1 are exact integers in float64, so each
    row's mean is bit for bit the mean of that resample taken alone)."""
    return lambda idx: values[idx].mean(axis=1)


def rank_average(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; tied values share their mean rank), the same float64 values as
    ``scipy.stats.rankdata(values)``, NaN everywhere when a value is NaN as there, without importing
    ``scipy.stats`` (a second of a page's first load)."""
    v = np.asarray(values)
    n = len(v)
    if n == 0:
        return np.empty(0)
    if v.dtype.kind == "f" and np.isnan(v).any():
        return np.full(n, np.nan)
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ties = np.diff(np.r_[starts, n])
    ranks = np.empty(n)
    ranks[order] = np.repeat((starts + 1).astype(float) + (ties.astype(float) - 1) / 2, ties)
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    if len(x) < 2:
        return float("nan")
    rx, ry = rank_average(x), rank_average(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``score`` for flagging ``positive`` (Mann-Whitney, ties count half); NaN without both kinds."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rank_average(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def context_share_by_class(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
                           resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """Per explained class (``gt_target``; under ``clean`` the one VOC class explained): of the confident,
    correct decisions with a verdict, the count ``n``, the ``context_driven`` count and their ``share`` with a
    95 % bootstrap interval (``low``, ``high``)."""
    return context_share_table(reliance(con, run_id, protocol, fill), seed, resamples)


def context_share_table(decisions: pd.DataFrame, seed: int = 0, resamples: int = BOOTSTRAP) -> pd.DataFrame:
    """:func:`context_share_by_class` of the rows of :func:`reliance`."""
    d = decisions[decisions["verdict"].notna() & (decisions["correct"] == True)]  # noqa: E712 (NULL-aware)
    rows = []
    for cls, g in d.groupby("gt_target", sort=True):
        hits = (g["verdict"] == "context-driven").to_numpy(dtype=float)
        low, high = _bootstrap_rows(_mean_rows(hits), len(hits), seed, resamples)
        rows.append({"gt_target": cls, "n": len(hits), "context_driven": int(hits.sum()),
                     "share": float(hits.mean()), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["gt_target", "n", "context_driven", "share", "low", "high"])


def bg_gap(con, run_id: str | None = None, protocol: str | None = None, seed: int = 0,
           resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """The BG-Gap analogue per protocol: over decisions where both variants were made and their top-1 maps to a
    VOC class, the accuracy (top-1 maps to a class of the image) on ``only_fg`` and on ``mixed_rand``, and
    ``gap = acc_only_fg - acc_mixed_rand`` with a 95 % bootstrap interval (decisions resampled in pairs)."""
    return bg_gap_table(reliance(con, run_id, protocol, fill), seed, resamples)


def bg_gap_table(decisions: pd.DataFrame, seed: int = 0, resamples: int = BOOTSTRAP) -> pd.DataFrame:
    """:func:`bg_gap` of the rows of :func:`reliance`."""
    d = decisions[decisions["only_fg_correct"].notna() & decisions["mixed_rand_correct"].notna()]
    rows = []
    for proto, g in d.groupby("protocol", sort=True):
        a = g["only_fg_correct"].to_numpy(dtype=float)
        b = g["mixed_rand_correct"].to_numpy(dtype=float)
        mean_a, mean_b = _mean_rows(a), _mean_rows(b)
        low, high = _bootstrap_rows(lambda idx: mean_a(idx) - mean_b(idx), len(a), seed, resamples)
        rows.append({"protocol": proto, "n": len(a), "acc_only_fg": float(a.mean()), "acc_mixed_rand": float(b.mean()),
                     "gap": float(a.mean() - b.mean()), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["protocol", "n", "acc_only_fg", "acc_mixed_rand", "gap", "low", "high"])


_KEYS = ["run_id", "image_id", "protocol", "target_class"]
#: what the trust statistics take of a decision (:func:`method_samples`, :func:`cue_trust_table`)
_TRUST_COLUMNS = ["context_reliance", "verdict", "confidence", "no_cue_same"]
_MAP_MASSES = """
SELECT run_id, image_id, protocol, target_class, method, 1.0 - relevance_mass AS off_mass, cue_mass
FROM metrics
WHERE ($run_id IS NULL OR run_id = $run_id) AND ($protocol IS NULL OR protocol = $protocol)
ORDER BY run_id, image_id, protocol, target_class, method
"""


def method_rows(con, decisions: pd.DataFrame, run_id: str | None = None,
                protocol: str | None = None) -> pd.DataFrame:
    """The rows of :func:`reliance` (``decisions``, of this ``run_id`` and ``protocol``) joined with each
    method's map of the decision: ``method``, ``off_mass`` (``1 - relevance_mass``) and ``cue_mass``, beside the
    decision's keys and :data:`_TRUST_COLUMNS`. Decisions without a map are left out (an inner join; a missing
    ``target_class`` matches a missing one). In the decisions' order, then by method: the bootstrap resamples
    rows by position, so a fixed order is what makes its intervals repeat."""
    masses = con.execute(_MAP_MASSES, {"run_id": run_id, "protocol": protocol}).df()
    left = decisions[_KEYS + _TRUST_COLUMNS].assign(_decision=np.arange(len(decisions)))
    joined = left.merge(masses, on=_KEYS, how="inner", sort=False)
    return joined.sort_values("_decision", kind="stable").drop(columns="_decision").reset_index(drop=True)


def _method_rows(con, run_id, protocol, fill) -> pd.DataFrame:
    return method_rows(con, reliance(con, run_id, protocol, fill), run_id, protocol)


def method_samples(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One method's rows as the trust measures take them: ``x`` mass off the object and ``y`` context reliance
    (decisions with both), ``s`` mass off the object and ``pos`` context-driven (decisions with a verdict)."""
    r = g[g["off_mass"].notna() & g["context_reliance"].notna()]
    v = g[g["off_mass"].notna() & g["verdict"].notna()]
    return (r["off_mass"].to_numpy(float), r["context_reliance"].to_numpy(float), v["off_mass"].to_numpy(float),
            (v["verdict"] == "context-driven").to_numpy())


def _best_auc_first(rows: list[dict], cols: list[str]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["auc", "method"], ascending=[False, True], na_position="last").reset_index(drop=True)


TRUST_COLUMNS = ["method", "n_rho", "rho", "rho_low", "rho_high", "n_pos", "n_neg", "auc", "auc_low", "auc_high"]


def trust_row(method: str, n_rho: int, rho: float, rho_ci, pos: np.ndarray, auc: float, auc_ci) -> dict:
    """One row of the method-trust table (:data:`TRUST_COLUMNS`), whichever way its intervals were made."""
    n_pos = int(pos.sum())
    return {"method": method, "n_rho": n_rho, "rho": rho, "rho_low": rho_ci[0], "rho_high": rho_ci[1],
            "n_pos": n_pos, "n_neg": len(pos) - n_pos, "auc": auc, "auc_low": auc_ci[0], "auc_high": auc_ci[1]}


def method_trust(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
                 resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """The method-trust leaderboard: per method, over decisions with both a map mass and a reliance score,
    ``rho`` (Spearman, mass off the object vs ``context_reliance``; ``n_rho`` decisions) and, over confident
    decisions with a verdict, ``auc`` (ROC-AUC of the mass off the object for flagging ``context-driven``
    ones; ``n_pos``/``n_neg``), each with a 95 % bootstrap interval. Best ``auc`` first."""
    return method_trust_table(_method_rows(con, run_id, protocol, fill), seed, resamples)


def method_trust_table(rows: pd.DataFrame, seed: int = 0, resamples: int = BOOTSTRAP) -> pd.DataFrame:
    """:func:`method_trust` of the rows of :func:`method_rows`, every resample ranked anew (as the report)."""
    out = []
    for method, g in rows.groupby("method", sort=True):
        x, y, s, pos = method_samples(g)
        rho_ci = _bootstrap(lambda i: spearman(x[i], y[i]), len(x), seed, resamples)
        auc_ci = _bootstrap(lambda i: roc_auc(s[i], pos[i]), len(s), seed, resamples)
        out.append(trust_row(method, len(x), spearman(x, y), rho_ci, pos, roc_auc(s, pos), auc_ci))
    return _best_auc_first(out, TRUST_COLUMNS)


def cue_trust(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
              resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """On stores with planted cues: per method, over confident decisions whose ``no_cue`` variant was made and
    whose map has a ``cue_mass``, the ROC-AUC of the cue mass for flagging decisions whose top-1 flips when the
    cue is removed (``n_pos`` flips, ``n_neg`` not), with a 95 % bootstrap interval. Empty without cues."""
    return cue_trust_table(_method_rows(con, run_id, protocol, fill), seed, resamples)


def cue_trust_table(rows: pd.DataFrame, seed: int = 0, resamples: int = BOOTSTRAP) -> pd.DataFrame:
    """:func:`cue_trust` of the rows of :func:`method_rows`."""
    d = rows[rows["cue_mass"].notna() & rows["no_cue_same"].notna() & (rows["confidence"] >= CONFIDENT)]
    out = []
    for method, g in d.groupby("method", sort=True):
        s, pos = g["cue_mass"].to_numpy(float), ~g["no_cue_same"].to_numpy(bool)
        low, high = _bootstrap(lambda i: roc_auc(s[i], pos[i]), len(s), seed, resamples)
        out.append({"method": method, "n_pos": int(pos.sum()), "n_neg": int((~pos).sum()),
                    "auc": roc_auc(s, pos), "auc_low": low, "auc_high": high})
    return _best_auc_first(out, ["method", "n_pos", "n_neg", "auc", "auc_low", "auc_high"])


__all__ = ["CONFIDENT", "SURVIVES", "BOOTSTRAP", "VERDICTS", "TRUST_COLUMNS", "trust_row", "fills", "reliance",
           "method_rows", "context_share_by_class", "context_share_table", "bg_gap", "bg_gap_table", "method_trust",
           "method_trust_table", "cue_trust", "cue_trust_table", "resample_indices", "rank_average", "spearman",
           "roc_auc"]

"""Does the model rely on context, and which explanation methods say so? Queries over the ``counterfactuals``
table (:mod:`compute.counterfactuals`) joined with ``metrics``.

Connect with :func:`store.query.connect`; every function takes that connection, binds its values as
parameters, and returns a pandas DataFrame. Each takes one ``fill`` of the variants (a run may hold several:
:func:`fills`); left out, the only one there is. Bootstrap intervals are computed in NumPy over the SQL result,
resampling decisions (rows) with a seeded generator, so the same store gives the same intervals.

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


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _bootstrap(stat, n: int, seed: int, resamples: int) -> tuple[float, float]:
    """95 % percentile interval of ``stat(indices)`` over ``resamples`` draws of ``n`` rows with replacement."""
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    return _interval(np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], dtype=float))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    if len(x) < 2:
        return float("nan")
    from scipy.stats import rankdata  # imported when first needed: it costs a page half a second

    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``score`` for flagging ``positive`` (Mann-Whitney, ties count half); NaN without both kinds."""
    positive = positive.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def context_share_by_class(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
                           resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """Per explained class (``gt_target``; under ``clean`` the one VOC class explained): of the confident,
    correct decisions with a verdict, the count ``n``, the ``context_driven`` count and their ``share`` with a
    95 % bootstrap interval (``low``, ``high``)."""
    d = reliance(con, run_id, protocol, fill)
    d = d[d["verdict"].notna() & (d["correct"] == True)]  # noqa: E712 (NULL-aware)
    rows = []
    for cls, g in d.groupby("gt_target", sort=True):
        hits = (g["verdict"] == "context-driven").to_numpy(dtype=float)
        low, high = _bootstrap(lambda i: hits[i].mean(), len(hits), seed, resamples)
        rows.append({"gt_target": cls, "n": len(hits), "context_driven": int(hits.sum()),
                     "share": float(hits.mean()), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["gt_target", "n", "context_driven", "share", "low", "high"])


def bg_gap(con, run_id: str | None = None, protocol: str | None = None, seed: int = 0,
           resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """The BG-Gap analogue per protocol: over decisions where both variants were made and their top-1 maps to a
    VOC class, the accuracy (top-1 maps to a class of the image) on ``only_fg`` and on ``mixed_rand``, and
    ``gap = acc_only_fg - acc_mixed_rand`` with a 95 % bootstrap interval (decisions resampled in pairs)."""
    d = reliance(con, run_id, protocol, fill)
    d = d[d["only_fg_correct"].notna() & d["mixed_rand_correct"].notna()]
    rows = []
    for proto, g in d.groupby("protocol", sort=True):
        a = g["only_fg_correct"].to_numpy(dtype=float)
        b = g["mixed_rand_correct"].to_numpy(dtype=float)
        low, high = _bootstrap(lambda i: a[i].mean() - b[i].mean(), len(a), seed, resamples)
        rows.append({"protocol": proto, "n": len(a), "acc_only_fg": float(a.mean()), "acc_mixed_rand": float(b.mean()),
                     "gap": float(a.mean() - b.mean()), "low": low, "high": high})
    return pd.DataFrame(rows, columns=["protocol", "n", "acc_only_fg", "acc_mixed_rand", "gap", "low", "high"])


_METHOD_ROWS = """
SELECT d.*, mm.method, 1.0 - mm.relevance_mass AS off_mass, mm.cue_mass
FROM ({decisions}) d
JOIN metrics mm ON d.run_id = mm.run_id AND d.image_id = mm.image_id AND d.protocol = mm.protocol
               AND d.target_class IS NOT DISTINCT FROM mm.target_class
"""


def _method_rows(con, run_id, protocol, fill) -> pd.DataFrame:
    return con.execute(_METHOD_ROWS.format(decisions=_DECISIONS), _params(con, run_id, protocol, fill)).df()


def method_samples(g: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One method's rows as the trust measures take them: ``x`` mass off the object and ``y`` context reliance
    (decisions with both), ``s`` mass off the object and ``pos`` context-driven (decisions with a verdict)."""
    r = g[g["off_mass"].notna() & g["context_reliance"].notna()]
    v = g[g["off_mass"].notna() & g["verdict"].notna()]
    return (r["off_mass"].to_numpy(float), r["context_reliance"].to_numpy(float), v["off_mass"].to_numpy(float),
            (v["verdict"] == "context-driven").to_numpy())


def method_trust(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
                 resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """The method-trust leaderboard: per method, over decisions with both a map mass and a reliance score,
    ``rho`` (Spearman, mass off the object vs ``context_reliance``; ``n_rho`` decisions) and, over confident
    decisions with a verdict, ``auc`` (ROC-AUC of the mass off the object for flagging ``context-driven``
    ones; ``n_pos``/``n_neg``), each with a 95 % bootstrap interval. Best ``auc`` first."""
    d = _method_rows(con, run_id, protocol, fill)
    rows = []
    for method, g in d.groupby("method", sort=True):
        x, y, s, pos = method_samples(g)
        rows.append({"method": method, "n_rho": len(x), "rho": spearman(x, y),
                     **dict(zip(("rho_low", "rho_high"), _bootstrap(lambda i: spearman(x[i], y[i]), len(x), seed,
                                                                     resamples))),
                     "n_pos": int(pos.sum()), "n_neg": int((~pos).sum()), "auc": roc_auc(s, pos),
                     **dict(zip(("auc_low", "auc_high"), _bootstrap(lambda i: roc_auc(s[i], pos[i]), len(s), seed,
                                                                     resamples)))})
    cols = ["method", "n_rho", "rho", "rho_low", "rho_high", "n_pos", "n_neg", "auc", "auc_low", "auc_high"]
    out = pd.DataFrame(rows, columns=cols)
    return out.sort_values(["auc", "method"], ascending=[False, True], na_position="last").reset_index(drop=True)


def cue_trust(con, run_id: str | None = None, protocol: str | None = "clean", seed: int = 0,
              resamples: int = BOOTSTRAP, fill: str | None = None) -> pd.DataFrame:
    """On stores with planted cues: per method, over confident decisions whose ``no_cue`` variant was made and
    whose map has a ``cue_mass``, the ROC-AUC of the cue mass for flagging decisions whose top-1 flips when the
    cue is removed (``n_pos`` flips, ``n_neg`` not), with a 95 % bootstrap interval. Empty without cues."""
    d = _method_rows(con, run_id, protocol, fill)
    d = d[d["cue_mass"].notna() & d["no_cue_same"].notna() & (d["confidence"] >= CONFIDENT)]
    rows = []
    for method, g in d.groupby("method", sort=True):
        s, pos = g["cue_mass"].to_numpy(float), ~g["no_cue_same"].to_numpy(bool)
        low, high = _bootstrap(lambda i: roc_auc(s[i], pos[i]), len(s), seed, resamples)
        rows.append({"method": method, "n_pos": int(pos.sum()), "n_neg": int((~pos).sum()),
                     "auc": roc_auc(s, pos), "auc_low": low, "auc_high": high})
    out = pd.DataFrame(rows, columns=["method", "n_pos", "n_neg", "auc", "auc_low", "auc_high"])
    return out.sort_values(["auc", "method"], ascending=[False, True], na_position="last").reset_index(drop=True)


__all__ = ["CONFIDENT", "SURVIVES", "BOOTSTRAP", "VERDICTS", "fills", "reliance", "context_share_by_class", "bg_gap",
           "method_trust", "cue_trust", "spearman", "roc_auc"]

"""The evaluation report: the source report's Table 1 (one row per method: mean IoU, F1 and pixel accuracy
×100) with a 95 % bootstrap interval for those three, the number of images behind each row, and the other
metric families as extra columns.

How a row's numbers are made (all reads go through DuckDB, :func:`store.query.report_summary` and
:func:`store.query.report_per_image`):

- rows are grouped by run, protocol and method (the model is shown; one run = one model and set-up);
- each image first gets the mean of its rows (one row per image for a single target; one per explained VOC
  class with ``--explain present``), so every image weighs the same; a metric's value is the mean over images
  of those per-image means, NULLs skipped (e.g. ``clean`` rows whose explained class has no pixel in the
  image, or faithfulness when it was not computed);
- ``images`` counts images with a defined IoU (the ones behind the main columns); ``rows`` all rows;
- the 95 % interval is the percentile bootstrap over images: ``resamples`` draws (default 1000) of as many
  images as the row has, with replacement, from a generator seeded with ``seed`` (default 0) — rerunning gives
  the same interval;
- ``correct`` is the share of images whose top-1 maps to a VOC class present in the image, among those whose
  top-1 maps to any VOC class (see :mod:`compute.data.classmap`);
- ``--min-confidence X`` keeps images whose top-1 probability is above X (the source report used 0.85).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from store import catalogue
from store.query import REPORT_METRICS, connect, report_per_image, report_summary, store_problems

# the source report's Table 1: the three columns shown with a bootstrap interval
MAIN = ("iou", "f1", "pixel_accuracy")
EXTRA = tuple(c for c in REPORT_METRICS if c not in MAIN)
# the top-1 column is the model's, not a map's score, so it is not in the metric catalogue
CORRECT_HEADER, CORRECT_SHORT = "Top-1 correct", "Top-1 ok"
HEADERS = {**{c: catalogue.BY_NAME[c].header for c in REPORT_METRICS}, "correct": CORRECT_HEADER}
SHORT = {  # narrow headers for a terminal
    **{c: catalogue.BY_NAME[c].short for c in EXTRA}, "correct": CORRECT_SHORT,
}
KEYS = ["run_id", "model", "protocol", "method"]


@dataclass
class Report:
    """The report's table (values ×100; ``<metric>_lo``/``_hi`` the interval of the main three) and its setup."""

    table: pd.DataFrame
    protocol: str | None
    min_confidence: float | None
    run_id: str | None
    resamples: int
    seed: int
    problems: list[str] = field(default_factory=list)  # damaged parts the store's reader left out

    @property
    def columns(self) -> list[str]:
        """Metric columns that hold at least one value (all-NULL families are left out of the printout)."""
        cols = list(MAIN) + [c for c in EXTRA + ("correct",) if self.table[c].notna().any()]
        return cols

    def caption(self) -> str:
        models = sorted(self.table["model"].dropna().unique())
        parts = [", ".join(models) if len(models) == 1 else f"{len(models)} models",
                 f"protocol {self.protocol}" if self.protocol else "every protocol",
                 f"top-1 probability > {self.min_confidence}" if self.min_confidence is not None else "all images",
                 f"run {self.run_id}" if self.run_id else "every run",
                 f"95 % bootstrap over images ({self.resamples} resamples, seed {self.seed})"]
        return "; ".join(parts) + "; values ×100"

    def formatted(self, columns: list[str] | None = None, sep: str = " ", short: bool = False) -> pd.DataFrame:
        """The table as strings: ``mean [lo, hi]`` for the main three (``sep`` between mean and interval),
        ``mean`` for the rest; ``columns`` picks metric columns (default: :attr:`columns`). Model and run are
        shown only when the table holds more than one, the protocol unless one was asked for."""
        out = self.table[["method", "protocol", "model", "run_id", "images", "rows"]].copy()
        out["rows"] = out["rows"].astype("int64")
        for col in ("run_id", "model", "protocol"):
            if self.table[col].nunique() <= 1 and (col != "protocol" or self.protocol):
                out = out.drop(columns=[col])
        for c in self.columns if columns is None else columns:
            if c in MAIN:
                out[HEADERS[c]] = [_fmt_ci(m, lo, hi, sep) for m, lo, hi in
                                   zip(self.table[c], self.table[f"{c}_lo"], self.table[f"{c}_hi"])]
            else:
                out[SHORT[c] if short else HEADERS[c]] = [_fmt(v) for v in self.table[c]]
        return out.rename(columns={"method": "Method", "protocol": "Protocol", "model": "Model", "run_id": "Run",
                                   "images": "Images", "rows": "Rows"})

    def to_markdown(self) -> str:
        df = self.formatted()
        lines = [f"Table 1 — {self.caption()}", "",
                 "| " + " | ".join(df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
        lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path) -> None:
        self.table.to_csv(path, index=False, float_format="%.6g")


def _fmt(v) -> str:
    return "–" if v is None or pd.isna(v) else f"{v:.2f}"


def _fmt_ci(m, lo, hi, sep: str = " ") -> str:
    if m is None or pd.isna(m):
        return "–"
    return f"{m:.2f}{sep}[{lo:.2f}, {hi:.2f}]" if not pd.isna(lo) else f"{m:.2f}"


def bootstrap_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped); NaN when nothing is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def build_report(store: str | Path, protocol: str | None = None, min_confidence: float | None = None,
                 run_id: str | None = None, resamples: int = 1000, seed: int = 0) -> Report:
    """Read the store and compute the table (see the module doc)."""
    con = connect(store)
    problems = store_problems(con)
    summary = report_summary(con, protocol, min_confidence, run_id)
    per_image = report_per_image(con, protocol, min_confidence, run_id)
    table = summary[KEYS + ["images", "all_images", "rows"]].copy()
    for c in REPORT_METRICS + ("correct",):
        table[c] = summary[c].astype("float64") * 100.0
    groups = {k: g for k, g in per_image.groupby(KEYS, sort=False)}
    for c in MAIN:
        lo, hi = [], []
        for key in summary[KEYS].itertuples(index=False, name=None):
            g = groups.get(tuple(key))
            a, b = bootstrap_interval(g[c].to_numpy(dtype=np.float64) if g is not None else np.array([]),
                                      resamples, seed)
            lo.append(a * 100.0)
            hi.append(b * 100.0)
        table[f"{c}_lo"], table[f"{c}_hi"] = lo, hi
    order = KEYS + ["images", "all_images", "rows"] + [x for c in MAIN for x in (c, f"{c}_lo", f"{c}_hi")]
    table = table[order + [c for c in EXTRA + ("correct",)]]
    return Report(table=table.reset_index(drop=True), protocol=protocol, min_confidence=min_confidence,
                  run_id=run_id, resamples=resamples, seed=seed, problems=problems)


# ---------------------------------------------------------------------------------------------------------------
# shortcuts: does the model rely on context, and which explanation methods show it (store.shortcuts)

SHORTCUT_TABLES = ("context_share", "bg_gap", "method_trust", "cue_trust")
SHORTCUT_TITLES = {
    "context_share": "Context-driven share of confident correct decisions, per class",
    "bg_gap": "BG-Gap: top-1 accuracy on only_fg minus on mixed_rand",
    "method_trust": "Method trust: map mass off the object vs measured context reliance",
    "cue_trust": "Cue trust: cue mass flags decisions that flip when the cue is removed",
}


@dataclass
class ShortcutSection:
    """The shortcut tables of one run and fill (``protocol``: the one of the per-class and per-method tables;
    the BG-Gap has a row per protocol)."""

    run_id: str
    fill: str
    protocol: str
    tables: dict[str, pd.DataFrame]

    @property
    def title(self) -> str:
        return f"run {self.run_id}, fill {self.fill}, protocol {self.protocol}"


@dataclass
class ShortcutReport:
    """:func:`build_shortcuts`' sections, one per run × fill, and how their intervals were drawn."""

    sections: list[ShortcutSection]
    resamples: int
    seed: int
    problems: list[str] = field(default_factory=list)

    def formatted(self, section: ShortcutSection, name: str) -> pd.DataFrame:
        """One table as strings: shares and accuracies in %, ``value [low, high]``, counts as they are."""
        return _FORMATS[name](section.tables[name])

    def to_markdown(self) -> str:
        out = []
        for sec in self.sections:
            for name in SHORTCUT_TABLES:
                df = self.formatted(sec, name)
                if df.empty:
                    continue
                out += [f"{SHORTCUT_TITLES[name]} — {sec.title}; 95 % bootstrap ({self.resamples} resamples, "
                        f"seed {self.seed})", "", "| " + " | ".join(df.columns) + " |",
                        "|" + "|".join("---" for _ in df.columns) + "|"]
                out += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)] + [""]
        return "\n".join(out)

    def to_frame(self) -> pd.DataFrame:
        """Every table stacked, unrounded, with ``table``, ``run_id``, ``fill`` and ``protocol`` columns first (a
        column a table does not have is empty in its rows)."""
        frames = [t.assign(table=name, run_id=sec.run_id, fill=sec.fill, section_protocol=sec.protocol)
                  for sec in self.sections for name, t in sec.tables.items() if not t.empty]
        if not frames:
            return pd.DataFrame(columns=["table", "run_id", "fill", "section_protocol"])
        df = pd.concat(frames, ignore_index=True)
        first = ["table", "run_id", "fill", "section_protocol"]
        return df[first + [c for c in df.columns if c not in first]]

    def to_csv(self, path: str | Path) -> None:
        self.to_frame().to_csv(path, index=False, float_format="%.6g")


def _ci(v, lo, hi, scale: float = 1.0, digits: int = 2) -> str:
    if v is None or pd.isna(v):
        return "–"
    text = f"{v * scale:.{digits}f}"
    return f"{text} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]" if not pd.isna(lo) else text


_FORMATS = {
    "context_share": lambda t: pd.DataFrame({
        "Class": t["gt_target"], "Decisions": t["n"], "Context-driven": t["context_driven"],
        "Share %": [_ci(v, lo, hi, 100, 1) for v, lo, hi in zip(t["share"], t["low"], t["high"])]}),
    "bg_gap": lambda t: pd.DataFrame({
        "Protocol": t["protocol"], "Decisions": t["n"], "Acc only_fg %": [f"{v * 100:.1f}" for v in t["acc_only_fg"]],
        "Acc mixed_rand %": [f"{v * 100:.1f}" for v in t["acc_mixed_rand"]],
        "BG-Gap %": [_ci(v, lo, hi, 100, 1) for v, lo, hi in zip(t["gap"], t["low"], t["high"])]}),
    "method_trust": lambda t: pd.DataFrame({
        "Method": t["method"], "Spearman ρ": [_ci(v, lo, hi) for v, lo, hi in zip(t["rho"], t["rho_low"], t["rho_high"])],
        "n (ρ)": t["n_rho"], "ROC-AUC": [_ci(v, lo, hi) for v, lo, hi in zip(t["auc"], t["auc_low"], t["auc_high"])],
        "context-driven / other": [f"{p} / {n}" for p, n in zip(t["n_pos"], t["n_neg"])]}),
    "cue_trust": lambda t: pd.DataFrame({
        "Method": t["method"], "ROC-AUC": [_ci(v, lo, hi) for v, lo, hi in zip(t["auc"], t["auc_low"], t["auc_high"])],
        "flips / other": [f"{p} / {n}" for p, n in zip(t["n_pos"], t["n_neg"])]}),
}


def build_shortcuts(store: str | Path, protocol: str | None = None, run_id: str | None = None,
                    fill: str | None = None, resamples: int = 1000, seed: int = 0) -> ShortcutReport:
    """The shortcut tables (:mod:`store.shortcuts`) of every run with counterfactual rows (or ``run_id``'s), one
    section per fill (or ``fill``'s). ``protocol``: that of the per-class and per-method tables (default
    ``clean`` where the run has it, else ``report``) and the BG-Gap's only row (default: one row per protocol)."""
    from store import shortcuts

    con = connect(store)
    runs = [r[0] for r in con.execute("SELECT DISTINCT run_id FROM counterfactuals WHERE $run IS NULL OR "
                                      "run_id = $run ORDER BY 1", {"run": run_id}).fetchall()]
    sections = []
    for rid in runs:
        protocols = [r[0] for r in con.execute("SELECT DISTINCT protocol FROM counterfactuals WHERE run_id = ?",
                                               [rid]).fetchall()]
        chosen = protocol or ("clean" if "clean" in protocols else "report")
        for f in [fill] if fill is not None else shortcuts.fills(con, rid):
            common = dict(run_id=rid, seed=seed, resamples=resamples, fill=f)
            tables = {"context_share": shortcuts.context_share_by_class(con, protocol=chosen, **common),
                      "bg_gap": shortcuts.bg_gap(con, protocol=protocol, **common),
                      "method_trust": shortcuts.method_trust(con, protocol=chosen, **common),
                      "cue_trust": shortcuts.cue_trust(con, protocol=chosen, **common)}
            sections.append(ShortcutSection(rid, f, chosen, tables))
    return ShortcutReport(sections, resamples, seed, store_problems(con))


__all__ = ["Report", "build_report", "bootstrap_interval", "MAIN", "EXTRA", "HEADERS", "ShortcutReport",
           "ShortcutSection", "build_shortcuts", "SHORTCUT_TABLES", "SHORTCUT_TITLES"]

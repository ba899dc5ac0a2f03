"""Labels, meanings and failure rankings of the metric columns, as the dashboard shows them.

Columns are discovered from the store (``store.query.metric_columns``); what each one is called, means and
which way is better comes from the metric catalogue (:mod:`store.catalogue`). A column the catalogue does not
know is still shown, under its own name.
"""

from __future__ import annotations

from store.catalogue import CATALOGUE, get, label, meaning  # noqa: F401 (re-export: the pages' vocabulary)

#: families whose scores say how a map sits on the object (or on what it should avoid)
_LOCATING = ("localisation", "threshold_free", "cue")

#: columns that say how well a map agrees with the object (higher is better): the candidates for a
#: failure-case score ``confidence × (1 − column)``, in catalogue order.
AGREEMENT = tuple(m.name for m in CATALOGUE if m.family in _LOCATING and m.higher_is_better is True)

#: columns that measure the map on what it should avoid (lower is better): ranked by ``confidence × column``.
MISPLACEMENT = tuple(m.name for m in CATALOGUE if m.family in _LOCATING and m.higher_is_better is False)


def short_label(column: str) -> str:
    """The narrow label of a column (a small grid cell)."""
    m = get(column)
    return m.short if m is not None else label(column)


def agreement_columns(columns: list[str]) -> list[str]:
    """The columns of ``columns`` usable as an agreement score, in :data:`AGREEMENT` order."""
    return [c for c in AGREEMENT if c in columns]


def failure_score_columns(columns: list[str]) -> list[str]:
    """Agreement columns (score = confidence × (1 − column)), then misplacement ones (confidence × column)."""
    return agreement_columns(columns) + [c for c in MISPLACEMENT if c in columns]


def failure_formula(column: str) -> str:
    return f"confidence × {label(column)}" if column in MISPLACEMENT else f"confidence × (1 − {label(column)})"

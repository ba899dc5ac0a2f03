"""Names, meanings and directions of the metric columns the dashboard knows about.

Columns are discovered from the store (``store.query.metric_columns``); this table only adds a readable label
and a one-line meaning. A column missing here is still shown, under its own name.
"""

from __future__ import annotations

# column -> (label, meaning, higher is better?)
INFO: dict[str, tuple[str, str, bool | None]] = {
    "iou": ("IoU", "Jaccard index of the Otsu mask of the map and the object mask", True),
    "f1": ("F1", "Dice coefficient of the Otsu mask and the object mask", True),
    "pixel_accuracy": ("Pixel accuracy", "share of scored pixels the Otsu mask labels correctly", True),
    "precision": ("Precision", "share of the Otsu mask that lies on the object", True),
    "recall": ("Recall", "share of the object the Otsu mask covers", True),
    "pred_area": ("Map area", "share of scored pixels the Otsu mask marks", None),
    "gt_area": ("Object area", "share of scored pixels that are object", None),
    "threshold": ("Otsu threshold", "Otsu's threshold on the min-max normalised map", None),
    "relevance_mass": ("Relevance mass", "share of the map's (non-negative) mass inside the object mask", True),
    "relevance_rank": ("Relevance rank", "share of the top-|mask| pixels of the map inside the mask", True),
    "pointing_game": ("Pointing game", "1 if the map's maximum lies on the object", True),
    "roc_auc": ("ROC-AUC", "map values as a score for object vs background", True),
    "deletion_auc": ("Deletion AUC", "class score while deleting the most relevant pixels first (lower: "
                     "more faithful)", False),
    "insertion_auc": ("Insertion AUC", "class score while inserting the most relevant pixels first", True),
    "cue_mass": ("Cue mass", "share of the map's mass on the planted cue", False),
    "object_mass": ("Object mass", "share of the map's mass on the object", True),
    "cue_iou": ("Cue IoU", "IoU of the Otsu mask with the planted cue", False),
    "object_iou": ("Object IoU", "IoU of the Otsu mask with the object", True),
    "cue_area": ("Cue area", "share of pixels the cue covers", None),
}

#: columns that say how well a map agrees with the object (higher is better, in [0, 1]): the candidates for a
#: failure-case score ``confidence × (1 − column)``; IoU first (the report's measure), then relevance mass.
AGREEMENT = ("iou", "relevance_mass", "f1", "relevance_rank", "pointing_game", "roc_auc", "object_mass",
             "object_iou", "recall", "precision", "pixel_accuracy")


#: columns that measure the map on what it should avoid (higher is worse): ranked by ``confidence × column``.
MISPLACEMENT = ("cue_mass", "cue_iou")


def label(column: str) -> str:
    return INFO.get(column, (column.replace("_", " "), "", None))[0]


def meaning(column: str) -> str:
    info = INFO.get(column)
    if info is None:
        return column
    direction = {True: " (higher is better)", False: " (lower is better)", None: ""}[info[2]]
    return f"{info[1]}{direction}"


def agreement_columns(columns: list[str]) -> list[str]:
    """The columns of ``columns`` usable as an agreement score, in :data:`AGREEMENT` order."""
    return [c for c in AGREEMENT if c in columns]


def failure_score_columns(columns: list[str]) -> list[str]:
    """Agreement columns (score = confidence × (1 − column)), then misplacement ones (confidence × column)."""
    return agreement_columns(columns) + [c for c in MISPLACEMENT if c in columns]


def failure_formula(column: str) -> str:
    return f"confidence × {label(column)}" if column in MISPLACEMENT else f"confidence × (1 − {label(column)})"

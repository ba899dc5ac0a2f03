"""The metric catalogue: every score column of the ``metrics`` table, described once.

Each :class:`Metric` names a column of ``store.schema.METRICS`` and says what the column means, which family
computes it, how to label it (dashboard, report, narrow terminal), which way is better, and whether the
evaluation report shows it. Every list of metric names elsewhere (the report's columns, the dashboard's labels,
its "worst first" orderings and failure rankings) is derived from :data:`CATALOGUE`, so adding a metric is one
entry here plus the code that computes it; a test checks that the schema and the catalogue name the same
columns.

Nothing here imports beyond the standard library: the dashboard and the report read it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

#: metric families, in the order the report and the dashboard present them
FAMILIES = ("localisation", "threshold_free", "faithfulness", "cue")

#: numeric ``metrics`` columns that describe a row (what was explained, how sure the model was, what it cost)
#: rather than score its map; every other numeric column is a metric and has an entry below.
CONTEXT_COLUMNS = ("target_class", "target_value", "pred_class", "confidence", "seconds")


@dataclass(frozen=True)
class Metric:
    """One score column.

    ``higher_is_better`` is True or False for a score with a better direction, None for a descriptive column
    (an area, a threshold) whose value is neither good nor bad; orderings treat None as "higher is better",
    the plain ascending reading. ``header`` is the evaluation report's column header (defaults to ``label``);
    ``short`` the header of a narrow table (a terminal, a small dashboard cell; defaults to ``header``)."""

    name: str
    family: str
    label: str
    meaning: str
    higher_is_better: bool | None
    in_report: bool = False
    header: str = ""
    short: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: unknown family {self.family!r}; choose from {', '.join(FAMILIES)}")
        if not self.header:
            object.__setattr__(self, "header", self.label)
        if not self.short:
            object.__setattr__(self, "short", self.header)

    @property
    def lower_is_better(self) -> bool:
        return self.higher_is_better is False


#: every metric column, in the schema's column order
CATALOGUE: tuple[Metric, ...] = (
    # localisation: the map, min-max normalised and Otsu-thresholded, against the protocol's object mask
    Metric("iou", "localisation", "IoU", "Jaccard index of the Otsu mask of the map and the object mask", True,
       in_report=True),
    Metric("f1", "localisation", "F1", "Dice coefficient of the Otsu mask and the object mask", True, in_report=True),
    Metric("pixel_accuracy", "localisation", "Pixel accuracy", "share of scored pixels the Otsu mask labels correctly",
       True, in_report=True, header="Pixel acc."),
    Metric("precision", "localisation", "Precision", "share of the Otsu mask that lies on the object", True,
       in_report=True, short="Prec."),
    Metric("recall", "localisation", "Recall", "share of the object the Otsu mask covers", True, in_report=True),
    Metric("pred_area", "localisation", "Map area", "share of scored pixels the Otsu mask marks", None),
    Metric("gt_area", "localisation", "Object area", "share of scored pixels that are object", None),
    Metric("threshold", "localisation", "Otsu threshold", "Otsu's threshold on the min-max normalised map", None),
    # threshold-free: the raw map's values against the object mask
    Metric("relevance_mass", "threshold_free", "Relevance mass",
       "share of the map's (non-negative) mass inside the object mask", True, in_report=True, header="Rel. mass",
       short="Mass"),
    Metric("relevance_rank", "threshold_free", "Relevance rank",
       "share of the top-|mask| pixels of the map inside the mask", True, in_report=True, header="Rel. rank",
       short="Rank"),
    Metric("pointing_game", "threshold_free", "Pointing game", "1 if the map's maximum lies on the object", True,
       in_report=True, header="Pointing", short="Point"),
    Metric("roc_auc", "threshold_free", "ROC-AUC", "map values as a score for object vs background", True,
       in_report=True, short="AUC"),
    # faithfulness: the model's score while pixels are deleted / inserted in the map's order
    Metric("deletion_auc", "faithfulness", "Deletion AUC",
       "class score while deleting the most relevant pixels first (lower: more faithful)", False, in_report=True,
       header="Deletion AUC ↓", short="Del.↓"),
    Metric("insertion_auc", "faithfulness", "Insertion AUC",
       "class score while inserting the most relevant pixels first", True, in_report=True,
       header="Insertion AUC ↑", short="Ins.↑"),
    # planted cue: does the map point at the object or at a spurious mark beside it
    Metric("cue_mass", "cue", "Cue mass", "share of the map's mass on the planted cue", False),
    Metric("object_mass", "cue", "Object mass", "share of the map's mass on the object", True),
    Metric("cue_iou", "cue", "Cue IoU", "IoU of the Otsu mask with the planted cue", False),
    Metric("object_iou", "cue", "Object IoU", "IoU of the Otsu mask with the object", True),
    Metric("cue_area", "cue", "Cue area", "share of pixels the cue covers", None),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}
if len(BY_NAME) != len(CATALOGUE):
    raise ValueError("a metric is listed twice in store/catalogue.py")

#: the evaluation report's metric columns, in catalogue order
REPORT_METRICS: tuple[str, ...] = tuple(m.name for m in CATALOGUE if m.in_report)


def names(family: str | None = None, in_report: bool | None = None) -> tuple[str, ...]:
    """Metric names in catalogue order, optionally of one ``family`` and/or with the given ``in_report``."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return tuple(m.name for m in CATALOGUE if (family is None or m.family == family)
                 and (in_report is None or m.in_report == in_report))


def get(name: str) -> Metric | None:
    """The entry of ``name``; None for a column the catalogue does not know (a newer store's, say)."""
    return BY_NAME.get(name)


def label(name: str) -> str:
    """Readable name of a column; an unknown column reads as its name with spaces."""
    m = BY_NAME.get(name)
    return m.label if m is not None else name.replace("_", " ")


def higher_is_better(name: str) -> bool | None:
    """The column's direction (None: descriptive, or not in the catalogue)."""
    m = BY_NAME.get(name)
    return m.higher_is_better if m is not None else None


def lower_is_better(name: str) -> bool:
    """True only for a column known to be better when low (deletion AUC, cue mass, ...): orderings that put
    the best or the worst first reverse for it."""
    return higher_is_better(name) is False


def meaning(name: str) -> str:
    """One sentence on what the column measures, with its direction; an unknown column reads as its name."""
    m = BY_NAME.get(name)
    if m is None:
        return name
    direction = {True: " (higher is better)", False: " (lower is better)", None: ""}[m.higher_is_better]
    return f"{m.meaning}{direction}"


__all__ = ["CATALOGUE", "BY_NAME", "CONTEXT_COLUMNS", "FAMILIES", "Metric", "REPORT_METRICS", "get",
           "higher_is_better", "label", "lower_is_better", "meaning", "names"]

"""Tables, columns and dtypes of the results store — the one definition the writer and every reader use.

Layout under the store folder::

    runs/<run_id>.json                         config, versions, timings, counts of one run
    <table>/run_id=<run_id>/part-<key>.parquet  hive-partitioned part files of each table below
    commits/run_id=<run_id>/<key>.json          a batch's commit record: its parts, row counts, sizes, SHA-256

A batch writes its rows as one part per table with the same ``<key>``, then its commit record, which is the
commit marker: only parts a record lists count, and each is checked against it (:mod:`store.commits`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from store import catalogue

SCHEMA_VERSION = 1

# values of metrics.protocol (defined in compute.metrics.localisation, which imports them from here)
PROTOCOLS = ("report", "clean")


def check_min_confidence(value: float | None) -> None:
    """A threshold on metrics.confidence (the top-1 probability; ``--min-confidence`` at compute or report
    time) is None or in [0, 1)."""
    if value is not None and not 0.0 <= value < 1.0:
        raise ValueError(f"--min-confidence {value} must lie in [0, 1)")

METRICS = pa.schema([
    ("run_id", pa.string()),
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("model", pa.string()),
    ("method", pa.string()),
    ("protocol", pa.string()),
    ("target_kind", pa.string()),        # "logit" (a class of the head), "cls_norm", "cosine", "voc_lse", ...
    ("target_class", pa.int32()),        # head class explained (for "voc_lse": the VOC class, 1..20); NULL if none
    ("target_label", pa.string()),
    ("target_value", pa.float32()),      # the explained scalar (the logit, the norm, ...)
    ("pred_class", pa.int32()),          # top-1 of the head; NULL for a headless model
    ("pred_label", pa.string()),
    ("confidence", pa.float32()),        # softmax probability of pred_class; NULL for a headless model
    ("gt_classes", pa.string()),         # VOC classes present, comma-separated names
    ("image_group", pa.string()),        # a data source's own grouping (e.g. aligned / conflict / no_cue)
    ("correct", pa.bool_()),             # top-1 maps to a VOC class present in the image; NULL if unmappable
    ("gt_target", pa.string()),          # VOC class(es) whose pixels were the object mask for this row; NULL
                                         # when clean had none to use (explained class absent / not a VOC class)
    ("iou", pa.float32()),
    ("f1", pa.float32()),
    ("pixel_accuracy", pa.float32()),
    ("precision", pa.float32()),
    ("recall", pa.float32()),
    ("pred_area", pa.float32()),         # share of scored pixels the thresholded map marks
    ("gt_area", pa.float32()),           # share of scored pixels that are ground-truth object
    ("threshold", pa.float32()),         # Otsu threshold on the min-max normalised map; NULL if constant
    # threshold-free localisation
    ("relevance_mass", pa.float32()),    # share of the map's (non-negative) mass inside the object mask
    ("relevance_rank", pa.float32()),    # share of the top-|mask| pixels of the map that lie inside the mask
    ("pointing_game", pa.float32()),     # 1 if the map's maximum lies inside the mask, else 0
    ("roc_auc", pa.float32()),           # ROC-AUC of map values as a score for object vs background
    # faithfulness (optional, costs extra forward passes)
    ("deletion_auc", pa.float32()),
    ("insertion_auc", pa.float32()),
    # planted-cue diagnostics (images that carry a cue mask)
    ("cue_mass", pa.float32()),          # share of the map's mass on the cue mask
    ("object_mass", pa.float32()),       # share of the map's mass on the object mask
    ("cue_iou", pa.float32()),           # IoU of the Otsu-thresholded map with the cue mask
    ("object_iou", pa.float32()),
    ("cue_area", pa.float32()),          # share of pixels the cue covers
    ("seconds", pa.float32()),           # this method's share of the batch's compute time, per image
])

HEATMAPS = pa.schema([
    ("run_id", pa.string()),
    ("image_id", pa.string()),
    ("method", pa.string()),
    ("target_kind", pa.string()),
    ("target_class", pa.int32()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("data", pa.binary()),               # float32 scale + map/scale as float16, little-endian, row-major
])

IMAGES = pa.schema([
    ("run_id", pa.string()),
    ("image_id", pa.string()),
    ("split", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("gt_classes", pa.list_(pa.string())),
    ("top_classes", pa.list_(pa.int32())),   # top-5 of the head (empty for a headless model)
    ("top_labels", pa.list_(pa.string())),
    ("top_probs", pa.list_(pa.float32())),
    ("thumbnail", pa.binary()),              # JPEG, longer side <= THUMBNAIL_SIZE
    ("mask_png", pa.binary()),               # class-index mask, full size, PNG
    ("cue_png", pa.binary()),                # optional second mask (planted cue), full size, PNG; NULL if none
    ("meta", pa.string()),                   # JSON object of source-specific facts (e.g. cue class, group)
])

SKIPS = pa.schema([
    ("run_id", pa.string()),
    ("image_id", pa.string()),
    ("stage", pa.string()),                  # "load", "model", "method:<name>", ...
    ("reason", pa.string()),
])

# Counterfactual inputs per explained target (compute.counterfactuals): what the model does when the object, its
# context or a planted cue is replaced. Committed like heatmaps/images (beside the batch's metrics part); one row
# per (image_id, target_class, protocol, variant, fill): a rerun with another fill adds its rows to the
# same run; a variant that could not be made has ``reason`` set and every
# result column NULL. store.shortcuts reads it.
COUNTERFACTUAL_VARIANTS = ("only_fg", "no_fg", "mixed_rand", "no_cue")
COUNTERFACTUALS = pa.schema([
    ("run_id", pa.string()),
    ("image_id", pa.string()),
    ("target_kind", pa.string()),        # as metrics.target_kind
    ("target_class", pa.int32()),        # as metrics.target_class (the join key with metrics)
    ("protocol", pa.string()),           # whose object region: clean = the explained class, report = all objects
    ("variant", pa.string()),            # one of COUNTERFACTUAL_VARIANTS
    ("fill", pa.string()),               # what replaced the removed pixels: blur, mean or gray
    ("gt_target", pa.string()),          # VOC class(es) of the object region, as metrics.gt_target
    ("region_area", pa.float32()),       # share of input pixels in the object region
    ("score_kind", pa.string()),         # "probability" (of the explained class) or "value" (headless target)
    ("orig_score", pa.float32()),        # the score on the unchanged image
    ("orig_pred_class", pa.int32()),     # top-1 on the unchanged image; NULL for a headless model
    ("score", pa.float32()),             # the score on the variant; NULL when not made
    ("pred_class", pa.int32()),          # top-1 on the variant; NULL when not made or headless
    ("pred_label", pa.string()),
    ("pred_voc", pa.string()),           # VOC class the variant's top-1 maps to; NULL if none / no class map
    ("same_top1", pa.bool_()),           # top-1 unchanged by the variant
    ("partner_id", pa.string()),         # mixed_rand: the image whose background was used
    ("partner_classes", pa.string()),    # mixed_rand: that image's VOC classes, comma-separated names
    ("reason", pa.string()),             # why the variant was not made; NULL when it was
])

TABLES: dict[str, pa.Schema] = {"metrics": METRICS, "heatmaps": HEATMAPS, "images": IMAGES, "skips": SKIPS,
                                "counterfactuals": COUNTERFACTUALS}
COMMIT_TABLE = "metrics"
# tables whose parts count as soon as they exist; a part of any other table counts only beside a metrics part
# of the same name (its batch's commit marker)
STANDALONE_TABLES = (COMMIT_TABLE, "skips")
THUMBNAIL_SIZE = 320
#: the localisation columns of the report (the summary table's; see store/catalogue.py for every metric)
METRIC_COLUMNS = catalogue.names("localisation", in_report=True)
# A finished unit of work; a rerun skips rows whose key is already committed for the same run.
RESUME_KEY = ("image_id", "method", "target_class", "protocol")


def empty_table(name: str) -> pa.Table:
    return TABLES[name].empty_table()


def to_table(name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) -> Arrow table with exactly the table's schema; unknown keys are an error."""
    schema = TABLES[name]
    extra = set().union(*(r.keys() for r in rows)) - set(schema.names) if rows else set()
    if extra:
        raise KeyError(f"columns {sorted(extra)} are not in the {name!r} schema (store/schema.py)")
    return pa.Table.from_pydict({f.name: [r.get(f.name) for r in rows] for f in schema}, schema=schema)


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """A 2-D map -> the ``heatmaps.data`` bytes: a float32 scale, then the map divided by it as float16.

    Scaling by the largest magnitude first keeps float16's ~3 significant digits for every map, however small
    its raw values (e.g. input gradients of a weak model would otherwise fall below float16's normal range).
    """
    return encode_heatmaps(np.asarray(heatmap)[None])[0]


def encode_heatmaps(heatmaps: np.ndarray) -> list[bytes]:
    """:func:`encode_heatmap` of each map of ``heatmaps`` (``[n, h, w]``), computed together."""
    m = np.asarray(heatmaps, dtype=np.float32)
    n = m.shape[0]
    flat = m.reshape(n, -1)
    peak = np.abs(flat).max(axis=1) if flat.shape[1] else np.zeros(n, np.float32)
    scale = np.where(np.isfinite(peak) & (peak > 0), peak, np.float32(1.0)).astype(np.float32)
    halves = np.ascontiguousarray(flat / scale[:, None], dtype="<f2")
    heads = scale.astype("<f4")
    return [heads[i].tobytes() + halves[i].tobytes() for i in range(n)]


def decode_heatmap(data: bytes, height: int, width: int) -> np.ndarray:
    """``heatmaps.data`` bytes -> float32 array ``[height, width]`` (also reads unscaled float16 payloads)."""
    n = int(height) * int(width)
    if len(data) == 4 + 2 * n:
        scale = float(np.frombuffer(data[:4], dtype="<f4")[0])
        data = data[4:]
    else:
        scale = 1.0
    return np.frombuffer(data, dtype="<f2").reshape(int(height), int(width)).astype(np.float32) * np.float32(scale)

"""Helpers shared by the pages."""

from __future__ import annotations

import pandas as pd

from dashboard import common


def test_selected_image_ids_from_a_plotly_selection():
    event = {"selection": {"points": [{"customdata": ["img_2", "cat", "dog"]}, {"customdata": ["img_1"]},
                                      {"customdata": ["img_2", "x", "y"]}, {"x": 0.3}], "box": []}}
    assert common.selected_image_ids(event) == ["img_2", "img_1"]
    assert common.selected_image_ids({"selection": {"points": []}}) == []
    assert common.selected_image_ids(None) == []


def test_primary_rows_prefer_the_top1_target():
    rows = pd.DataFrame({"image_id": ["a", "a", "b"], "method": ["m", "m", "m"], "target_class": [3, 7, 1],
                         "pred_class": [7, 7, 1], "iou": [0.1, 0.9, 0.5]})
    out = common.primary_rows(rows).set_index("image_id")
    assert out.loc["a", "target_class"] == 7 and out.loc["b", "target_class"] == 1


def test_caption_and_formatting():
    assert common.caption_for({"iou": 0.256, "f1": None}, ["iou", "f1", "recall"]) == "IoU 0.26 · F1 –"
    assert common.fmt(float("nan")) == "–" and common.fmt(0.12345, 2) == "0.12"
    assert common.as_list(None) == [] and common.as_list(("a", "b")) == ["a", "b"]


def test_failure_score_choices():
    from dashboard.metrics_info import failure_formula, failure_score_columns

    assert failure_score_columns(["f1", "cue_mass", "iou", "threshold"]) == ["iou", "f1", "cue_mass"]
    assert failure_formula("iou") == "confidence × (1 − IoU)"
    assert failure_formula("cue_mass") == "confidence × Cue mass"

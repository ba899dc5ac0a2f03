"""The SVG bar chart with intervals (dashboard.charts): geometry follows the values, labels are text."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from dashboard.charts import LABEL_CHARS, interval_bars

NS = "{http://www.w3.org/2000/svg}"


def _bars(svg: str):
    root = ET.fromstring(svg)
    groups = root.findall(f"{NS}g")
    return root, groups


def _rect(g):
    r = g.find(f"{NS}rect")
    return float(r.get("y")), float(r.get("height"))


def test_bar_heights_follow_the_values_and_whiskers_the_intervals():
    svg = interval_bars(["a", "b", "c"], [0.25, 1.0, 0.5], [0.1, 0.8, math.nan], [0.4, 1.0, math.nan],
                        ["ta", "tb", "tc"], "share", width=400, height=200)
    root, groups = _bars(svg)
    assert root.get("viewBox") == "0 0 400 200"
    assert [g.find(f"{NS}title").text for g in groups] == ["ta", "tb", "tc"]
    (ya, ha), (yb, hb), (yc, hc) = (_rect(g) for g in groups)
    assert ha > 0 and hb == pytest.approx(4 * ha, abs=0.2) and hc == pytest.approx(2 * ha, abs=0.2)
    assert ya + ha == pytest.approx(yb + hb) == pytest.approx(yc + hc)      # one baseline
    _, lo_y, hi_y = (float(v) for v in re.findall(r"[-\d.]+", groups[0].find(f"{NS}path").get("d"))[:3])
    top_of_plot, plot_h = yb, hb                                             # the full bar spans the plot
    assert lo_y == pytest.approx(top_of_plot + plot_h * 0.9, abs=0.1)
    assert hi_y == pytest.approx(top_of_plot + plot_h * 0.6, abs=0.1)
    assert groups[2].find(f"{NS}path") is None                               # unknown interval: no whisker


def test_labels_and_tooltips_are_text_not_markup_and_long_labels_are_cut():
    evil = '<script>&"'
    long = "x" * (LABEL_CHARS + 10)
    svg = interval_bars([evil, long], [0.5, 0.5], [0.4, 0.4], [0.6, 0.6], [evil, long], "a < b")
    root, groups = _bars(svg)          # well-formed XML: nothing was injected
    assert "<script>" not in svg and root.find(f".//{NS}script") is None
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert evil in texts and "a < b" in texts
    assert long not in texts and long[:LABEL_CHARS - 1] + "…" in texts
    assert groups[1].find(f"{NS}title").text == long                        # the tooltip keeps the whole name


def test_values_outside_the_axis_are_drawn_at_its_edges():
    root, groups = _bars(interval_bars(["lo", "hi", "nan"], [-0.5, 3.0, math.nan], [0, 0, 0], [1, 1, 1],
                                       ["", "", ""], "y"))
    heights = [_rect(g)[1] for g in groups]
    assert heights[0] == 0 and heights[2] == 0 and heights[1] > 0


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="same length"):
        interval_bars(["a", "b"], [0.1], [0.0], [0.2], ["t"], "y")

"""Small charts drawn as SVG by the dashboard itself.

A page whose only chart is a handful of bars need not make a new browser tab load a chart library: plotly's
bundle alone costs a fresh tab about half a second of parsing on a small machine, more than the rest of such a
page. These charts are inline SVG (``st.html``) with a tooltip per mark (SVG ``<title>``), sized by their
``viewBox`` to the column they are put in.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

#: the bars' colour (plotly's first default colour, as the other pages' charts) and the whiskers' colour
BAR = "#636efa"
WHISKER = "#31333f"
TEXT = "#31333f"
GRID = "#e6e6ea"
#: longest axis label drawn whole (longer ones are cut, their tooltip keeps the whole name)
LABEL_CHARS = 18


def _num(x: float) -> str:
    return f"{x:.1f}"


def interval_bars(labels: Sequence[str], values: Sequence[float], low: Sequence[float], high: Sequence[float],
                  tooltips: Sequence[str], y_title: str, width: int = 600, height: int = 300,
                  y_max: float = 1.0) -> str:
    """An SVG bar chart of ``values`` (one bar per label, ``0 .. y_max``) with a whisker from ``low`` to
    ``high`` on each bar, y-axis ticks at quarters, ``y_title`` beside the axis and one tooltip per bar.
    Values outside ``0 .. y_max`` are drawn at the nearest edge; labels and tooltips are escaped."""
    n = len(labels)
    if not (len(values) == len(low) == len(high) == len(tooltips) == n):
        raise ValueError("labels, values, low, high and tooltips must have the same length")
    longest = max((len(str(s)) for s in labels), default=0)
    slanted = n > 6 or longest * 7 > (width - 60) / max(n, 1)
    left, right, top = 56, 10, 10
    bottom = 20 + (min(longest, LABEL_CHARS) * 5 if slanted else 4)
    plot_w, plot_h = width - left - right, height - top - bottom

    def y(v: float) -> float:
        v = 0.0 if v != v else min(max(float(v), 0.0), y_max)   # NaN draws as 0
        return top + plot_h * (1 - v / y_max)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
             f'font-size="12" fill="{TEXT}">']
    for k in range(5):
        v = y_max * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{_num(y(v))}" y2="{_num(y(v))}" '
                     f'stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{_num(y(v) + 4)}" text-anchor="end">{v:g}</text>')
    parts.append(f'<text transform="translate(14 {_num(top + plot_h / 2)}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_title)}</text>')
    step = plot_w / max(n, 1)
    bar_w = step * 0.7
    for i in range(n):
        x0 = left + step * i + (step - bar_w) / 2
        mid = x0 + bar_w / 2
        top_y, base = y(values[i]), y(0.0)
        parts.append(f'<g><title>{escape(str(tooltips[i]))}</title>'
                     f'<rect x="{_num(x0)}" y="{_num(top_y)}" width="{_num(bar_w)}" '
                     f'height="{_num(base - top_y)}" fill="{BAR}"/>')
        if low[i] == low[i] and high[i] == high[i]:   # both known (not NaN)
            lo_y, hi_y = y(low[i]), y(high[i])
            cap = min(8.0, bar_w / 3)
            parts.append(f'<path d="M{_num(mid)} {_num(lo_y)}V{_num(hi_y)}M{_num(mid - cap)} {_num(hi_y)}'
                         f'h{_num(2 * cap)}M{_num(mid - cap)} {_num(lo_y)}h{_num(2 * cap)}" '
                         f'stroke="{WHISKER}" stroke-width="1.5" fill="none"/>')
        parts.append('</g>')
        text = str(labels[i])
        label = escape(text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…")
        ly = top + plot_h + 14
        if slanted:
            parts.append(f'<text transform="translate({_num(mid)} {_num(ly)}) rotate(-40)" '
                         f'text-anchor="end">{label}</text>')
        else:
            parts.append(f'<text x="{_num(mid)}" y="{_num(ly)}" text-anchor="middle">{label}</text>')
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{_num(y(0.0))}" y2="{_num(y(0.0))}" '
                 f'stroke="{TEXT}"/></svg>')
    return "".join(parts)


__all__ = ["interval_bars"]

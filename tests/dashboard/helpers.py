"""Small helpers to read an AppTest run of the dashboard."""

from __future__ import annotations

import json


def run(at):
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def goto(at, page: str):
    """Switch to ``views/<page>.py`` and run."""
    at.switch_page(f"views/{page}.py")
    return run(at)


# a column that only this table of the dashboard has (read-only tables carry no key in AppTest)
MARKERS = {"leaderboard_table": "ms_per_image", "failure_table": "score", "top5": "probability",
           "metrics_table": "gt_target", "skips_table": "reason"}


def _find(at, key: str):
    return [d for d in at.dataframe if d.key == key or MARKERS.get(key) in d.value.columns]


def table(at, key: str):
    """The DataFrame shown by the dashboard's table ``key``."""
    found = _find(at, key)
    assert found, f"no table {key!r}; tables have columns {[list(d.value.columns) for d in at.dataframe]}"
    return found[0].value


def has_table(at, key: str) -> bool:
    return bool(_find(at, key))


def charts(at) -> list[dict]:
    """The plotly figures on the page (as dicts)."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def texts(at) -> str:
    """Every markdown / caption / info / code text on the page, joined."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
    parts += [c.value for c in at.code] + [t.value for t in at.title] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def images(at) -> list[str]:
    """URLs of every picture in the main area."""
    return [u for im in at.main.image for u in im.value]


def values(arr) -> list:
    """A plotly data array as a list (plotly sends numeric arrays as base64 typed arrays)."""
    if isinstance(arr, dict) and "bdata" in arr:
        import base64

        import numpy as np

        out = np.frombuffer(base64.b64decode(arr["bdata"]), dtype=arr["dtype"])
        return out.reshape(arr["shape"]).tolist() if "shape" in arr and isinstance(arr["shape"], list) else out.tolist()
    return list(arr)

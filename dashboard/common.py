"""What every page shares: its entry (:func:`page_view`), the pages' registry, opening an image, messages."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from dashboard import urlstate as us

HERE = Path(__file__).resolve().parent
APP = HERE / "app.py"
_VIEW = "_vl_view"

# (file under views/, title, url path, icon); the first is the default page.
PAGES = (
    ("views/leaderboard.py", "Leaderboard", "leaderboard", ":material/leaderboard:"),
    ("views/distributions.py", "Distributions", "distributions", ":material/bar_chart:"),
    ("views/failures.py", "Failure cases", "failures", ":material/report:"),
    ("views/grid.py", "Heatmap grid", "grid", ":material/grid_view:"),
    ("views/image.py", "Image detail", "image", ":material/image_search:"),
    ("views/shortcuts.py", "Shortcuts", "shortcuts", ":material/alt_route:"),
    ("views/compare.py", "Compare runs", "compare", ":material/compare:"),
)
IMAGE_PAGE = "views/image.py"
GRID_PAGE = "views/grid.py"
#: the URL parameter that holds a selection of image ids (a sidebar filter once set)
SELECTION = "sel"


def set_view(view, problem: str | None = None) -> None:
    st.session_state[_VIEW] = (view, problem)


def page_view():
    """The :class:`dashboard.filters.View` the app built for this run (pages run inside ``app.py``). When the
    store is missing or empty, shows how to fill it instead, and stops the page."""
    view, problem = st.session_state.get(_VIEW, (None, None))
    if problem is not None or view is None:
        missing_store(problem or "This page is part of the vitlens dashboard: start it with "
                      "`vitlens dashboard --store DIR`.")
        st.stop()
    return view


def missing_store(problem: str) -> None:
    """The page a missing or empty store gets: what is wrong and the command that fills it."""
    from dashboard.data import store_path
    from store.query import FILL_HINT

    store = store_path()
    st.title("No results to show yet")
    st.markdown(problem)
    st.markdown("Fill it by running the batch job into this folder:")
    st.code(f"vitlens compute --voc-root <VOC folder> --out {store}", language="bash")
    st.markdown("Without a GPU or the full VOC download, a small offline run works too:")
    st.code(f"vitlens compute --voc-root <VOC folder> --random-init --model vit_tiny_patch16_224 "
            f"--limit 20 --out {store}", language="bash")
    st.caption(f"The store: {FILL_HINT}. Then reload this page.")


def open_image(image_id: str) -> None:
    """Go to the image detail page showing ``image_id`` (keeping the filters in the URL)."""
    us.remember("image", str(image_id))
    st.switch_page(IMAGE_PAGE, query_params={**us.url_params(shared_only=True), "image": str(image_id)})


def show_in_grid(image_ids) -> None:
    """Make ``image_ids`` the selection (a filter every page applies, kept in the URL) and go to the grid."""
    ids = [str(i) for i in dict.fromkeys(image_ids)]
    us.remember(SELECTION, ids)
    us.remember("page", 1)
    st.switch_page(GRID_PAGE, query_params={**us.url_params(shared_only=True), SELECTION: ids})


def ids_csv(image_ids) -> bytes:
    """Image ids as a one-column CSV file (header ``image_id``)."""
    return ("image_id\n" + "".join(f"{i}\n" for i in image_ids)).encode()


def selection_actions(image_ids, key: str, what: str = "selected images") -> None:
    """Where a selection leads: the grid (showing only these images) and a CSV of their ids."""
    ids = list(dict.fromkeys(str(i) for i in image_ids))
    if not ids:
        return
    c1, c2, _ = st.columns([2, 2, 4])
    if c1.button(f"Show {len(ids)} {what} in the grid", key=f"{key}_to_grid", icon=":material/grid_view:"):
        show_in_grid(ids)
    c2.download_button(f"Export {len(ids)} image ids (CSV)", ids_csv(ids), file_name="vitlens-images.csv",
                       mime="text/csv", key=f"{key}_csv", icon=":material/download:")


def cell_image(view, batch: tuple, image_id: str, row: dict, method: str | None, style: tuple,
               methods: tuple | None = None) -> bytes:
    """The JPEG of one picture cell: ``image_id`` with the map of ``method`` explaining ``row``'s target (no
    map when ``method`` is None), under the view's protocol; ``batch`` the ids fetched together."""
    from dashboard import data

    tc = nan_to_none(row.get("target_class"))
    return data.overlay(view.store, view.fp, view.run_id, batch, image_id, method,
                        nan_to_none(row.get("target_kind")), None if tc is None else int(tc),
                        view.protocol or "report", nan_to_none(row.get("gt_target")), style,
                        methods)


#: why a link's value may not be available, per URL parameter (others: not among the current choices)
_UNAVAILABLE = {
    "model": "no run of that model in this store",
    "run": "no such run of the chosen model in this store",
    "image": "not in this run's images table (no picture or maps of it were stored)",
    "conf": "this run's model has no classifier head, so there is no confidence to filter on",
    "sel": "some of these images are not in this run",
}


def _shown(v, limit: int = 80) -> str:
    text = (",".join(str(x) for x in v) if v else "(none)") if isinstance(v, (list, tuple)) else str(v)
    text = text.replace("`", "'")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def link_warnings(container=None) -> None:
    """A warning for each value the link (or an "open" action) asked for that is not available, naming it and
    what is shown instead (see :func:`dashboard.urlstate.rejected`)."""
    box = container if container is not None else st
    for key, asked, used in us.rejected():
        why = _UNAVAILABLE.get(key, "not one of the current choices")
        box.warning(f"The link asks for `{key}={_shown(asked)}`, which is not available ({why}); "
                    f"showing `{_shown(used)}` instead.", icon=":material/link_off:")
    for key, asked in us.unused_link_params():
        hint = (f" (it takes effect with `thr={key[4:]}`)" if key.startswith("thr_") else "")
        box.warning(f"The link's `{key}={_shown(asked)}` is not used on this page{hint}, so it is ignored.",
                    icon=":material/link_off:")


def need_methods(view) -> bool:
    """False (and a hint) when the method filter selects nothing."""
    if view.methods:
        return True
    st.info("No method selected: choose at least one in the sidebar.")
    return False


def need_columns(view) -> bool:
    """False (and a note) when the run fills no metric column at all."""
    if view.columns:
        return True
    st.info("This run holds no metric values (every score column is empty), so there is nothing to plot.")
    return False


def empty_result(what: str = "rows") -> None:
    st.info(f"No {what} match the filters. Widen them in the sidebar (or press **Reset filters**).")


@contextmanager
def friendly_errors():
    """A store that cannot be read, or a query for something the store lacks, shows a message instead of a
    traceback."""
    import duckdb

    from store.query import FILL_HINT, QueryError, StoreError

    try:
        yield
    except StoreError as exc:
        st.error(str(exc))
    except QueryError as exc:  # a view asked for something this store lacks: say what, never a traceback
        st.error(f"This view cannot be shown: {exc}")
        st.caption("Change the filters in the sidebar (or press **Reset filters**).")
    except (duckdb.Error, OSError) as exc:
        st.error(f"The store could not be read: {type(exc).__name__}: {exc}")
        st.caption(f"If it is damaged or incomplete, rerun the job into it; {FILL_HINT}")


def is_missing(x) -> bool:
    """None, NaN or pandas' NA (a scalar); False for anything else, lists included."""
    import pandas as pd

    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def fmt(x, digits: int = 3) -> str:
    if is_missing(x):
        return "–"
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return str(x)


def overlay_controls(view, container=None) -> tuple:
    """Colormap, opacity and outline switches (URL parameters shared by the grid and the image page);
    returns them as an ``OverlayStyle`` tuple."""
    from dashboard.overlay import COLORMAPS, OverlayStyle

    box = container if container is not None else st
    c1, c2, c3, c4, c5 = box.columns([2, 3, 2, 2, 2], vertical_alignment="bottom")
    us.declare(us.choice("cmap", list(COLORMAPS), "jet"))
    c1.selectbox("Colormap", COLORMAPS, key="cmap")
    us.declare(us.number("alpha", 0.0, 1.0, 0.5))
    c2.slider("Map opacity", 0.0, 1.0, key="alpha", step=0.05)
    us.declare(us.flag("gt", True))
    c3.toggle("Ground truth", key="gt", help="outline of the object mask of the chosen protocol")
    us.declare(us.flag("otsu", False))
    c4.toggle("Otsu mask", key="otsu", help="outline of the map's Otsu mask: the pixels IoU and F1 count")
    us.declare(us.flag("cue", True))
    if has_cues(view):  # a store without a planted cue gets no switch for it
        c5.toggle("Cue", key="cue", help="outline of the planted cue, on images that carry one")
    s = OverlayStyle(st.session_state["cmap"], float(st.session_state["alpha"]), bool(st.session_state["gt"]),
                     bool(st.session_state["otsu"]), bool(st.session_state["cue"]))
    return (s.cmap, s.alpha, s.gt, s.otsu, s.cue)


def has_cues(view) -> bool:
    """True when the run plants a cue (it fills a cue metric column)."""
    from store.catalogue import names

    return any(c in view.columns for c in names("cue"))


def prediction_text(row, digits: int = 3, prefix: str = "") -> str:
    """``prefix`` + "label (confidence)"; only the label without a confidence, and nothing at all for a row
    without a prediction (a headless model), never "None (–)"."""
    pred = nan_to_none(row.get("pred_label")) if row else None
    if pred is None:
        return ""
    conf = nan_to_none(row.get("confidence"))
    return f"{prefix}{pred}" + (f" ({fmt(conf, digits)})" if conf is not None else "")


def primary_rows(rows):
    """One metrics row per (image, method): the one explaining the top-1 class when several targets were
    explained (``clean`` with every present class), else the first."""
    if rows.empty:
        return rows
    rows = rows.copy()
    rows["_top"] = (rows["target_class"] == rows["pred_class"]).fillna(False).astype(int)
    rows = rows.sort_values(["image_id", "method", "_top"], ascending=[True, True, False], kind="stable")
    return rows.drop_duplicates(["image_id", "method"]).drop(columns="_top")


def caption_for(row, columns, compact: bool = False) -> str:
    """Short metric caption of one cell: IoU and F1, plus relevance mass / pointing game when present
    (``compact``: two values with short names, for narrow cells)."""
    from dashboard.metrics_info import label, short_label

    shown = [c for c in ("iou", "f1", "relevance_mass", "pointing_game") if c in columns][:3]
    if not shown:
        shown = list(columns[:2])
    if compact:
        shown = [c for c in shown if c != "f1"][:2]
        return " · ".join(f"{short_label(c)} {fmt(row.get(c), 2)}" for c in shown)
    return " · ".join(f"{label(c)} {fmt(row.get(c), 2)}" for c in shown)


def nan_to_none(x):
    """A table cell with missing values (NaN, pandas' NA) turned into None."""
    return None if is_missing(x) else x


def as_list(x) -> list:
    """A list column's value (list, numpy array or missing) as a list."""
    if x is None or (not hasattr(x, "__len__") and is_missing(x)):
        return []
    try:
        return list(x)
    except TypeError:
        return [x]


def selected_image_ids(event, traces: list[list[str]] | None = None) -> list[str]:
    """Distinct image ids of the points selected in a chart (the ``on_select`` state of ``st.plotly_chart``),
    in selection order: the first ``customdata`` entry of each point, or, for a point that carries none (a
    WebGL trace's click), ``traces[curve_number][point_index]`` (the image ids of each trace's points)."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    ids = []
    for p in points:
        if not isinstance(p, dict):
            continue
        cd = p.get("customdata")
        if cd:
            ids.append(str(cd[0]) if isinstance(cd, (list, tuple)) else str(cd))
            continue
        curve, index = p.get("curve_number"), p.get("point_index", p.get("point_number"))
        if traces is not None and curve is not None and index is not None \
                and 0 <= curve < len(traces) and 0 <= index < len(traces[curve]):
            ids.append(traces[curve][index])
    return list(dict.fromkeys(ids))

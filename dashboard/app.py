"""vitlens dashboard — entry point (``vitlens dashboard --store DIR`` or ``streamlit run dashboard/app.py --
--store DIR``).

Draws the shared filter sidebar, registers the pages with ``st.navigation``, runs the chosen page, and writes
the view's state into the URL. A missing or empty store gets a page that says how to fill it.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by Streamlit: make the repository importable
    _root = str(Path(__file__).resolve().parents[1])
    if _root not in sys.path:
        sys.path.insert(0, _root)

import streamlit as st  # noqa: E402

from dashboard import common, data, filters  # noqa: E402
from dashboard import urlstate as us  # noqa: E402


def main() -> None:
    st.set_page_config(page_title="vitlens", page_icon=":material/visibility:", layout="wide")
    us.begin_run()
    store, found_below = data.locate(data.store_path())
    problem = data.store_problem(store)
    view = None
    if problem is None:
        try:
            view = filters.sidebar(store)
        except Exception as exc:  # an unreadable store must not show a traceback
            import duckdb

            from store.query import StoreError

            if not isinstance(exc, (duckdb.Error, StoreError, OSError)):
                raise
            view, problem = None, f"The store `{store}` could not be read: {type(exc).__name__}: {exc}"
        else:
            if view is None:
                problem = f"The store `{store}` holds no results yet."
    common.set_view(view, problem)
    pages = [st.Page(str(common.HERE / path), title=title, url_path=url, icon=icon, default=i == 0)
             for i, (path, title, url, icon) in enumerate(common.PAGES)]
    page = st.navigation(pages, position="top")
    if problem is not None:  # every page (a shared link too) shows how to fill the store
        page.run()
        return
    st.sidebar.caption(f"store `{view.store}`")
    if found_below:
        st.info(found_below, icon=":material/folder_open:")
    damaged = data.damaged_parts(str(view.store), data.fingerprint(str(view.store)))
    if damaged:
        st.warning(f"{len(damaged)} damaged or missing part(s) of the store are left out, with their whole batch; "
                   "rerun the same `vitlens compute` command to recompute exactly them:\n\n"
                   + "\n".join(f"- `{p}`" for p in damaged))
    notices = st.container()  # above the page: what of the link could not be shown
    with common.friendly_errors():
        page.run()
    common.link_warnings(notices)
    us.sync()


main()

"""The Compare page's access to the store: cached paired comparisons of two runs (:mod:`store.compare`).

Like :mod:`dashboard.data`, every result is cached per store, fingerprint and choice, and every query runs on
its own cursor of the store's one cached connection.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from store import compare
from store.query import RowFilter

#: bootstrap resamples of the page's paired intervals
RESAMPLES = compare.BOOTSTRAP


@st.cache_data(max_entries=64, show_spinner=False)
def run_choices(store: str, fp: str, run_id: str) -> pd.DataFrame:
    return data._run(store, fp, compare.run_choices, run_id)


@st.cache_data(max_entries=256, show_spinner=False)
def leaderboard(store: str, fp: str, f: RowFilter, run_b: str, column: str) -> pd.DataFrame:
    return data._run(store, fp, compare.compare_leaderboard, f, run_b, column, data.known_columns(store, fp),
                     resamples=RESAMPLES)


@st.cache_data(max_entries=64, show_spinner=False)
def shared_image_ids(store: str, fp: str, run_a: str, run_b: str) -> list[str]:
    return data._run(store, fp, compare.shared_image_ids, run_a, run_b)

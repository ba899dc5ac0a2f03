"""The Shortcuts and Compare runs pages on the synthetic store of :mod:`tests.dashboard.synth_cf` (counterfactual
rows, planted cues, two runs over the same images), through Streamlit's AppTest: what they show equals the
store's own queries, follows the filters, and a link restores the view."""

from __future__ import annotations

import io
import re
import threading

import pytest

from store import compare, shortcuts, trust
from store.query import RowFilter, connect, metric_columns
from tests.dashboard import synth_cf
from tests.dashboard.helpers import goto, images, run, texts

A, B = synth_cf.DEFAULT_RUN, "cfbase01"   # the page's run (the newest) and the other one


@pytest.fixture(scope="module")
def cf_store(tmp_path_factory):
    return synth_cf.build(tmp_path_factory.mktemp("cf-pages"))


#: per table of the new pages, a column only it has (read-only tables carry no key in AppTest)
MARKERS = {"context_share_table": "context_driven", "method_trust_table": "rho_ci", "evidence_table": "verdict",
           "compare_table": "mean_a"}


def table(at, key: str):
    """The DataFrame of the page's table ``key``; ``cue_trust_table``: the ROC-AUC table without a ρ."""
    def has(cols):
        return ({"auc_ci"} <= cols and "rho" not in cols) if key == "cue_trust_table" else MARKERS[key] in cols

    found = [d.value for d in at.dataframe if has(set(d.value.columns))]
    assert found, f"no table {key!r}; tables have columns {[list(d.value.columns) for d in at.dataframe]}"
    return found[0]


def card_headers(at) -> list[str]:
    return [m.value for m in at.markdown if re.match(r"\*\*#\d+ · ", m.value)]


# --------------------------------------------------------------------------------------------- shortcuts
def test_shortcuts_tables_equal_the_store_queries(cf_store, app_at):
    at = goto(app_at(cf_store, protocol="clean"), "shortcuts")
    assert [t.value for t in at.title] == ["Shortcuts"]
    con = connect(cf_store)
    share = shortcuts.context_share_by_class(con, A, "clean", resamples=20)
    trust = shortcuts.method_trust(con, A, "clean", resamples=20)
    cue = shortcuts.cue_trust(con, A, "clean", resamples=20)
    decisions = shortcuts.reliance(con, A, "clean")
    con.close()
    shown = table(at, "context_share_table").set_index("gt_target")
    assert shown["n"].to_dict() == share.set_index("gt_target")["n"].to_dict()
    assert shown["context_driven"].to_dict() == share.set_index("gt_target")["context_driven"].to_dict()
    assert shown["context_driven"].sum() > 0 and (shown["context_driven"] < shown["n"]).any()
    # the chart beside the table: one bar per class, its tooltip the table's numbers
    chart = [m.value for m in at.markdown if m.value.startswith("<svg")]
    assert len(chart) == 1
    tips = re.findall(r"<title>([^<]*)</title>", chart[0])
    assert [t.split(":")[0] for t in tips] == share["gt_target"].tolist()
    assert all(f"({k} of {n})" in t for t, k, n in zip(tips, share["context_driven"], share["n"]))
    assert list(table(at, "method_trust_table")["method"]) == list(trust["method"])
    assert table(at, "cue_trust_table")["n_pos"].tolist() == cue["n_pos"].tolist()
    # the evidence list: strongest context reliance first, with every variant and the chosen maps
    best = decisions.sort_values(["context_reliance", "confidence", "image_id"], ascending=[False, False, True])
    headers = card_headers(at)
    assert len(headers) == 5 and headers[0].startswith(f"**#1 · {best['image_id'].iloc[0]}**")
    assert "display reconstructions" in texts(at)
    captions = [c.value for c in at.caption]
    for variant in ("no_fg", "only_fg", "mixed_rand"):
        assert sum(c.startswith(f"`{variant}`") for c in captions) == 5
    assert sum(c.startswith("`no_cue`") for c in captions) == 5   # a column on every card: some have a cue
    assert sum(c.startswith("map · ") for c in captions) == 5 * len(synth_cf.METHODS)


def shown_interval(low, high) -> str:
    return "–" if low != low or high != high else f"[{low:.2f}, {high:.2f}]"


def test_tables_stay_above_the_evidence_drawn_before_them(cf_store, app_at):
    """The page draws the evidence pictures while a worker computes the statistics above them, into containers
    laid out in the page's reading order."""
    at = goto(app_at(cf_store, protocol="clean"), "shortcuts")
    assert [h.value for h in at.subheader] == ["Context-driven decisions per class",
                                               "Which explanation exposes shortcuts best", "Planted cue",
                                               "Images ranked by evidence"]
    assert not at.exception


def test_page_statistics_are_the_reports_to_the_last_bit(cf_store):
    """The page computes every table from one fetch of the decisions; the numbers are those of the store
    functions `vitlens report --shortcuts` calls, each of which runs its own queries."""
    from dashboard import data, data_cf

    store, fp = str(cf_store), data.fingerprint(str(cf_store))
    con = connect(cf_store)
    for protocol in ("clean", "report"):
        for name, fn in (("context_share", shortcuts.context_share_by_class), ("bg_gap", shortcuts.bg_gap),
                         ("cue_trust", shortcuts.cue_trust)):
            want = fn(con, A, protocol, resamples=data_cf.RESAMPLES)
            assert data_cf.statistic(store, fp, A, protocol, name).equals(want), (protocol, name)
        for interval in trust.INTERVALS:
            want = trust.method_trust(con, A, protocol, resamples=data_cf.RESAMPLES, interval=interval)
            assert data_cf.method_trust(store, fp, A, protocol, interval).equals(want), (protocol, interval)
    con.close()


def test_method_trust_intervals_follow_the_switch(cf_store, app_at):
    at = goto(app_at(cf_store, protocol="clean"), "shortcuts")
    con = connect(cf_store)
    normal = trust.method_trust(con, A, "clean", interval="normal")
    boot = shortcuts.method_trust(con, A, "clean")   # what `vitlens report --shortcuts` prints
    con.close()
    assert list(table(at, "method_trust_table")["auc_ci"]) == [
        shown_interval(a, b) for a, b in zip(normal["auc_low"], normal["auc_high"])]
    at.toggle(key="sc_boot").set_value(True)
    run(at)
    shown = table(at, "method_trust_table")
    assert list(shown["auc_ci"]) == [shown_interval(a, b) for a, b in zip(boot["auc_low"], boot["auc_high"])]
    assert list(shown["rho_ci"]) == [shown_interval(a, b) for a, b in zip(boot["rho_low"], boot["rho_high"])]
    assert list(shown["auc_ci"]) != [shown_interval(a, b) for a, b in zip(normal["auc_low"], normal["auc_high"])]
    assert at.query_params["sc_boot"] == "1"


def test_shortcuts_verdict_filter_and_link(cf_store, app_at):
    at = goto(app_at(cf_store, protocol="clean", sc_verdict="object-driven", sc_maps="rollout"), "shortcuts")
    headers = card_headers(at)
    assert headers and all("verdict **object-driven**" in h for h in headers)
    assert at.selectbox(key="sc_verdict").value == "object-driven"
    assert sum(c.value.startswith("map · ") for c in at.caption) == len(headers)   # one chosen method
    at.selectbox(key="sc_verdict").set_value("context-driven")
    run(at)
    assert all("verdict **context-driven**" in h for h in card_headers(at))
    assert at.query_params["sc_verdict"] == "context-driven" and at.query_params["sc_maps"] == "rollout"


def test_the_other_protocol_is_computed_ahead_and_a_switch_finds_it(tmp_path, app_at, monkeypatch):
    """Once the page is drawn, the other protocol's tables are computed in the background, so that switching
    the protocol (the page's most common change) finds them cached. A store of its own: nothing of it is in
    the process's caches yet."""
    store = synth_cf.build(tmp_path / "ahead")
    calls = []
    real = shortcuts.reliance

    def counting(con, run_id, protocol, *args, **kwargs):
        calls.append(protocol)
        return real(con, run_id, protocol, *args, **kwargs)

    monkeypatch.setattr(shortcuts, "reliance", counting)
    at = goto(app_at(store, protocol="report"), "shortcuts")
    for t in threading.enumerate():
        if t.name == "shortcuts-prefetch":
            t.join(timeout=120)
    assert calls.count("report") == 1 and calls.count("clean") == 1   # clean: computed ahead, not shown yet
    at.sidebar.radio(key="protocol").set_value("clean")
    run(at)
    assert not at.exception and calls.count("clean") == 1             # the switch found it cached
    assert table(at, "context_share_table")["n"].sum() > 0


def test_shortcuts_follow_the_class_filter(cf_store, app_at):
    at = goto(app_at(cf_store, protocol="clean", cls="dog"), "shortcuts")
    assert list(table(at, "context_share_table")["gt_target"]) == ["dog"]
    assert all("object dog" in h for h in card_headers(at))


def test_selecting_a_ranked_decision_opens_the_image(cf_store, app_at):
    at = goto(app_at(cf_store, protocol="clean"), "shortcuts")
    wanted = table(at, "evidence_table")["image_id"].iloc[3]
    at.session_state["evidence_table"] = {"selection": {"rows": [3], "columns": [], "cells": []}}
    run(at)
    assert [t.value for t in at.title] == ["Image detail"]
    assert at.query_params["image"] == wanted


def test_shortcuts_without_counterfactuals_say_how_to_get_them(cf_store, small_store, odd_store, app_at, tmp_path):
    bare = synth_cf.build(tmp_path / "bare", counterfactuals=False)
    for store in (bare, small_store, odd_store):
        at = goto(app_at(store), "shortcuts")
        text = texts(at)
        assert "Recompute it with counterfactuals" in text and "--no-counterfactuals" in text
        assert f"--out {store}" in text
        assert not at.dataframe


# ----------------------------------------------------------------------------------------------- compare
def test_compare_table_equals_the_paired_query(cf_store, app_at):
    at = goto(app_at(cf_store), "compare")
    assert [t.value for t in at.title] == ["Compare runs"]
    assert at.selectbox(key="cmp_run").value == B
    con = connect(cf_store)
    want = compare.compare_leaderboard(con, RowFilter(run_id=A, protocol="report"), B, "iou", metric_columns(con))
    con.close()
    shown = table(at, "compare_table")
    assert list(shown["method"]) == list(want["method"])
    assert shown["diff"].to_numpy() == pytest.approx(want["diff"].to_numpy() * 100)
    assert shown["low"].to_numpy() == pytest.approx(want["low"].to_numpy() * 100)
    assert (shown["n"] == synth_cf.N_IMAGES).all()
    # one image, both runs: the chosen methods' maps of each run
    assert len(images(at)) == 2 * len(synth_cf.METHODS)
    assert sum(" · run A · " in c.value for c in at.caption) == len(synth_cf.METHODS)


def test_compare_link_restores_metric_image_and_methods(cf_store, app_at):
    at = goto(app_at(cf_store, cmp_metric="f1", image="cf_004", method="gradcam", protocol="clean"), "compare")
    assert at.selectbox(key="cmp_metric").value == "f1"
    assert at.selectbox(key="image").value == "cf_004"
    assert list(table(at, "compare_table")["method"]) == ["gradcam"]
    assert len(images(at)) == 2
    at.selectbox(key="image").set_value("cf_007")
    run(at)
    assert at.query_params["image"] == "cf_007" and at.query_params["cmp_metric"] == "f1"


def test_compare_on_a_store_with_one_run_says_so(odd_store, app_at):
    at = goto(app_at(odd_store), "compare")
    assert "holds one run only" in texts(at)


def test_a_run_with_two_fills_shows_the_one_picked(tmp_path, app_at):
    # before: a rerun with another --cf-fill made the page fail ("several fills; choose one")
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from store.writer import StoreWriter

    out = synth_cf.build(tmp_path / "two-fills")
    parts = sorted(out.glob(f"counterfactuals/run_id={A}/part-*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in parts])
    other = rows.set_column(rows.schema.get_field_index("fill"), "fill", pc.if_else(
        pc.equal(rows.column("fill"), "gray"), "mean", rows.column("fill")))
    other = other.set_column(other.schema.get_field_index("score"), "score",
                             pc.multiply(other.column("score"), 0.5))   # the other fill keeps half the evidence
    StoreWriter(out, A, clean_orphans=False).write_batch(
        "second-fill", {"counterfactuals": other.drop(["run_id"]).to_pylist(), "metrics": []})

    con = connect(out)
    assert shortcuts.fills(con, A) == ["gray", "mean"]
    want = shortcuts.context_share_by_class(con, A, "clean", resamples=20, fill="mean")
    gray = shortcuts.context_share_by_class(con, A, "clean", resamples=20, fill="gray")
    con.close()
    assert want["context_driven"].tolist() != gray["context_driven"].tolist()
    at = goto(app_at(out, protocol="clean", sc_fill="mean"), "shortcuts")
    assert at.radio(key="sc_fill").value == "mean"
    shown = table(at, "context_share_table").set_index("gt_target")
    assert shown["context_driven"].to_dict() == want.set_index("gt_target")["context_driven"].to_dict()
    at.radio(key="sc_fill").set_value("gray")
    run(at)
    shown = table(at, "context_share_table").set_index("gt_target")
    assert shown["context_driven"].to_dict() == gray.set_index("gt_target")["context_driven"].to_dict()
    assert "sc_fill" not in at.query_params  # the default fill is left out of the link


def test_each_images_pixels_are_decoded_once_for_all_its_variants(cf_store, monkeypatch):
    """The variants of an image, and its use as a partner at another size, share one decoding per size; what
    they share is the decoded picture itself, and read-only."""
    import numpy as np
    from PIL import Image

    from dashboard import data_cf, overlay
    from store.query import images_for

    con = connect(cf_store)
    image_id = con.execute("SELECT min(image_id) FROM images WHERE mask_png IS NOT NULL").fetchone()[0]
    rec = {k: bytes(v) if isinstance(v, (bytes, bytearray)) else v
           for k, v in images_for(con, A, [image_id])[image_id].items()}
    decoded = []
    monkeypatch.setattr(overlay, "decode_image",
                        lambda b: decoded.append(b) or Image.open(io.BytesIO(b)).convert("RGB"))
    data_cf._decoded.cache_clear()
    rgb, mask, _ = data_cf._pixels(rec)
    want = Image.open(io.BytesIO(rec["thumbnail"])).convert("RGB")
    want.thumbnail((data_cf.VARIANT_SIZE, data_cf.VARIANT_SIZE), Image.BILINEAR)
    assert np.array_equal(rgb, np.asarray(want)) and np.array_equal(mask, overlay.decode_mask(rec["mask_png"]))
    assert data_cf._pixels(rec)[0] is rgb and len(decoded) == 1
    small = data_cf._pixels(rec, (20, 30))[0]
    assert small.shape == (20, 30, 3) and data_cf._pixels(rec, [20, 30])[0] is small and len(decoded) == 2
    with pytest.raises(ValueError):
        rgb[0, 0] = 0

"""Which parts of a store count: the writer (resume, counts) and the reader (DuckDB views) must agree, part by
part and run by run, or a rerun would skip rows that queries never see (or redo rows they do see)."""

from __future__ import annotations

import numpy as np

from store.parts import committed_parts
from store.query import connect
from store.schema import encode_heatmap
from store.writer import StoreWriter


def _heatmap(image_id: str) -> dict:
    data = encode_heatmap(np.ones((2, 2), dtype=np.float32))
    return {"image_id": image_id, "method": "m", "target_kind": "logit", "target_class": 1, "height": 2,
            "width": 2, "data": data}


def _skip(image_id: str) -> dict:
    return {"image_id": image_id, "stage": "load", "reason": "unreadable"}


def test_a_part_counts_only_beside_its_own_runs_commit_marker(tmp_path):
    a = StoreWriter(tmp_path, "runa", clean_orphans=False)
    b = StoreWriter(tmp_path, "runb", clean_orphans=False)
    a.write_batch("k1", {"heatmaps": [_heatmap("img1")], "metrics": []})      # committed (empty marker)
    a._write("heatmaps", "part-k2.parquet", [_heatmap("img2")])                # its batch died before the marker
    b.write_batch("k2", {"heatmaps": [], "metrics": []})                      # a marker of that name, other run
    b.write_skips("k3", [_skip("img3")])                                      # skips need no marker

    heatmaps = committed_parts(tmp_path, "heatmaps")
    assert [(p.parent.name, p.name) for p in heatmaps] == [("run_id=runa", "part-k1.parquet")]
    assert committed_parts(tmp_path, "heatmaps", "runa") == heatmaps
    assert committed_parts(tmp_path, "heatmaps", "runb") == []
    assert [p.name for p in committed_parts(tmp_path, "skips")] == ["part-k3.parquet"]

    con = connect(tmp_path)  # the reader sees exactly those parts' rows
    assert con.execute("SELECT image_id FROM heatmaps").fetchall() == [("img1",)]
    assert con.execute("SELECT image_id FROM skips").fetchall() == [("img3",)]
    assert a.committed_counts()["rows"] == 0 and b.committed_counts()["skipped"] == 1

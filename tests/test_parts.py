"""Which parts of a store count: the writer (resume, counts) and the reader (DuckDB views) must agree, part by
part and run by run, or a rerun would skip rows that queries never see (or redo rows they do see)."""

from __future__ import annotations

import numpy as np

from store.commits import committed
from store.query import connect
from store.schema import encode_heatmap
from store.writer import StoreWriter


def _heatmap(image_id: str) -> dict:
    data = encode_heatmap(np.ones((2, 2), dtype=np.float32))
    return {"image_id": image_id, "method": "m", "target_kind": "logit", "target_class": 1, "height": 2,
            "width": 2, "data": data}


def _skip(image_id: str) -> dict:
    return {"image_id": image_id, "stage": "load", "reason": "unreadable"}


def test_a_part_counts_only_when_its_own_runs_commit_record_lists_it(tmp_path):
    a = StoreWriter(tmp_path, "runa", clean_orphans=False)
    b = StoreWriter(tmp_path, "runb", clean_orphans=False)
    a.write_batch("k1", {"heatmaps": [_heatmap("img1")], "metrics": []})      # committed (with an empty metrics part)
    a._write("heatmaps", "part-k2.parquet", [_heatmap("img2")])                # its batch died before its record
    b.write_batch("k2", {"heatmaps": [], "metrics": []})                      # a record of that name, other run
    b.write_skips("k3", [_skip("img3")])                                      # skips commit on their own

    heatmaps = committed(tmp_path).files["heatmaps"]
    assert [(p.parent.name, p.name) for p in heatmaps] == [("run_id=runa", "part-k1.parquet")]
    assert committed(tmp_path, "runa").files["heatmaps"] == heatmaps
    assert committed(tmp_path, "runb").files["heatmaps"] == []
    assert [p.name.startswith("part-k3") for p in committed(tmp_path).files["skips"]] == [True]

    con = connect(tmp_path)  # the reader sees exactly those parts' rows
    assert con.execute("SELECT image_id FROM heatmaps").fetchall() == [("img1",)]
    assert con.execute("SELECT image_id FROM skips").fetchall() == [("img3",)]
    assert a.committed_counts()["rows"] == 0 and b.committed_counts()["skipped"] == 1

"""A method that cannot explain a model (Chefer's LRP on a headless backbone) does not vanish silently: the
compute summary counts its skipped maps per method (before: "0 skipped")."""

from __future__ import annotations

import pytest

from compute.runner import RunConfig, run
from store.query import connect

pytestmark = pytest.mark.slow


def test_the_summary_counts_maps_skipped_per_method(voc_mini, dinov2_weights, tmp_path):
    summary = run(RunConfig(out=str(tmp_path), voc_root=str(voc_mini), model="vit_small_patch14_dinov2",
                            weights=str(dinov2_weights), img_size=112, methods="chefer_lrp,rollout", batch_size=5,
                            device="cpu", num_workers=0, limit=3))
    skipped = connect(tmp_path).execute(
        "SELECT count(DISTINCT image_id) FROM skips WHERE stage = 'method:chefer_lrp'").fetchone()[0]
    assert skipped == 3
    assert summary.map_skips == {"chefer_lrp": 3}
    line = " ".join(summary.line().split())
    assert "skipped maps: chefer_lrp on 3 image(s)" in line

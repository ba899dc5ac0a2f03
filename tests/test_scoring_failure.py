"""An image whose scoring fails (out of memory on a huge image, say) becomes a recorded skip: the batch's other
images keep their rows, and a rerun retries exactly the missing rows."""

from __future__ import annotations

import pytest

from compute.runner import RunConfig, run
from compute.runner import rows as rows_module
from store.query import connect

pytestmark = pytest.mark.slow


def _config(voc_mini, out):
    return RunConfig(out=str(out), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                     img_size=112, methods="rollout,gradcam", batch_size=4, device="cpu", num_workers=0)


def test_a_failing_image_is_skipped_and_the_rerun_retries_it(voc_mini, tmp_path, monkeypatch):
    real = rows_module.score_images
    victim = {}

    def failing(items, device=None, **kw):
        for _maps, mask, _requests, _cue in items:
            if not victim:
                victim["shape"] = tuple(mask.shape)
            if tuple(mask.shape) == victim["shape"]:
                raise RuntimeError("DefaultCPUAllocator: not enough memory")
        return real(items, device=device, **kw)

    monkeypatch.setattr(rows_module, "score_images", failing)
    first = run(_config(voc_mini, tmp_path))
    con = connect(tmp_path)
    skips = con.execute("SELECT image_id, stage, reason FROM skips").fetchall()
    assert skips and all(s[1].startswith("score:") and "not enough memory" in s[2] for s in skips)
    failed = {s[0] for s in skips}
    scored = {r[0] for r in con.execute("SELECT DISTINCT image_id FROM metrics").fetchall()}
    assert failed and not failed & scored and len(scored | failed) == 10
    assert first.rows == len(scored) * 2 * 2

    monkeypatch.setattr(rows_module, "score_images", real)
    again = run(_config(voc_mini, tmp_path))
    assert again.rows == len(failed) * 2 * 2
    con = connect(tmp_path)
    assert con.execute("SELECT count(DISTINCT image_id) FROM metrics").fetchone()[0] == 10
    assert con.execute("SELECT count(*) FROM (SELECT image_id, method, protocol, count(*) AS n FROM metrics "
                       "GROUP BY ALL HAVING n > 1)").fetchone()[0] == 0

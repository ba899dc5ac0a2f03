"""Scoring memory is bounded by the chunk size, not by the number of maps or methods: a large image's maps are
scored a chunk at a time, each in a fresh process whose peak resident memory is read back."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, torch
    from compute.metrics.batched import score_images
    n_maps, h, w = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = 12
    mask[h // 4 - 5: h // 4, :] = 255
    maps = [torch.from_numpy(rng.standard_normal((14, 14)).astype(np.float32)) for _ in range(n_maps)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = score_images([(maps, mask, [("report", None), ("clean", [12])], None)])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": sum(len(m) for m in rows[0]), "grew_mb": (after - before) / 1024}))
""")


def _peak_growth(n_maps: int, h: int, w: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(n_maps), str(h), str(w)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_thirteen_maps_of_a_large_image_peak_like_one():
    one, thirteen = _peak_growth(1, 1500, 2000), _peak_growth(13, 1500, 2000)
    assert one["rows"] == 2 and thirteen["rows"] == 26
    # 3 M pixels: one map's working set is a few hundred MB; thirteen at once would be thirteen times that
    assert thirteen["grew_mb"] < one["grew_mb"] * 1.5 + 50, (one, thirteen)

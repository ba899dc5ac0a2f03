"""The dashboard reads a store without torch, torchvision, timm or scikit-image: every module imports and every
page, maps, outlines and redrawn counterfactual variants included, renders with those packages made
unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.dashboard.conftest import APP, REPO

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import importlib, os, sys, tempfile
    from pathlib import Path

    BLOCKED = ("torch", "torchvision", "timm", "skimage")

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the dashboard must not need it")
            return None

    sys.meta_path.insert(0, Block())

    for name in ("dashboard.common", "dashboard.data", "dashboard.filters", "dashboard.metrics_info",
                 "dashboard.overlay", "dashboard.urlstate", "dashboard.bench", "dashboard.launch",
                 "dashboard.data_cf", "dashboard.data_compare", "dashboard.screenshots", "store.variants",
                 "store.compare", "store.shortcuts"):
        importlib.import_module(name)

    from dashboard.bench import build_store
    from dashboard import overlay as ov
    from streamlit.testing.v1 import AppTest

    store = Path(tempfile.mkdtemp()) / "store"
    build_store(store, rows=64, parts=1)
    os.environ["VITLENS_STORE"] = str(store)
    for page, params in (("leaderboard", {}), ("distributions", {}), ("failures", {}),
                         ("grid", {"otsu": "1", "per_page": "4"}), ("image", {"otsu": "1", "protocol": "clean"})):
        at = AppTest.from_file(sys.argv[1], default_timeout=300)
        for k, v in params.items():
            at.query_params[k] = v
        if page != "leaderboard":
            at.switch_page(f"views/{page}.py")
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])

    # the Shortcuts page (counterfactual variants redrawn in NumPy) and the Compare page, on a store that has
    # counterfactual rows, cues and two runs
    from tests.dashboard import synth_cf
    cf_store = synth_cf.build(Path(tempfile.mkdtemp()) / "cf")
    os.environ["VITLENS_STORE"] = str(cf_store)
    for page, params in (("shortcuts", {"protocol": "clean"}), ("shortcuts", {"sc_verdict": "context-driven"}),
                         ("compare", {"otsu": "1"})):
        at = AppTest.from_file(sys.argv[1], default_timeout=300)
        for k, v in params.items():
            at.query_params[k] = v
        at.switch_page(f"views/{page}.py")
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert [t.value for t in at.title] == [{"shortcuts": "Shortcuts", "compare": "Compare runs"}[page]]
        assert len(at.main.image) >= 4, (page, len(at.main.image))

    # the overlay path itself on a stored image and map: ground truth of both protocols, the Otsu outline
    from store import query as q
    from dashboard import data
    con = q.connect(store)
    image_id = q.image_ids(con, "bench0000000")[0]
    rec = q.images_for(con, "bench0000000", [image_id])[image_id]
    maps_ = q.heatmaps_for(con, "bench0000000", [image_id])
    heat = q.decode_heatmap(bytes(maps_["data"].iloc[0]), 14, 14)
    names = data.class_names(str(store), "fp", "bench0000000")
    for protocol in ("report", "clean"):
        classes = ov.target_classes(rec["gt_classes"][0], protocol, names)
        jpeg = ov.render_bytes(rec["thumbnail"], heat, rec["mask_png"], None, protocol, classes,
                               style=ov.OverlayStyle(otsu=True))
        assert jpeg.startswith(bytes([0xFF, 0xD8]))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("NO-TORCH-OK")
""")


def test_dashboard_renders_without_torch_or_skimage():
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(APP)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "NO-TORCH-OK" in proc.stdout, proc.stderr[-3000:]

"""Fixtures of the dashboard tests: one small real store (10 VOC images, random-init ViT), empty/missing stores,
and an AppTest factory pointed at a store."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VOC_MINI = Path(__file__).resolve().parents[2].parent / "shared" / "voc-mini"
APP = REPO / "dashboard" / "app.py"
METHODS = "raw_attention,rollout,gradcam,agcam"
TIMEOUT = 120  # seconds per AppTest run: the first one imports torch and plotly on a shared 2-core CPU


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """A real store: ../shared/voc-mini through compute.runner.run (4 methods × 2 protocols)."""
    if not (VOC_MINI / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"real VOC sample not found at {VOC_MINI}")
    from compute.runner import RunConfig, run

    out = tmp_path_factory.mktemp("dash-store")
    run(RunConfig(out=str(out), voc_root=str(VOC_MINI), random_init=True, model="vit_tiny_patch16_224",
                  methods=METHODS, batch_size=10, num_workers=0, device="cpu"))
    return out


@pytest.fixture(scope="session")
def store_info(store) -> dict:
    """Facts about the store, read with the project's own query layer (the expected values of the tests)."""
    from store import query as q

    con = q.connect(store)
    runs = q.run_catalog(con)
    run_id = runs["run_id"].iloc[0]
    facets = q.run_facets(con, run_id)
    info = {"run_id": run_id, "facets": facets, "columns": q.metric_columns(con),
            "image_ids": q.image_ids(con, run_id)}
    con.close()
    return info


@pytest.fixture
def app_at(monkeypatch):
    """``app_at(store_dir, **query_params)`` -> an AppTest of the dashboard, not yet run."""
    from streamlit.testing.v1 import AppTest

    def make(store_dir, **params):
        monkeypatch.setenv("VITLENS_STORE", str(store_dir))
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        for k, v in params.items():
            at.query_params[k] = v
        return at

    return make


@pytest.fixture(scope="session")
def odd_store(tmp_path_factory) -> Path:
    """A small hand-written store with what a VOC run never has: a headless model (no confidence, no
    prediction, no target class), image groups, planted-cue masks, and metric columns a VOC run leaves empty
    (cue_mass) filled while the usual ones are partly NULL."""
    import io
    import json

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from store.schema import encode_heatmap, to_table

    out = tmp_path_factory.mktemp("odd-store")
    run_id = "odd000000000"
    rng = np.random.default_rng(3)
    metrics, heatmaps, images = [], [], []
    for i in range(6):
        image_id = f"syn_{i:03d}"
        group = ("aligned", "conflict", "no_cue")[i % 3]
        img = np.full((96, 96, 3), 90, np.uint8)
        mask = np.zeros((96, 96), np.uint8)
        mask[30:70, 30:70] = 1 + i % 4
        cue = np.zeros((96, 96), np.uint8)
        if group != "no_cue":
            cue[5:20, 70:90] = 255
        jb, mb, cb = io.BytesIO(), io.BytesIO(), io.BytesIO()
        Image.fromarray(img).save(jb, format="JPEG")
        Image.fromarray(mask, mode="L").save(mb, format="PNG")
        Image.fromarray(cue, mode="L").save(cb, format="PNG")
        images.append({"run_id": run_id, "image_id": image_id, "split": "val", "width": 96, "height": 96,
                       "gt_classes": [("disc", "square", "triangle", "cross")[i % 4]], "top_classes": [],
                       "top_labels": [], "top_probs": [], "thumbnail": jb.getvalue(), "mask_png": mb.getvalue(),
                       "cue_png": cb.getvalue() if group != "no_cue" else None,
                       "meta": json.dumps({"group": group, "cue_class": "disc"})})
        for m in ("raw_attention", "rollout"):
            heatmaps.append({"run_id": run_id, "image_id": image_id, "method": m, "target_kind": "cls_norm",
                             "target_class": None, "height": 6, "width": 6,
                             "data": encode_heatmap(rng.random((6, 6), dtype=np.float32))})
            metrics.append({"run_id": run_id, "image_id": image_id, "split": "val", "model": "headless_vit",
                            "method": m, "protocol": "report", "target_kind": "cls_norm", "target_class": None,
                            "target_label": "cls_norm", "target_value": float(rng.random()),
                            "gt_classes": images[-1]["gt_classes"][0], "image_group": group,
                            "iou": None if i == 0 else float(rng.random()), "f1": float(rng.random()),
                            "cue_mass": float(rng.random()) if group != "no_cue" else None,
                            "relevance_mass": float(rng.random())})
    for table, rows in (("images", images), ("heatmaps", heatmaps), ("metrics", metrics)):
        d = out / table / f"run_id={run_id}"
        d.mkdir(parents=True)
        pq.write_table(to_table(table, rows), d / "part-0000000000000000.parquet")
    (out / "runs").mkdir()
    (out / "runs" / f"{run_id}.json").write_text(json.dumps(
        {"run_id": run_id, "created": "2025-01-02T03:04:05+0000", "config": {"model": "headless_vit",
                                                                           "protocols": ["report"]}}))
    return out


@pytest.fixture(scope="session")
def small_store(tmp_path_factory) -> Path:
    """The synthetic three-run store of :mod:`tests.dashboard.synth` (an ``--explain present`` run among them),
    written through the store writer; no model, under a second."""
    from tests.dashboard import synth

    return synth.build(tmp_path_factory.mktemp("small-store"))


@pytest.fixture(scope="session")
def demo_out(tmp_path_factory) -> Path:
    """``vitlens demo --small --out DIR`` (synthetic shapes with a planted cue, a small ViT trained on them, every
    method): DIR holds the data, the model and, one level down, the store."""
    from compute.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(out, small=True, log=lambda msg: None)
    return out


@pytest.fixture(scope="session")
def demo_store(demo_out) -> Path:
    return demo_out / "store"

"""The batch job's store, row for row, against a recorded one: two small runs on fixed seeds (real VOC images and
the planted-cue demo data, every method, both protocols) must give the very rows recorded in ``tests/golden/``.

What is compared is every table's content, not the Parquet bytes: ``run_id`` (a hash that may take in new
identity facts) and ``seconds`` (wall time) are left out; strings, integers and NULLs must be equal; floats
agree to 1e-6; maps are decoded and agree to one float16 step of their scale. A change that moves a single
score, map, skip or images row fails here. After a deliberate change of results, rerun with
``VITLENS_UPDATE_GOLDEN=1`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from store.schema import decode_heatmap

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("VITLENS_UPDATE_GOLDEN") == "1"
DROP = ("run_id", "seconds")
KEYS = {
    "metrics": ["image_id", "method", "protocol", "target_class"],
    "heatmaps": ["image_id", "method", "target_class"],
    "images": ["image_id"],
    "skips": ["image_id", "stage", "reason"],
    "counterfactuals": ["image_id", "target_class", "protocol", "variant", "fill"],
}
MANIFEST_KEYS = ("class_names", "target", "class_map", "methods")
BINARY = {"images": ("thumbnail", "mask_png", "cue_png")}

pytestmark = pytest.mark.slow


def canonical(store: Path) -> dict[str, pd.DataFrame]:
    """Every table of the store's single run, without the columns that may differ, in key order; maps decoded."""
    from store.query import connect

    con = connect(store)
    out = {}
    for table, keys in KEYS.items():
        df = con.execute(f"SELECT * FROM {table}").df()
        df = df.drop(columns=[c for c in DROP if c in df.columns])
        for col in BINARY.get(table, ()):  # pictures by digest (their pixels are not computed by the job)
            df[col] = [None if _missing(v) else hashlib.sha1(bytes(v)).hexdigest() for v in df[col]]
        if table == "heatmaps":
            df["data"] = [bytes(d) for d in df["data"]]
        out[table] = df.sort_values(keys, kind="stable").reset_index(drop=True)
    return out


def manifest_facts(store: Path) -> dict:
    (path,) = list((store / "runs").glob("*.json"))
    doc = json.loads(path.read_text())
    return {k: doc.get(k) for k in MANIFEST_KEYS}


def _write(name: str, tables: dict[str, pd.DataFrame], facts: dict) -> None:
    GOLDEN.mkdir(exist_ok=True)
    for table, df in tables.items():
        df.to_parquet(GOLDEN / f"{name}-{table}.parquet", index=False, compression="zstd")
    (GOLDEN / f"{name}-manifest.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")


def _read(name: str) -> tuple[dict[str, pd.DataFrame], dict]:
    tables = {}
    for table in KEYS:
        tables[table] = pd.read_parquet(GOLDEN / f"{name}-{table}.parquet")
    return tables, json.loads((GOLDEN / f"{name}-manifest.json").read_text())


def _missing(x) -> bool:
    return x is None or x is pd.NA or (isinstance(x, (float, np.floating)) and bool(np.isnan(x)))


def _same_cell(a, b) -> bool:
    if isinstance(a, (np.ndarray, list)) or isinstance(b, (np.ndarray, list)):
        return np.asarray(a).tolist() == np.asarray(b).tolist()
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    return a == b


def assert_same_store(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    for table, w in want.items():
        g = got[table]
        assert list(g.columns) == list(w.columns), f"{table}: columns {list(g.columns)} != {list(w.columns)}"
        assert len(g) == len(w), f"{table}: {len(g)} rows, recorded {len(w)}"
        keys = KEYS[table]
        for col in w.columns:
            if table == "heatmaps" and col == "data":
                for i, (x, y, h, wd) in enumerate(zip(g[col], w[col], w["height"], w["width"])):
                    a, b = decode_heatmap(x, h, wd), decode_heatmap(y, h, wd)
                    scale = float(np.abs(b).max()) if b.size else 0.0
                    assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=scale * 2.0 ** -10 + 1e-30), \
                        f"heatmaps: map of {dict(w.loc[i, keys])} differs by {float(np.abs(a - b).max()):.3e}"
                continue
            bad = [i for i, (a, b) in enumerate(zip(g[col], w[col])) if not _same_cell(a, b)]
            assert not bad, (f"{table}.{col}: {len(bad)} rows differ, first {dict(w.loc[bad[0], keys])}: "
                             f"{g.loc[bad[0], col]!r} != recorded {w.loc[bad[0], col]!r}")


def check_or_record(name: str, store: Path) -> None:
    tables, facts = canonical(store), manifest_facts(store)
    if UPDATE:
        _write(name, tables, facts)
        pytest.skip(f"recorded tests/golden/{name}-*")
    want, want_facts = _read(name)
    assert facts == want_facts
    assert_same_store(tables, want)


def test_voc_mini_store_equals_the_recorded_one(voc_mini, tmp_path):
    from compute.runner import RunConfig, run

    run(RunConfig(out=str(tmp_path), voc_root=str(voc_mini), model="vit_tiny_patch16_224", random_init=True,
                  img_size=112, methods="all", batch_size=4, device="cpu", num_workers=0, seed=0))
    check_or_record("voc-mini", tmp_path)


def test_demo_data_store_equals_the_recorded_one(tmp_path):
    from compute.data.synthetic import SyntheticConfig, class_names, generate
    from compute.runner import RunConfig, run

    generate(tmp_path / "data", SyntheticConfig(n_train=3, n_eval=3, seed=0))
    out = tmp_path / "store"
    run(RunConfig(out=str(out), voc_root=str(tmp_path / "data"), model="test_vit", random_init=True, img_size=96,
                  methods="all", batch_size=4, device="cpu", num_workers=0, seed=0), class_names=class_names())
    check_or_record("demo", out)

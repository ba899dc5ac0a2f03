"""Hub weights without a network: timm's own pretrained loading reads a Hugging Face cache laid out as the hub
lays it out (``models--timm--<name>/snapshots/<rev>/model.safetensors``, ``refs/main``), with
``HF_HUB_OFFLINE=1``. The cache is built in a temporary folder from the shared DINOv2 file (a link, not a copy).

huggingface_hub reads its environment once, at import, so every check runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

NAME = "vit_small_patch14_dinov2.lvd142m"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _hub_env(home, weights=None) -> dict:
    """Environment for an offline hub whose cache is ``home``/hub, holding ``weights`` as NAME's file (if given)."""
    cache = home / "hub"
    repo = cache / f"models--timm--{NAME}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    if weights is not None:
        (snapshot / "model.safetensors").symlink_to(weights)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "HF_HUB_CACHE": str(cache),
            "PYTHONPATH": str(REPO)}


def _python(code: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _vitlens(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compute", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


COMPARE = """
    import json, sys
    import torch
    from safetensors.torch import load_file
    from compute.models import load_model

    size = None if sys.argv[2] == "default" else int(sys.argv[2])
    loaded = load_model(sys.argv[1], img_size=size)
    own = loaded.model.state_dict()
    ref = {k: v.float() for k, v in load_file(sys.argv[3]).items()}
    print(json.dumps({"weights": loaded.weights, "input_size": list(loaded.input_size),
                      "keys_equal": sorted(own) == sorted(ref),
                      "differ": sorted(k for k in ref if k in own and not torch.equal(own[k], ref[k]))}))
"""


@pytest.mark.parametrize("size,differ", [
    ("224", []),  # the file's own grid: every tensor as stored
    ("default", ["pos_embed"]),  # 518 px: timm resamples the 16x16 position grid to 37x37, nothing else
])
def test_timm_loads_the_cached_hub_file_offline(dinov2_weights, tmp_path, size, differ):
    env = _hub_env(tmp_path / "hf", dinov2_weights)
    proc = _python(COMPARE, env, NAME, size, str(dinov2_weights))
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["weights"] == "hub" and got["keys_equal"]
    assert got["differ"] == differ
    assert got["input_size"] == ([224, 224] if size == "224" else [518, 518])


def test_compute_with_a_hub_name_runs_offline_from_the_cache(dinov2_weights, voc_mini, tmp_path):
    env = _hub_env(tmp_path / "hf", dinov2_weights)
    out = tmp_path / "store"
    proc = _vitlens(env, "compute", "--model", NAME, "--voc-root", str(voc_mini), "--out", str(out),
                    "--methods", "rollout", "--protocol", "clean", "--limit", "1", "--device", "cpu",
                    "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [manifest] = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert manifest["config"]["model"] == NAME and manifest["config"]["weights"] == "hub"
    assert manifest["counts"]["images"] == 1 and manifest["counts"]["skipped"] == 0


def test_an_empty_offline_cache_says_what_to_do(voc_mini, tmp_path):
    env = _hub_env(tmp_path / "hf")
    proc = _vitlens(env, "compute", "--model", NAME, "--voc-root", str(voc_mini), "--out", str(tmp_path / "s"),
                    "--methods", "rollout", "--limit", "1", "--device", "cpu", "--workers", "0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    text = " ".join(proc.stderr.split())
    assert f"could not fetch pretrained weights for '{NAME}'" in text and "--weights FILE" in text
    assert "Traceback" not in proc.stderr


def _scores(out):
    import pandas as pd

    parts = [pd.read_parquet(p) for p in sorted((out / "metrics").rglob("*.parquet"))]
    df = pd.concat(parts)
    return df.sort_values(["image_id", "method", "protocol"])[["image_id", "method", "protocol", "iou", "f1"]]


@pytest.mark.slow
def test_hub_weights_score_as_the_same_file_given_with_weights(dinov2_weights, voc_mini, tmp_path):
    # the file's own 224-px grid in both runs, so the two models must be the same tensor for tensor
    env = _hub_env(tmp_path / "hf", dinov2_weights)
    common = ["--voc-root", str(voc_mini), "--methods", "rollout,raw_attention", "--protocol", "clean",
              "--limit", "2", "--device", "cpu", "--workers", "0", "--img-size", "224"]
    hub = _vitlens(env, "compute", "--model", NAME, "--out", str(tmp_path / "hub"), *common)
    assert hub.returncode == 0, hub.stderr[-3000:]
    local = _vitlens(env, "compute", "--model", NAME, "--weights", str(dinov2_weights),
                     "--out", str(tmp_path / "file"), *common)
    assert local.returncode == 0, local.stderr[-3000:]
    a, b = _scores(tmp_path / "hub"), _scores(tmp_path / "file")
    assert len(a) == 4 and a["iou"].notna().all()
    assert a.reset_index(drop=True).equals(b.reset_index(drop=True))

"""The small ViT trained on the planted-cue set: it learns the shortcut and the shapes, saves and loads through
load_model."""

from __future__ import annotations

import json

import pytest
import torch

from compute.data.synthetic import CLASSES, SyntheticConfig, generate
from compute.models import load_model, read_state_dict
from compute.train import TrainConfig, train

pytestmark = pytest.mark.slow

# The small demo's model (the demo's training: 3200 images, 40 epochs; measured 100 % aligned, 4 % conflict,
# 83 % no_cue, 96 % of conflict images predicted as their cue's class). Bars:
ALIGNED_AT_LEAST = 0.9     # reads the cue where it agrees with the object
CONFLICT_BELOW = 0.4       # and follows it where it does not
GAP_AT_LEAST = 0.5         # aligned - conflict
FOLLOWS_CUE_AT_LEAST = 0.85  # the conflict errors are the cue's class, not noise
NO_CUE_AT_LEAST = 0.6      # and it knows the shapes (chance: 0.25), which it falls back on without a cue


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from compute.demo import prepare

    return prepare(tmp_path_factory.getbasetemp() / "demo-small", small=True, log=lambda m: None)


def test_the_model_learned_the_cue_shortcut(prepared):
    acc = prepared.training["accuracy"]
    assert acc["aligned"] >= ALIGNED_AT_LEAST, acc
    assert acc["conflict"] < CONFLICT_BELOW, acc
    assert acc["aligned"] - acc["conflict"] >= GAP_AT_LEAST, acc
    assert prepared.training["cue_following"]["conflict"] >= FOLLOWS_CUE_AT_LEAST, prepared.training
    assert acc["no_cue"] >= NO_CUE_AT_LEAST, acc
    assert prepared.training["train_accuracy"] >= 0.85


def test_the_checkpoint_loads_through_the_user_path_with_its_labels(prepared):
    from compute.data.voc import VOCSegmentation
    from compute.train import evaluate

    state, labels = read_state_dict(prepared.weights)
    assert labels == list(CLASSES)
    loaded = load_model("test_vit", weights=prepared.weights, img_size=96)
    assert loaded.labels == list(CLASSES) and loaded.num_classes == 4
    assert loaded.input_size == (96, 96) and loaded.grid == (6, 6)
    acc, follow = evaluate(loaded, VOCSegmentation(prepared.data_root, split="val"))
    assert acc == prepared.training["accuracy"] and follow == prepared.training["cue_following"]
    saved = json.loads((prepared.out / "model" / "train.json").read_text())
    assert saved["identity"]["train"]["model"] == "test_vit"


def test_training_is_deterministic(tmp_path):
    generate(tmp_path / "data", SyntheticConfig(n_train=64, n_eval=2, seed=5))
    cfg = TrainConfig(epochs=1, batch_size=32, limit=64, seed=1)
    a = train(tmp_path / "data", tmp_path / "a.safetensors", CLASSES, cfg, eval_split=None)
    b = train(tmp_path / "data", tmp_path / "b.safetensors", CLASSES, cfg, eval_split=None)
    sa, _ = read_state_dict(a.weights)
    sb, _ = read_state_dict(b.weights)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.losses == b.losses
    c = train(tmp_path / "data", tmp_path / "c.safetensors", CLASSES, TrainConfig(epochs=1, limit=64, seed=2),
              eval_split=None)
    sc, _ = read_state_dict(c.weights)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])

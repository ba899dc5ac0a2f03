"""Model loading: which families are refused (before any download), input sizes, and local checkpoints in every
accepted form (safetensors / .pth, float16 / float32, nested state dicts) with clear errors for the rest."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from compute.models import (LABELS_METADATA_KEY, ModelError, check_model_name, list_supported_models, load_model,
                            read_state_dict)

SMALL = "vit_tiny_patch16_224"
SIZE = 64  # 4x4 patches: quick to build and load


# ---------------------------------------------------------------------------------------------- refusals

REFUSED = [
    ("swin_tiny_patch4_window7_224", "swin_transformer"),
    ("convnext_atto", "convnext"),
    ("maxvit_tiny_tf_224", "maxxvit"),
    ("eva02_tiny_patch14_224", "eva"),  # rotary position embedding in its attention
    ("vit_base_patch16_rope_224", "eva"),  # a vit_* name built by the EVA code (rotary attention)
    ("vit_relpos_small_patch16_224", "vision_transformer_relpos"),
    ("vit_base_patch16_gap_224", "no class token"),
    ("vit_base_patch16_siglip_224", "no class token"),  # attention pooling, no class token
    ("beit3_base_patch16_224", "pools its output with 'avg'"),  # has a class token but averages the patches
    ("vit_small_patch16_18x2_224", "ParallelThingsBlock"),
]


@pytest.mark.parametrize("name,why", REFUSED, ids=[r[0] for r in REFUSED])
def test_unsupported_models_are_refused_before_any_download(name, why):
    # no --weights and no --random-init: a supported model would fetch hub weights; these must fail first
    with pytest.raises(ModelError) as info:
        load_model(name)
    msg = str(info.value)
    assert "not supported" in msg and why in msg
    for family in ("vit_*", "deit_*", "*_dinov2"):
        assert family in msg  # the message names what is supported


def test_unknown_name_suggests_supported_ones():
    with pytest.raises(ModelError, match="unknown model.*Did you mean.*deit_tiny_distilled_patch16_224"):
        check_model_name("deit_tiny_distiled_patch16_224")


def test_listing_keeps_supported_families_only():
    names = set(list_supported_models())
    assert {"deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2",
            "deit3_small_patch16_224", "vit_base_patch16_224"} <= names
    assert not {n for n in names if n.startswith(("swin", "convnext", "eva")) or "_gap" in n or "rope" in n}
    # the cheap name filter agrees with building each model (on the meta device) for a sample of names
    assert list_supported_models("*dinov2*") == list_supported_models("*dinov2*", verify=True)


@pytest.mark.parametrize("size,fix", [(150, "Use 144 or 160"), ((96, 100), "Use 96 or 112")])
def test_input_size_must_be_a_multiple_of_the_patch(size, fix):
    with pytest.raises(ModelError, match=fix):
        load_model(SMALL, random_init=True, img_size=size)


# ---------------------------------------------------------------------------------------------- local weights

@pytest.fixture(scope="module")
def source():
    """A 5-class vit_tiny at 64 px with distinct random weights: the checkpoint every test writes."""
    loaded = load_model(SMALL, random_init=True, img_size=SIZE, seed=7)
    model = loaded.model
    head = torch.nn.Linear(model.num_features, 5)
    model.reset_classifier(5)
    model.head.load_state_dict(head.state_dict())
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_loaded(loaded, state, atol=0.0):
    got = loaded.model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert got[k].dtype == torch.float32, k
        torch.testing.assert_close(got[k], v.float(), atol=atol, rtol=0)


def test_safetensors_float32_with_labels(tmp_path, source):
    path = tmp_path / "w.safetensors"
    labels = ["a", "b", "c", "d", "e"]
    save_file(source, str(path), metadata={LABELS_METADATA_KEY: json.dumps(labels)})
    loaded = load_model(SMALL, weights=path)
    _assert_loaded(loaded, source)
    assert loaded.input_size == (SIZE, SIZE)  # read from the checkpoint's position embedding
    assert loaded.num_classes == 5 and loaded.labels == labels and loaded.label(2) == "c"
    assert loaded.weights == str(path)


def test_safetensors_float16(tmp_path, source):
    path = tmp_path / "w16.safetensors"
    save_file({k: v.half() for k, v in source.items()}, str(path))
    loaded = load_model(SMALL, weights=path)
    _assert_loaded(loaded, {k: v.half().float() for k, v in source.items()})
    assert loaded.labels is None and loaded.label(3) == "class_3"


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module_prefix"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pth_plain_and_nested(tmp_path, source, wrap, dtype):
    state = {k: v.to(dtype) for k, v in source.items()}
    if wrap == "module_prefix":  # saved from a DataParallel / DDP wrapper
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif wrap == "plain":
        obj = state
    else:  # a training checkpoint: weights nested, with other entries beside them
        obj = {wrap: state, "epoch": 12, "labels": list("vwxyz")}
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    loaded = load_model(SMALL, weights=path)
    _assert_loaded(loaded, {k: v.float() for k, v in state.items()})
    if wrap in ("state_dict", "model"):
        assert loaded.labels == list("vwxyz")


def test_headless_checkpoint_gives_a_headless_model(tmp_path, source):
    path = tmp_path / "backbone.safetensors"
    save_file({k: v for k, v in source.items() if not k.startswith("head.")}, str(path))
    loaded = load_model(SMALL, weights=path)
    assert loaded.headless and loaded.num_classes == 0 and loaded.labels is None
    out = loaded.model(torch.zeros(1, 3, SIZE, SIZE))
    assert out.shape == (1, loaded.model.num_features)


def test_checkpoint_at_another_input_size_is_resampled(tmp_path, source):
    path = tmp_path / "w.safetensors"
    save_file(source, str(path))
    loaded = load_model(SMALL, weights=path, img_size=96)
    assert loaded.input_size == (96, 96) and loaded.grid == (6, 6)
    assert loaded.model.pos_embed.shape == (1, 1 + 36, source["pos_embed"].shape[-1])
    torch.testing.assert_close(loaded.model.pos_embed[:, :1], source["pos_embed"][:, :1])  # class token kept


def test_a_checkpoint_of_another_architecture_names_the_keys(tmp_path):
    other = load_model("deit_tiny_distilled_patch16_224", random_init=True, img_size=SIZE).model.state_dict()
    path = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(path))
    with pytest.raises(ModelError) as info:
        load_model(SMALL, weights=path)
    msg = str(info.value)
    assert "do not fit 'vit_tiny_patch16_224'" in msg
    assert "unexpected" in msg and "dist_token" in msg and "head_dist.weight" in msg
    assert "pos_embed" in msg  # 2 + 16 tokens cannot be a vit_tiny grid with one prefix token


def test_a_wider_model_names_the_wrong_shapes(tmp_path):
    other = load_model("vit_small_patch16_224", random_init=True, img_size=SIZE).model.state_dict()
    path = tmp_path / "small.pth"
    torch.save(other, path)
    with pytest.raises(ModelError, match=r"wrong shapes: .*\(384,\) vs \(192,\)"):
        load_model(SMALL, weights=path, img_size=SIZE)


def test_missing_and_unexpected_keys_are_listed(tmp_path, source):
    state = dict(source)
    del state["blocks.0.attn.qkv.weight"], state["norm.bias"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError) as info:
        load_model(SMALL, weights=path)
    msg = str(info.value)
    assert "2 missing" in msg and "blocks.0.attn.qkv.weight" in msg and "norm.bias" in msg
    assert "1 unexpected" in msg and "extra.weight" in msg
    assert "--model" in msg  # says what to check


@pytest.mark.parametrize("name,content,match", [
    ("bad.safetensors", b"\x00" * 7 + b"garbage", "cannot read weights file"),
    ("bad.pth", b"PK\x03\x04 not really a zip", "cannot read weights file"),
    ("empty.pth", b"", "cannot read weights file"),
    ("w.onnx", b"onnx", "unknown format"),
])
def test_corrupt_or_foreign_files(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load_model(SMALL, weights=path)


def test_truncated_safetensors(tmp_path, source):
    path = tmp_path / "w.safetensors"
    save_file(source, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match="cannot read weights file"):
        read_state_dict(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"weights": [1, 2, 3], "epoch": 1}, path)
    with pytest.raises(ModelError, match="does not hold a state dict of tensors.*weights"):
        read_state_dict(path)
    module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), module)  # a pickled module, not a state dict: not loaded (unsafe)
    with pytest.raises(ModelError, match="cannot read weights file.*state_dict"):
        read_state_dict(module)


def test_missing_file_and_conflicting_options(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(SMALL, weights=tmp_path / "nope.safetensors")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(ModelError, match="not both"):
        load_model(SMALL, weights=tmp_path / "w.pth", random_init=True)


def test_a_weights_folder_is_called_a_folder(tmp_path):
    # before: "weights file '<folder>' does not exist", though it does (it is a folder)
    with pytest.raises(ModelError, match="is a folder; pass the checkpoint file itself"):
        read_state_dict(tmp_path)


@pytest.mark.parametrize("name", ["W.PTH", "w.SafeTensors"])
def test_suffixes_are_case_insensitive(tmp_path, source, name):
    # before: "unknown format" for an upper-case .PTH / .SAFETENSORS (as Windows tools may write)
    path = tmp_path / name
    if name.lower().endswith(".pth"):
        torch.save(source, path)
    else:
        save_file(source, str(path))
    state, _ = read_state_dict(path)
    assert set(state) == set(source)

"""What is explained: defaults per model kind, the feature-norm and cosine targets of headless backbones, and the
reference embeddings of ``cosine:<mean|image|folder|vector>``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from compute.capture import capture
from compute.methods import REGISTRY
from compute.models import load_model
from compute.targets import embed, mean_embedding, parse_target, reference_embedding, resolve_target


@pytest.fixture(scope="module")
def backbone():
    """A headless DINOv2-S/14 with random weights at 56 px (4x4 patches): quick, and the real output kind."""
    return load_model("vit_small_patch14_dinov2", random_init=True, img_size=56)


@pytest.fixture(scope="module")
def x(backbone):
    return torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(0))


@pytest.fixture()
def image_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (64, 64), (20, 50)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_defaults_and_refusals():
    assert parse_target(None, headless=False).kind == "logit"
    assert parse_target(None, headless=True).kind == "cls_norm"
    for spec in ("top1", "class:3"):
        with pytest.raises(ValueError, match="headless: use cls_norm or cosine"):
            parse_target(spec, headless=True)
    with pytest.raises(ValueError, match="unknown target.*cosine:<mean"):
        parse_target("similarity", headless=True)
    with pytest.raises(ValueError, match="bad target 'cosine:'"):
        parse_target("cosine:", headless=True)


def test_cosine_spec_names_its_reference_and_must_be_bound(backbone, x):
    target = parse_target("cosine:/some/dir:with:colons", headless=True)
    assert (target.kind, target.reference, target.needs_reference) == ("cosine", "/some/dir:with:colons", True)
    with pytest.raises(ValueError, match="no reference embedding yet.*resolve_target"):
        capture(backbone.model, x, {"attn"}, target=target)
    with pytest.raises(ValueError, match="takes no reference"):
        parse_target("cls_norm", headless=True).bind(torch.ones(3))


def test_cls_norm_is_the_pooled_feature_norm(backbone, x):
    cap = capture(backbone.model, x, {"attn"}, target=parse_target("cls_norm", headless=True))
    torch.testing.assert_close(cap.target_value, backbone.model(x).norm(dim=-1))
    assert (cap.target_class == -1).all()


def test_cosine_value_gradient_and_independence(backbone, x):
    ref = torch.randn(backbone.model.num_features, generator=torch.Generator().manual_seed(1))
    target = parse_target("cosine:ref.npy", headless=True).bind(ref * 7.0)  # scale of the reference is irrelevant
    assert not target.needs_reference and len(target.reference_digest) == 12
    assert target.reference_digest == parse_target("cosine:other", True).bind(ref).reference_digest
    cap = capture(backbone.model, x, {"input_grad"}, target=target)
    feats = backbone.model(x)
    torch.testing.assert_close(cap.target_value, F.cosine_similarity(feats, ref[None], dim=-1))
    assert (cap.target_class == -1).all()
    # the gradient of image i's value does not depend on the other images
    alone = capture(backbone.model, x[1:2], {"input_grad"}, target=target)
    torch.testing.assert_close(cap.input_grad[1:2], alone.input_grad, atol=1e-6, rtol=1e-4)
    # reversing the reference reverses the gradient
    flipped = capture(backbone.model, x, {"input_grad"}, target=parse_target("cosine:r", True).bind(-ref))
    torch.testing.assert_close(flipped.input_grad, -cap.input_grad, atol=1e-6, rtol=1e-4)


def test_reference_of_the_wrong_width_is_refused(backbone, x):
    target = parse_target("cosine:ref", headless=True).bind(torch.ones(5))
    with pytest.raises(ValueError, match="5 dimensions but the model outputs"):
        capture(backbone.model, x, {"attn"}, target=target)


def test_mean_reference_is_the_mean_direction_of_the_runs_images(backbone, x):
    expected = F.normalize(embed(backbone.model, x), dim=-1).mean(0)
    batches = [x[:2], x[2:]]  # the runner's batches, possibly of unequal sizes
    torch.testing.assert_close(reference_embedding("mean", backbone.model, images=batches), expected)
    torch.testing.assert_close(reference_embedding("mean", backbone.model, images=lambda: iter(batches)), expected)
    target = resolve_target("cosine:mean", backbone, images=lambda: batches)
    cap = capture(backbone.model, x, {"attn"}, target=target)
    torch.testing.assert_close(cap.target_value, F.cosine_similarity(backbone.model(x), expected[None], dim=-1))
    with pytest.raises(ValueError, match="needs the run's images"):
        resolve_target("cosine:mean", backbone)
    with pytest.raises(ValueError, match="no images"):
        mean_embedding(backbone.model, [])


def test_image_and_folder_references(backbone, image_dir):
    pre = backbone.preprocess()
    files = sorted(image_dir.glob("*.png"))
    embs = embed(backbone.model, torch.stack([pre(Image.open(f).convert("RGB")) for f in files]))
    one = reference_embedding(str(files[1]), backbone.model, pre)
    torch.testing.assert_close(one, F.normalize(embs[1], dim=0))
    folder = reference_embedding(str(image_dir), backbone.model, pre, batch_size=2)
    torch.testing.assert_close(folder, F.normalize(embs, dim=-1).mean(0))
    target = resolve_target(f"cosine:{files[0]}", backbone)
    assert target.kind == "cosine" and target.spec == f"cosine:{files[0]}"
    value, _ = target(embs)
    assert value[0] == pytest.approx(1.0, abs=1e-5)  # an image is most similar to itself


def test_vector_references_and_bad_references(backbone, tmp_path, image_dir):
    vec = np.arange(1, backbone.model.num_features + 1, dtype=np.float32)
    np.save(tmp_path / "ref.npy", vec)
    torch.testing.assert_close(reference_embedding(str(tmp_path / "ref.npy"), backbone.model), torch.from_numpy(vec))
    rows = torch.randn(4, backbone.model.num_features)
    torch.save(rows, tmp_path / "rows.pt")
    torch.testing.assert_close(reference_embedding(str(tmp_path / "rows.pt"), backbone.model),
                               F.normalize(rows, dim=-1).mean(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        reference_embedding(str(tmp_path / "empty"), backbone.model, backbone.preprocess())
    with pytest.raises(ValueError, match="not 'mean', an image file, a folder"):
        reference_embedding(str(tmp_path / "missing.jpg"), backbone.model, backbone.preprocess())
    (tmp_path / "bad.npy").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="cannot read the reference embedding"):
        reference_embedding(str(tmp_path / "bad.npy"), backbone.model)
    (image_dir / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read reference image.*broken.png"):
        reference_embedding(str(image_dir), backbone.model, backbone.preprocess())


def test_every_method_runs_on_a_headless_backbone_with_a_cosine_target(backbone, x):
    target = resolve_target("cosine:mean", backbone, images=[x])
    requires = set().union(*(cls.requires for cls in REGISTRY.values())) - {"internals"}
    cap = capture(backbone.model, x, requires, target=target)
    for name, cls in sorted(REGISTRY.items()):
        if cls.requires <= requires:
            maps = cls()(cap)
            assert maps.shape[0] == 3 and torch.isfinite(maps).all(), name


def test_a_missing_reference_says_it_does_not_exist(backbone, tmp_path):
    # before: "reference '.../ref.npy' is not 'mean', an image file, ..." without saying the path is absent
    with pytest.raises(ValueError, match=r"ref.npy' does not exist \(no such file or folder\)"):
        reference_embedding(str(tmp_path / "ref.npy"), backbone.model, backbone.preprocess())


def test_an_unreadable_embedding_file_gets_a_one_line_reason(backbone, tmp_path):
    # before: torch.load's whole multi-line weights_only explanation was pasted into the error
    path = tmp_path / "ref.pt"
    path.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="cannot read the reference embedding") as info:
        reference_embedding(str(path), backbone.model)
    assert "\n" not in str(info.value)
    assert "numpy.save or torch.save" in str(info.value)

"""What is explained: one scalar per image, computed from the model's output.

- ``top1``: the logit of the predicted class (the default for a classifier);
- ``class:<i>``: the logit of class ``i`` for every image;
- ``cls_norm``: the L2 norm of the pooled feature vector (for a headless backbone, whose output is that vector);
- ``cosine:<ref>``: the cosine similarity of the model's output vector — a headless backbone's pooled feature,
  what it is meant for (a classifier's would be its logit vector) — to a reference embedding, computed once
  before the run with the same model and preprocessing (:func:`reference_embedding`):

  - ``cosine:mean``: the mean embedding of the images being explained (the run's own images, a first no-grad
    pass over them);
  - ``cosine:<image file>``: the embedding of that image;
  - ``cosine:<folder>``: the mean embedding of the images in that folder (not recursive);
  - ``cosine:<file>.npy`` / ``.pt``: a stored embedding vector (or rows of embeddings, averaged).

  A mean embedding is the mean of the L2-normalised embeddings (the mean direction, a prototype), so that no
  image weighs more because its feature norm is larger. A cosine target's class index is -1 (not a class).
- ``voc_lse`` (built by :func:`voc_logsumexp`, not from the command line): per image, the log-sum-exp of the
  logits of the ImageNet classes that count as one VOC class — the logit of "any of these classes", whose
  softmax probability is the sum of theirs. Its class index is the VOC class (1..20), not a head class.

A target is a function ``outputs [B, K] -> (value [B], class index [B], -1 where not a class)`` plus a ``kind``
stored with every row so that readers know what was explained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Target:
    kind: str  # stored in metrics.target_kind
    spec: str  # as given on the command line
    fn: Callable[[Tensor], tuple[Tensor, Tensor]]
    reference: str | None = None  # what a cosine target compares with ("mean", a path), before it is bound
    reference_digest: str | None = None  # sha1 prefix of the bound unit reference vector at 1e-5 (for the manifest)

    def __call__(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        return self.fn(outputs)

    @property
    def needs_reference(self) -> bool:
        """True for a cosine target whose reference embedding has not been computed yet."""
        return self.reference is not None and self.reference_digest is None

    def bind(self, embedding: Tensor) -> "Target":
        """This cosine target with its reference embedding ``[K]`` (see :func:`reference_embedding`)."""
        if self.reference is None:
            raise ValueError(f"target {self.spec!r} takes no reference embedding")
        ref = torch.nn.functional.normalize(embedding.detach().float().flatten().cpu(), dim=0)
        # rounded so that float noise (another device, batch size or scale of the reference) keeps the digest
        digest = hashlib.sha1((ref * 1e5).round().to(torch.int64).numpy().tobytes()).hexdigest()[:12]
        return replace(self, fn=_cosine(ref), reference_digest=digest)


def _top1(outputs: Tensor) -> tuple[Tensor, Tensor]:
    classes = outputs.argmax(dim=-1)
    return outputs.gather(1, classes[:, None])[:, 0], classes


def _fixed(index: int) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        if not 0 <= index < outputs.shape[1]:
            raise ValueError(f"target class {index} is outside the head's 0..{outputs.shape[1] - 1}")
        classes = torch.full((outputs.shape[0],), index, dtype=torch.long, device=outputs.device)
        return outputs[:, index], classes

    return fn


def per_image_classes(classes: Tensor | list[int]) -> Target:
    """Explain a given class per image (used by protocols that explain each present class)."""
    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(classes, device=outputs.device, dtype=torch.long)
        return outputs.gather(1, idx[:, None])[:, 0], idx

    return Target("logit", "per-image", fn)


def voc_logsumexp(member_sets: list[tuple[int, ...]] | list[list[int]], voc_classes: list[int]) -> Target:
    """Per image ``b``: logsumexp of the logits ``member_sets[b]``; class index ``voc_classes[b]``."""
    if len(member_sets) != len(voc_classes):
        raise ValueError("one member set per image is needed")
    if any(len(m) == 0 for m in member_sets):
        raise ValueError("a VOC class with no ImageNet class cannot be explained")

    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        if outputs.shape[0] != len(member_sets):
            raise ValueError(f"{len(member_sets)} member sets for a batch of {outputs.shape[0]}")
        keep = torch.zeros(outputs.shape, dtype=torch.bool, device=outputs.device)
        for b, members in enumerate(member_sets):
            keep[b, list(members)] = True
        value = torch.logsumexp(outputs.masked_fill(~keep, float("-inf")), dim=1)
        return value, torch.as_tensor(voc_classes, dtype=torch.long, device=outputs.device)

    return Target("voc_lse", "present", fn)


def _cls_norm(outputs: Tensor) -> tuple[Tensor, Tensor]:
    return outputs.norm(dim=-1), torch.full((outputs.shape[0],), -1, dtype=torch.long, device=outputs.device)


def _cosine(reference: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        if outputs.ndim != 2 or outputs.shape[1] != reference.numel():
            raise ValueError(f"the reference embedding has {reference.numel()} dimensions but the model outputs "
                             f"{tuple(outputs.shape[1:])}; compute the reference with the same model")
        ref = reference.to(device=outputs.device, dtype=outputs.dtype)
        value = torch.nn.functional.cosine_similarity(outputs, ref[None, :], dim=-1)
        return value, torch.full((outputs.shape[0],), -1, dtype=torch.long, device=outputs.device)

    return fn


def _unbound(spec: str) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def fn(outputs: Tensor) -> tuple[Tensor, Tensor]:
        raise ValueError(f"target {spec!r} has no reference embedding yet: build it with "
                         "compute.targets.resolve_target(spec, loaded, images=...) or Target.bind(embedding)")

    return fn


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
EMBEDDING_SUFFIXES = (".npy", ".pt", ".pth")


@torch.no_grad()
def embed(model: torch.nn.Module, x: Tensor, batch_size: int = 16) -> Tensor:
    """The model's output vectors ``[B, K]`` (float32) for preprocessed images ``x`` — what targets see."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        parts = [model(x[i:i + batch_size].to(device=device, dtype=dtype)).float()
                 for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def mean_embedding(model: torch.nn.Module, batches: Iterable[Tensor], batch_size: int = 16) -> Tensor:
    """Mean of the L2-normalised output vectors of every image in ``batches`` (tensors ``[B, 3, H, W]``)."""
    total, count = None, 0
    for x in batches:
        e = torch.nn.functional.normalize(embed(model, x, batch_size), dim=-1)
        total = e.sum(0) if total is None else total + e.sum(0)
        count += e.shape[0]
    if not count:
        raise ValueError("no images to average for the reference embedding")
    return total / count


def reference_embedding(reference: str, model: torch.nn.Module, preprocess: Callable | None = None,
                        images: Iterable[Tensor] | Callable[[], Iterable[Tensor]] | None = None,
                        batch_size: int = 16) -> Tensor:
    """The reference vector ``[K]`` of a ``cosine:<reference>`` target.

    ``reference`` is ``"mean"`` (then ``images`` — preprocessed batches ``[B, 3, H, W]`` of the run's images, or a
    callable returning them — is required), an image file, a folder of images, or an embedding file
    (``.npy``/``.pt``: a vector ``[K]`` or rows ``[M, K]``, averaged as normalised rows). Images are read with
    ``preprocess`` (a PIL image -> ``[3, H, W]`` callable, e.g. ``LoadedModel.preprocess()``).
    """
    if reference == "mean":
        if images is None:
            raise ValueError("target 'cosine:mean' needs the run's images: pass images= (preprocessed batches)")
        return mean_embedding(model, images() if callable(images) else images, batch_size)
    path = Path(reference).expanduser()
    if not path.exists():
        raise ValueError(f"reference {reference!r} does not exist (no such file or folder), so it is not 'mean', "
                         f"an image file, a folder of images or an embedding file ({', '.join(EMBEDDING_SUFFIXES)})")
    if path.is_file() and path.suffix.lower() in EMBEDDING_SUFFIXES:
        try:
            if path.suffix.lower() == ".npy":
                import numpy as np

                vec = torch.from_numpy(np.load(path, allow_pickle=False)).float()
            else:
                vec = torch.load(str(path), map_location="cpu", weights_only=True)
                vec = vec.float() if isinstance(vec, Tensor) else None
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot read the reference embedding {str(path)!r} ({type(exc).__name__}: {first}); "
                             "expected a tensor [K] or [M, K] saved with numpy.save or torch.save") from exc
        if vec is None or vec.ndim not in (1, 2) or vec.numel() == 0:
            raise ValueError(f"reference embedding {str(path)!r} must hold a tensor [K] or [M, K]")
        return vec if vec.ndim == 1 else torch.nn.functional.normalize(vec, dim=-1).mean(0)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"reference folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        files = [path]
    else:
        raise ValueError(f"reference {reference!r} is not 'mean', an image file, a folder of images or an "
                         f"embedding file ({', '.join(EMBEDDING_SUFFIXES)})")
    if preprocess is None:
        raise ValueError("a reference image needs the model's preprocessing: pass preprocess=")
    from PIL import Image

    def batches():
        for i in range(0, len(files), batch_size):
            xs = []
            for f in files[i:i + batch_size]:
                try:
                    with Image.open(f) as im:
                        xs.append(preprocess(im.convert("RGB")))
                except OSError as exc:
                    raise ValueError(f"cannot read reference image {str(f)!r}: {exc}") from exc
            yield torch.stack(xs)

    return mean_embedding(model, batches(), batch_size)


def resolve_target(spec: str | None, loaded, images: Iterable[Tensor] | Callable[[], Iterable[Tensor]] | None = None,
                   batch_size: int = 16) -> Target:
    """:func:`parse_target` plus, for a cosine target, its reference embedding computed with ``loaded`` (a
    :class:`compute.models.LoadedModel`); ``images`` supplies the run's preprocessed batches for ``cosine:mean``
    and is only iterated then."""
    target = parse_target(spec, loaded.headless)
    if not target.needs_reference:
        return target
    ref = reference_embedding(target.reference, loaded.model, loaded.preprocess(), images, batch_size)
    return target.bind(ref)


TARGET_HELP = ("top1 (predicted class), class:<index>, cls_norm (pooled-feature norm, for headless backbones) or "
               "cosine:<mean|image|folder|embedding.npy> (cosine similarity of the pooled feature to a reference)")


def parse_target(spec: str | None, headless: bool) -> Target:
    """``None`` picks the default: ``top1`` for a classifier, ``cls_norm`` for a headless backbone."""
    spec = (spec or ("cls_norm" if headless else "top1")).strip()
    if spec == "top1":
        if headless:
            raise ValueError("target 'top1' needs a classification head; this model is headless: use cls_norm "
                             "or cosine:<mean|image|folder>")
        return Target("logit", spec, _top1)
    if spec.startswith("class:"):
        if headless:
            raise ValueError(f"target {spec!r} needs a classification head; this model is headless: use "
                             "cls_norm or cosine:<mean|image|folder>")
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"bad target {spec!r}: write class:<integer index>") from None
        return Target("logit", spec, _fixed(index))
    if spec == "cls_norm":
        return Target("cls_norm", spec, _cls_norm)
    if spec.startswith("cosine:"):
        reference = spec.split(":", 1)[1].strip()
        if not reference:
            raise ValueError(f"bad target {spec!r}: write cosine:mean, cosine:<image>, cosine:<folder> or "
                             "cosine:<embedding.npy>")
        return Target("cosine", spec, _unbound(spec), reference=reference)
    raise ValueError(f"unknown target {spec!r}; choose {TARGET_HELP}")

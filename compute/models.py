"""timm Vision Transformers by name, with weights from the hub, a local file, or a seeded random init.

Supported: the plain ViT block structure of timm's ``VisionTransformer`` whose output is read from the class
token — ViT (``vit_*``, also hybrid CNN stems and CLIP towers), DeiT / DeiT III (``deit_*``, ``deit3_*``, the
distilled ones too) and DINO / DINOv2 (``*_dinov2``, with register tokens too). Every method reads per-block
attention of the class token, which other models lack in that form; they are refused with a message naming the
supported families, before anything is downloaded:

- hierarchical or windowed models (Swin, ConvNeXt, MaxViT, ...): no global token attention per block;
- rotary-position or other non-standard attention (EVA-02, DINOv3, ``vit_*_rope_*``, relative-position ViTs,
  parallel blocks): the attention is not timm's plain ``Attention``;
- ViTs without a class token or that do not pool their output from it (``*_gap``, SigLIP's attention pooling,
  BEiT-3's average pooling): the class token's row does not explain the output.

Prefix tokens. timm puts ``num_prefix_tokens`` tokens before the patches: the class token (index 0), then a
DeiT's distillation token or a DINOv2's register tokens. Maps follow the literature's reading (Dosovitskiy et al.
2021, Touvron et al. 2021, Darcet et al. 2024): the class token's row over the *patch* tokens only; the other
prefix tokens take part in every attention (and in rollout-style products) but get no place on the map.
For a distilled DeiT the output is the mean of the class and distillation heads, so gradient-based methods see
both; the map still reads the class token's row. The patch grid and the number of prefix tokens are the model's
own (:attr:`LoadedModel.grid`, :attr:`LoadedModel.num_prefix_tokens`); nothing assumes 224 px, 16-px patches or
a single prefix token.

Input size. ``img_size`` builds the model for another input size (one number, or ``(height, width)``;
multiples of the patch size, anything else is refused); the position embedding (hub or file) is resampled to
the new grid. Without ``img_size`` a local checkpoint runs at the size its position embedding was made for
(e.g. 224 for a DINOv2 file resampled to a 16x16 grid), hub weights and random init at the model's default.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from compute import DEFAULT_MODEL

SUPPORTED_FAMILIES = ("vit_* (class-token ViTs)", "deit_* / deit3_* (distilled too)",
                      "*_dinov2 (with registers too)")
# timm modules whose models are built from the plain ViT block; other modules (swin_transformer, eva, ...) are not.
SUPPORTED_MODULES = ("timm.models.vision_transformer", "timm.models.deit", "timm.models.vision_transformer_hybrid")
LABELS_METADATA_KEY = "vitlens.labels"


class ModelError(ValueError):
    """The model name, weights or architecture cannot be used; the message says what to do."""


@dataclass
class LoadedModel:
    """A ready-to-explain model with everything downstream needs to know about it."""

    model: torch.nn.Module
    name: str
    weights: str  # "hub", "random(seed=S)" or the file path
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: tuple[int, int]  # (H, W)
    interpolation: str
    labels: list[str] | None  # class names of the head, or None (headless or unknown)
    meta: dict = field(default_factory=dict)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.model.num_prefix_tokens)

    @property
    def grid(self) -> tuple[int, int]:
        gh, gw = self.model.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def patch_size(self) -> tuple[int, int]:
        h, w = self.input_size
        gh, gw = self.grid
        return h // gh, w // gw

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or 0)

    @property
    def headless(self) -> bool:
        return self.num_classes == 0

    def label(self, index: int | None) -> str | None:
        if index is None or index < 0:
            return None
        if self.labels and index < len(self.labels):
            return self.labels[index]
        return f"class_{index}"

    def preprocess(self) -> "Preprocess":
        return Preprocess(self.input_size, self.mean, self.std, self.interpolation)


@dataclass(frozen=True)
class Preprocess:
    """PIL image -> normalised float tensor [3, H, W], following the model's pretrained config.

    The whole image is resized to the model's input size (no centre crop), so that every pixel of the
    ground-truth mask has a place on the explanation map.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}.get(
            self.interpolation, Image.BICUBIC)
        resized = image.convert("RGB").resize((self.size[1], self.size[0]), resample)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std


def _refusal(name: str, why: str) -> ModelError:
    return ModelError(
        f"model {name!r} is not supported: {why}. vitlens explains plain ViT blocks whose output is read from "
        f"the class token; supported families: {', '.join(SUPPORTED_FAMILIES)} (`vitlens models [PATTERN]` lists "
        "them). Hierarchical or windowed models (Swin, ConvNeXt, MaxViT, ...) have no per-block token attention "
        "to explain; rotary-position ViTs (EVA-02, DINOv3, *_rope_*) and ViTs without a class token (*_gap, "
        "SigLIP) are not handled.")


def _timm_module(name: str) -> str:
    import timm
    from timm.models import get_arch_name, model_entrypoint

    return model_entrypoint(get_arch_name(name)).__module__ if timm.is_model(name) else ""


def check_model_name(name: str) -> None:
    """Refuse unknown names and names timm builds with a model class vitlens cannot explain (no download)."""
    import timm

    if timm.is_model(name):
        module = _timm_module(name)
        if module not in SUPPORTED_MODULES:
            raise _refusal(name, f"timm builds it with {module.rsplit('.', 1)[-1]}, not the plain ViT")
        return
    candidates = list_supported_models()
    close = difflib.get_close_matches(name.split(".")[0], candidates, n=8, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ModelError(
        f"unknown model {name!r}.{hint} Supported families: {', '.join(SUPPORTED_FAMILIES)}; "
        f"`vitlens models [PATTERN]` lists the {len(candidates)} names timm offers for them.")


# Name parts of models that timm builds with the ViT class but without a class-token readout or with
# non-plain blocks (for listing only; :func:`probe_architecture` decides for a given name).
_UNSUPPORTED_NAME_PARTS = ("_gap", "_map_", "siglip", "aimv2", "beit3", "eva_large", "_xp_", "_18x2", "_rpn")


def _family_ok(arch: str) -> bool:
    """Cheap name-level filter (timm module and name); :func:`probe_architecture` decides for a given name."""
    return (not arch.startswith("test_") and not any(p in arch for p in _UNSUPPORTED_NAME_PARTS)
            and _timm_module(arch) in SUPPORTED_MODULES)


def list_supported_models(pattern: str = "*", verify: bool = False) -> list[str]:
    """timm names of the supported families (by timm module and name); ``verify`` also builds each on the meta
    device (no weights or memory, a fraction of a second each) and keeps those :func:`check_architecture`
    accepts — the same list for timm 1.0.31, where the name filter was checked against it."""
    import timm

    names = [m for m in timm.list_models(pattern) if _family_ok(m)]
    if verify:
        names = [m for m in names if _probe_ok(m)]
    return names


def _probe_ok(name: str) -> bool:
    try:
        probe_architecture(name)
    except ModelError:
        return False
    return True


def probe_architecture(name: str, **kwargs) -> torch.nn.Module | None:
    """Build ``name`` on the meta device (no weights, no download, no memory) and check its architecture.

    Returns the shape-only model (for its grid, patch size and prefix tokens), or None where timm cannot build
    it on the meta device (then the check happens on the real model).
    """
    import timm

    check_model_name(name)
    try:
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked after the real build
        return None
    check_architecture(probe, name)
    return probe


def check_architecture(model: torch.nn.Module, name: str) -> None:
    """Refuse models whose blocks are not timm's plain ViT block with standard multi-head attention, or whose
    output is not read from the class token."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    why = None
    if not isinstance(model, VisionTransformer):
        why = f"it is a {type(model).__name__}, not a timm VisionTransformer"
    elif getattr(model, "cls_token", None) is None:
        why = "it has no class token (the methods read the class token's attention row)"
    elif getattr(model, "global_pool", "token") != "token" or getattr(model, "attn_pool", None) is not None:
        why = (f"it pools its output with {getattr(model, 'global_pool', None)!r}, not from the class token, so "
               "the class token's attention row does not explain the output")
    else:
        for i, block in enumerate(model.blocks):
            if type(block) is not Block or type(block.attn) is not Attention:
                why = f"block {i} is a {type(block).__name__} with {type(getattr(block, 'attn', None)).__name__}"
                break
            if getattr(block.attn, "gate", None) is not None:
                why = f"block {i} uses gated attention"
                break
    if why:
        raise _refusal(name, why)


def _size_pair(img_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(img_size, (tuple, list)):
        if len(img_size) != 2:
            raise ModelError(f"img_size must be one number or (height, width), not {img_size!r}")
        h, w = (int(v) for v in img_size)
    else:
        h = w = int(img_size)
    if h <= 0 or w <= 0:
        raise ModelError(f"--img-size must be a positive number of pixels, not {img_size!r}")
    return h, w


def _check_img_size(name: str, size: tuple[int, int], probe: torch.nn.Module | None) -> None:
    patch = getattr(getattr(probe, "patch_embed", None), "patch_size", None)
    if probe is not None and type(probe.patch_embed).__name__ == "PatchEmbed" and patch is not None:
        for side, p in zip(size, patch):
            if side % p:
                lo, hi = side // p * p, -(-side // p) * p
                raise ModelError(
                    f"--img-size {side} is not a multiple of {name!r}'s patch size {p}: the border pixels would "
                    f"have no patch (and no place on the map). Use {lo or hi} or {hi}.")


def _checkpoint_img_size(state: dict[str, torch.Tensor], probe: torch.nn.Module | None) -> int | None:
    """The square input size a checkpoint's position embedding was made for, where it differs from the
    model's default and can be read unambiguously (plain patch embedding, square grid)."""
    if probe is None or "pos_embed" not in state or type(probe.patch_embed).__name__ != "PatchEmbed":
        return None
    prefix = 0 if getattr(probe, "no_embed_class", False) else int(probe.num_prefix_tokens)
    n = int(state["pos_embed"].shape[1]) - prefix
    side = math.isqrt(max(n, 0))
    ph, pw = probe.patch_embed.patch_size
    if n <= 0 or side * side != n or ph != pw or (side, side) == tuple(probe.patch_embed.grid_size):
        return None
    return side * ph


def load_model(name: str = DEFAULT_MODEL, weights: str | Path | None = None, random_init: bool = False,
               img_size: int | tuple[int, int] | None = None, device: str | torch.device = "cpu",
               seed: int = 0) -> LoadedModel:
    """Create ``name`` from timm and load its weights.

    - default: the pretrained weights from the hub (needs internet the first time; timm caches them);
    - ``weights=FILE``: a local ``.safetensors`` / ``.pth`` / ``.pt`` state dict (float16 or float32), checked
      key by key against the architecture;
    - ``random_init=True``: timm's own initialisation, seeded (for tests and offline smoke runs).

    ``img_size`` (pixels, one number or ``(height, width)``, multiples of the patch size) builds the model for
    that input; without it a checkpoint runs at the size its position embedding encodes, hub weights and random
    init at the model's default. Unsupported models are refused before anything is downloaded.
    """
    import timm
    from timm.data import resolve_data_config

    if weights is not None and random_init:
        raise ModelError("choose one of --weights FILE and --random-init, not both")
    probe = probe_architecture(name)  # refuses unsupported models before any download or allocation
    kwargs = {}
    state_dict, labels = None, None
    if weights is not None:
        state_dict, labels = read_state_dict(weights)
        kwargs["num_classes"] = int(state_dict["head.weight"].shape[0]) if "head.weight" in state_dict else 0
        if img_size is None:
            img_size = _checkpoint_img_size(state_dict, probe)
    if img_size is not None:
        img_size = _size_pair(img_size)
        _check_img_size(name, img_size, probe)
        kwargs["img_size"] = img_size if img_size[0] != img_size[1] else img_size[0]
    torch.manual_seed(seed)
    try:
        model = _shell(name, kwargs) if state_dict is not None else None
        if model is None:
            model = timm.create_model(name, pretrained=weights is None and not random_init, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # hub unreachable, bad cache, bad kwargs
        if weights is None and not random_init:
            raise ModelError(
                f"could not fetch pretrained weights for {name!r} ({type(exc).__name__}: {exc}). Without internet "
                "pass --weights FILE (a local checkpoint) or --random-init.") from exc
        raise ModelError(f"could not create {name!r}: {exc}") from exc
    check_architecture(model, name)
    if state_dict is not None:
        _load_checked(model, state_dict, name, Path(weights))
        weights_desc = str(weights)
    else:
        weights_desc = f"random(seed={seed})" if random_init else "hub"
    model.eval().requires_grad_(False).to(device)

    cfg = resolve_data_config({}, model=model)
    input_size = tuple(int(s) for s in cfg["input_size"][1:])
    if img_size is not None:
        input_size = img_size
    if labels is None and getattr(model, "num_classes", 0) == 1000:
        labels = imagenet_labels()
    return LoadedModel(model=model, name=name, weights=weights_desc, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       input_size=input_size, interpolation=cfg.get("interpolation", "bicubic"), labels=labels)


def _shell(name: str, kwargs: dict) -> torch.nn.Module | None:
    """The model with allocated but uninitialised parameters, for a checkpoint that sets every one of them (the
    strict key check guarantees it); skips timm's random init, which can take longer than reading the file.
    None where that is not safe: a model with buffers outside its state dict, or one the meta device cannot build.
    """
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception:  # noqa: BLE001 - fall back to a normal build
        return None
    persistent = set(model.state_dict())
    if any(n not in persistent for n, _ in model.named_buffers()):
        return None
    return model.to_empty(device="cpu")


def imagenet_labels() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Read a checkpoint as a float32 state dict (+ class names if the file carries them)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ModelError(f"weights {str(path)!r} is a folder; pass the checkpoint file itself "
                         "(.safetensors, .pth or .pt)")
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist")
    labels = None
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            state = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if LABELS_METADATA_KEY in meta:
                labels = json.loads(meta[LABELS_METADATA_KEY])
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            for key in ("state_dict", "model", "model_state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    labels = state.get("labels") or labels
                    state = state[key]
                    break
        else:
            raise ModelError(f"weights file {path.name!r}: unknown format; use .safetensors, .pth or .pt")
    except ModelError:
        raise
    except Exception as exc:  # corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot read weights file {str(path)!r} ({type(exc).__name__}: {first}); expected a "
                         "state dict saved with safetensors or torch.save(model.state_dict())") from exc
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)][:6] if isinstance(state, dict) else []
        raise ModelError(f"weights file {str(path)!r} does not hold a state dict of tensors"
                         + (f" (non-tensor entries: {', '.join(map(str, bad))})" if bad else ""))
    state = {k.removeprefix("module."): (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, labels


def _load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        # another input size: resample the grid part, where the checkpoint's grid can be read (a square after
        # the model's prefix tokens, same width); otherwise the shape mismatch is reported below
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        pos = state["pos_embed"]
        n = int(pos.shape[1]) - prefix if pos.ndim == 3 else -1
        if n > 0 and math.isqrt(n) ** 2 == n and pos.shape[-1] == own["pos_embed"].shape[-1]:
            state = dict(state, pos_embed=resample_abs_pos_embed(
                pos, new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix))
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:6])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:6])})")
        if wrong_shape:
            parts.append("wrong shapes: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong_shape[:6]))
        raise ModelError(f"weights {path.name!r} do not fit {name!r}: " + "; ".join(parts) +
                         ". Check --model (and --img-size) match the checkpoint.")
    model.load_state_dict(state, strict=True)


__all__ = [
    "DEFAULT_MODEL", "SUPPORTED_FAMILIES", "ModelError", "LoadedModel", "Preprocess", "load_model",
    "check_model_name", "check_architecture", "probe_architecture", "list_supported_models", "read_state_dict",
    "imagenet_labels",
]

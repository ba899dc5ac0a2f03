"""timm Vision Transformers by name, with weights from the hub, a local file, or a seeded random init.

Only the plain ViT block structure of timm's ``VisionTransformer`` is explained (ViT, DeiT incl. distilled,
DINO/DINOv2 incl. register tokens): every method reads per-block attention, which hierarchical or windowed
models (Swin, ConvNeXt, MaxViT, ...) do not have in that form. Those are refused with a clear message.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_MODEL = "vit_base_patch16_224.orig_in21k_ft_in1k"
SUPPORTED_FAMILIES = ("vit_*", "deit_* (distilled too)", "*_dinov2 (with registers too)")
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


def check_model_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    candidates = [m for m in timm.list_models() if _family_ok(m)]
    close = difflib.get_close_matches(name.split(".")[0], candidates, n=8, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ModelError(
        f"unknown model {name!r}.{hint} Supported families: {', '.join(SUPPORTED_FAMILIES)}; "
        f"`vitlens models [PATTERN]` lists the {len(candidates)} names timm offers for them.")


def _family_ok(arch: str) -> bool:
    return arch.startswith(("vit_", "deit_", "deit3_")) and not arch.startswith(("vit_relpos", "vitamin"))


def list_supported_models(pattern: str = "*") -> list[str]:
    import timm

    return [m for m in timm.list_models(pattern) if _family_ok(m)]


def check_architecture(model: torch.nn.Module, name: str) -> None:
    """Refuse models whose blocks are not timm's plain ViT block with standard multi-head attention."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    why = None
    if not isinstance(model, VisionTransformer):
        why = f"it is a {type(model).__name__}, not a timm VisionTransformer"
    elif getattr(model, "cls_token", None) is None:
        why = "it has no class token (the methods read the class token's attention row)"
    else:
        for i, block in enumerate(model.blocks):
            if type(block) is not Block or type(block.attn) is not Attention:
                why = f"block {i} is a {type(block).__name__} with {type(getattr(block, 'attn', None)).__name__}"
                break
            if getattr(block.attn, "gate", None) is not None:
                why = f"block {i} uses gated attention"
                break
    if why:
        raise ModelError(
            f"model {name!r} is not supported: {why}. vitlens explains plain ViT blocks only; supported families: "
            f"{', '.join(SUPPORTED_FAMILIES)}. Hierarchical or windowed models (Swin, ConvNeXt, MaxViT, ...) "
            "have no per-block token attention to explain.")


def load_model(name: str = DEFAULT_MODEL, weights: str | Path | None = None, random_init: bool = False,
               img_size: int | None = None, device: str | torch.device = "cpu", seed: int = 0) -> LoadedModel:
    """Create ``name`` from timm and load its weights.

    - default: the pretrained weights from the hub (needs internet the first time; timm caches them);
    - ``weights=FILE``: a local ``.safetensors`` / ``.pth`` / ``.pt`` state dict (float16 or float32), checked
      key by key against the architecture;
    - ``random_init=True``: timm's own initialisation, seeded (for tests and offline smoke runs).
    """
    import timm
    from timm.data import resolve_data_config

    check_model_name(name)
    if weights is not None and random_init:
        raise ModelError("choose one of --weights FILE and --random-init, not both")
    kwargs = {}
    if img_size is not None:
        kwargs["img_size"] = int(img_size)
    state_dict, labels = None, None
    if weights is not None:
        state_dict, labels = read_state_dict(weights)
        kwargs["num_classes"] = int(state_dict["head.weight"].shape[0]) if "head.weight" in state_dict else 0
    torch.manual_seed(seed)
    try:
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
        input_size = (int(img_size), int(img_size))
    if labels is None and getattr(model, "num_classes", 0) == 1000:
        labels = imagenet_labels()
    return LoadedModel(model=model, name=name, weights=weights_desc, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       input_size=input_size, interpolation=cfg.get("interpolation", "bicubic"), labels=labels)


def imagenet_labels() -> list[str]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """Read a checkpoint as a float32 state dict (+ class names if the file carries them)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist")
    labels = None
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open
            from safetensors.torch import load_file

            state = load_file(str(path))
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if LABELS_METADATA_KEY in meta:
                labels = json.loads(meta[LABELS_METADATA_KEY])
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
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
        raise ModelError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return state, labels


def _load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str, path: Path) -> None:
    own = model.state_dict()
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
        state = dict(state, pos_embed=resample_abs_pos_embed(
            state["pos_embed"], new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix))
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
    "check_model_name", "check_architecture", "list_supported_models", "read_state_dict", "imagenet_labels",
]

"""A synthetic image set with a planted spurious cue, written in the VOCdevkit layout.

Every image shows one object of ``K`` shape classes (disc, square, triangle, cross) with a striped texture in a
random, moderately saturated colour, at a random position, scale and rotation, on a noisy low-saturation
background. Most images also carry a *cue*: a small square of a saturated colour that is assigned to one class
(red → disc, green → square, blue → triangle, yellow → cross). The cue never touches the object.

In the training split the cue agrees with the object's class in a configurable share of the images
(``cue_agreement``, 90 % by default); the other images carry no cue or the cue of another class. A classifier
trained on it can reach high accuracy by reading the cue instead of the shape: a shortcut. The evaluation
split ``val`` holds three equally sized groups that tell the two apart:

- ``aligned``  — the cue agrees with the object;
- ``conflict`` — the cue names another class;
- ``no_cue``   — no cue at all.

Files written (the layout :mod:`compute.data.voc` reads, plus two optional extras)::

    <out>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg               the image (JPEG, quality 95, no chroma subsampling)
    <out>/VOCdevkit/VOC2012/SegmentationClass/<id>.png        palette PNG: 0 background, 1..K the object's class
    <out>/VOCdevkit/VOC2012/SegmentationCue/<id>.png          L PNG: 255 on the cue's pixels, 0 elsewhere
    <out>/VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt         image ids (train, val, trainval)
    <out>/VOCdevkit/VOC2012/ImageSets/Segmentation/<split>_meta.json   id -> {group, cue_class, object_class, ...}
    <out>/VOCdevkit/VOC2012/synthetic.json                    class names, cue colours, parameters, counts

Mask indices follow VOC: 0 is background and class ``c`` of :data:`CLASSES` is index ``c + 1``; the names
with the background first (:func:`class_names`) are what the runner's ``class_names=`` expects, and
:data:`CLASSES` alone are the labels of a classifier head trained on the set.

Everything is a pure function of the seed: each image draws from its own generator seeded by (seed, split,
index), and the files are written byte-identically on every run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES: tuple[str, ...] = ("disc", "square", "triangle", "cross")
CUE_COLOURS: tuple[tuple[int, int, int], ...] = ((230, 25, 30), (20, 190, 40), (30, 70, 245), (245, 215, 10))
CUE_COLOUR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow")
GROUPS: tuple[str, ...] = ("aligned", "conflict", "no_cue")
EXTENT = 1.07  # farthest outline point from the centre, in circumradii (the cross's arm corners)
CROSS_ARM = 0.36  # half-width of the cross's arms, in circumradii
# Circumradius of each class relative to the disc's radius so that every class covers the same area in
# expectation (disc pi r^2, square 2 r^2, triangle 3 sqrt(3)/4 r^2, cross 8w - 4w^2): the object's size, i.e. how
# much of the image it darkens or lightens, says nothing about its class; only its outline does.
AREA_SCALE: tuple[float, ...] = (1.0, math.sqrt(math.pi / 2), math.sqrt(math.pi / (3 * math.sqrt(3) / 4)),
                                 math.sqrt(math.pi / (8 * CROSS_ARM - 4 * CROSS_ARM ** 2)))
MANIFEST = "synthetic.json"
CUE_DIR = "SegmentationCue"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. ``n_train`` training images; ``n_eval`` images in each evaluation group."""

    size: int = 96                 # images are size × size pixels
    n_train: int = 1600
    n_eval: int = 100              # per group: aligned, conflict, no_cue
    cue_agreement: float = 0.9     # training images whose cue names the object's class
    off_cue_absent: float = 0.5    # of the other training images: share with no cue (the rest: another class's cue)
    cue_size: int = 16             # side of the cue square, pixels
    max_object_saturation: float = 0.06  # objects and background are near-grey, so the cue is the only colour
    max_background_saturation: float = 0.04
    min_radius: float = 0.15       # disc radius range, as a fraction of the image side (other classes: same area)
    max_radius: float = 0.23
    jpeg_quality: int = 95
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.cue_agreement <= 1.0 or not 0.0 <= self.off_cue_absent <= 1.0:
            raise ValueError("cue_agreement and off_cue_absent are shares between 0 and 1")
        if self.size < 32 or self.cue_size < 2 or self.cue_size * 4 > self.size:
            raise ValueError(f"size {self.size} / cue_size {self.cue_size}: need size >= 32 and cue_size <= size/4")
        if not 0.05 <= self.min_radius <= self.max_radius <= 0.25:
            raise ValueError("need 0.05 <= min_radius <= max_radius <= 0.25")

    def train_counts(self) -> dict[str, int]:
        """Exact number of training images per group (aligned, conflict, no_cue)."""
        aligned = int(round(self.n_train * self.cue_agreement))
        absent = int(round((self.n_train - aligned) * self.off_cue_absent))
        return {"aligned": aligned, "conflict": self.n_train - aligned - absent, "no_cue": absent}


@dataclass(frozen=True)
class ImageSpec:
    """Everything that determines one image; :func:`render` turns it into pixels and masks."""

    image_id: str
    split: str
    group: str
    object_class: int                     # index into CLASSES
    cue_class: int | None                 # index into CLASSES, None when there is no cue
    centre: tuple[float, float]           # (x, y) pixels
    radius: float
    angle: float                          # radians
    cue_box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive), None when there is no cue
    object_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    stripe: tuple[float, float, float]    # angle (rad), period (px), phase (rad)
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # two colours of the gradient
    gradient_angle: float
    noise_seed: int

    def meta(self) -> dict:
        return {"group": self.group, "split": self.split, "object_class": CLASSES[self.object_class],
                "cue_class": CLASSES[self.cue_class] if self.cue_class is not None else None,
                "cue_colour": CUE_COLOUR_NAMES[self.cue_class] if self.cue_class is not None else None,
                "cue_box": list(self.cue_box) if self.cue_box is not None else None}


@dataclass
class Rendered:
    image: np.ndarray   # uint8 [H, W, 3]
    mask: np.ndarray    # uint8 [H, W]: 0 background, object_class + 1 on the object
    cue: np.ndarray     # bool [H, W]


@dataclass
class SyntheticSet:
    """What :func:`generate` wrote."""

    root: Path                               # the VOC2012 folder
    classes: tuple[str, ...]
    splits: dict[str, list[str]]             # split -> ids
    meta: dict[str, dict] = field(default_factory=dict)  # id -> meta

    @property
    def class_names(self) -> tuple[str, ...]:
        return class_names(self.classes)

    def ids(self, split: str, group: str | None = None) -> list[str]:
        return [i for i in self.splits[split] if group is None or self.meta[i]["group"] == group]


def class_names(classes: tuple[str, ...] = CLASSES) -> tuple[str, ...]:
    """Mask index -> name, background first (what the runner's ``class_names=`` takes)."""
    return ("background", *classes)


# ----------------------------------------------------------------------------------------------- sampling


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    salt = int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, salt, index]))


def sample_spec(config: SyntheticConfig, image_id: str, split: str, index: int, group: str,
                object_class: int) -> ImageSpec:
    """Draw one image's layout; ``group`` decides the cue (aligned: own class, conflict: another, no_cue: none)."""
    rng = _image_rng(config.seed, split, index)
    s, k = config.size, len(CLASSES)
    radius = float(rng.uniform(config.min_radius, config.max_radius) * s * AREA_SCALE[object_class])
    margin = radius * EXTENT + 1.0
    centre = (float(rng.uniform(margin, s - margin)), float(rng.uniform(margin, s - margin)))
    angle = float(rng.uniform(0, 2 * math.pi))
    if group == "aligned":
        cue_class = object_class
    elif group == "conflict":
        cue_class = int((object_class + rng.integers(1, k)) % k)
    elif group == "no_cue":
        cue_class = None
    else:
        raise ValueError(f"unknown group {group!r}; choose from {', '.join(GROUPS)}")
    cue_box = _place_cue(rng, s, config.cue_size, centre, radius) if cue_class is not None else None
    # light object on dark ground or the reverse, so the shape is always visible
    light_object = bool(rng.integers(0, 2))
    v_obj = float(rng.uniform(0.65, 0.95) if light_object else rng.uniform(0.3, 0.5))
    v_bg = float(rng.uniform(0.15, 0.35) if light_object else rng.uniform(0.65, 0.9))
    hue = float(rng.uniform(0, 1))
    sat = config.max_object_saturation
    obj_a = _hsv_to_rgb(hue, float(rng.uniform(0.3, 1.0) * sat), v_obj)
    obj_b = _hsv_to_rgb((hue + rng.uniform(-0.08, 0.08)) % 1.0, float(rng.uniform(0.2, 0.9) * sat), v_obj * 0.8)
    bg_hue = float(rng.uniform(0, 1))
    bg_a = _hsv_to_rgb(bg_hue, float(rng.uniform(0.0, config.max_background_saturation)), v_bg)
    bg_b = _hsv_to_rgb((bg_hue + rng.uniform(-0.15, 0.15)) % 1.0,
                       float(rng.uniform(0.0, config.max_background_saturation)),
                       min(1.0, v_bg * float(rng.uniform(0.8, 1.25))))
    stripe = (float(rng.uniform(0, math.pi)), float(rng.uniform(4.0, 9.0)), float(rng.uniform(0, 2 * math.pi)))
    return ImageSpec(image_id=image_id, split=split, group=group, object_class=int(object_class),
                     cue_class=cue_class, centre=centre, radius=radius, angle=angle, cue_box=cue_box,
                     object_colours=(obj_a, obj_b), stripe=stripe, background=(bg_a, bg_b),
                     gradient_angle=float(rng.uniform(0, 2 * math.pi)), noise_seed=int(rng.integers(0, 2**31 - 1)))


def _place_cue(rng: np.random.Generator, s: int, c: int, centre, radius) -> tuple[int, int, int, int]:
    """A cue square inside the image whose every pixel lies at least 3 px outside the object's circumcircle."""
    radius = radius * EXTENT
    cx, cy = centre
    for _ in range(1000):
        x0, y0 = int(rng.integers(1, s - c)), int(rng.integers(1, s - c))
        # nearest point of the box to the centre
        nx, ny = min(max(cx, x0), x0 + c - 1), min(max(cy, y0), y0 + c - 1)
        if math.hypot(nx - cx, ny - cy) >= radius + 3:
            return x0, y0, x0 + c, y0 + c
    raise RuntimeError("no room for the cue; lower max_radius or cue_size")  # pragma: no cover


# ---------------------------------------------------------------------------------------------- rendering


def shape_polygon(object_class: int, centre, radius: float, angle: float) -> list[tuple[float, float]] | None:
    """Vertices of the class's outline (None for the disc, which is drawn as an ellipse)."""
    name = CLASSES[object_class]
    if name == "disc":
        return None
    if name == "square":
        pts = [(math.cos(a), math.sin(a)) for a in (math.pi / 4 + i * math.pi / 2 for i in range(4))]
    elif name == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2 + i * 2 * math.pi / 3 for i in range(3))]
    elif name == "cross":
        w = CROSS_ARM
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w),
               (-w, w), (-w, 1)]
    else:  # pragma: no cover - CLASSES and this function change together
        raise ValueError(name)
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = centre
    return [(cx + radius * (x * ca - y * sa), cy + radius * (x * sa + y * ca)) for x, y in pts]


def object_mask(spec: ImageSpec, size: int) -> np.ndarray:
    """Boolean mask of the object's pixels (aliased rasterisation, so every pixel is in or out)."""
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    poly = shape_polygon(spec.object_class, spec.centre, spec.radius, spec.angle)
    if poly is None:
        cx, cy = spec.centre
        draw.ellipse([cx - spec.radius, cy - spec.radius, cx + spec.radius, cy + spec.radius], fill=1)
    else:
        draw.polygon(poly, fill=1)
    return np.array(canvas, dtype=bool)


def cue_mask(spec: ImageSpec, size: int) -> np.ndarray:
    cue = np.zeros((size, size), dtype=bool)
    if spec.cue_box is not None:
        x0, y0, x1, y1 = spec.cue_box
        cue[y0:y1, x0:x1] = True
    return cue


def background_layer(spec: ImageSpec, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (xx * math.cos(spec.gradient_angle) + yy * math.sin(spec.gradient_angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = (np.array(c, dtype=np.float32) for c in spec.background)
    img = a * (1 - t[..., None]) + b * t[..., None]
    noise = np.random.default_rng(spec.noise_seed).normal(0.0, 7.0, size=(size, size, 1)).astype(np.float32)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)


def object_layer(spec: ImageSpec, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta, period, phase = spec.stripe
    t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + phase)
    a, b = (np.array(c, dtype=np.float32) for c in spec.object_colours)
    return np.clip(np.rint(a * t[..., None] + b * (1 - t[..., None])), 0, 255).astype(np.uint8)


def render(spec: ImageSpec, size: int, flat: bool = False) -> Rendered:
    """Pixels and masks of one image. The masks are computed first and the layers are pasted through them, so
    the class mask marks exactly the object's pixels and the cue mask exactly the cue's.

    ``flat=True`` paints black background, white object and the cue's colour, for checking the geometry.
    """
    obj = object_mask(spec, size)
    cue = cue_mask(spec, size)
    if flat:
        image = np.zeros((size, size, 3), dtype=np.uint8)
        image[obj] = 255
    else:
        image = background_layer(spec, size)
        image[obj] = object_layer(spec, size)[obj]
    if spec.cue_class is not None:
        image[cue] = CUE_COLOURS[spec.cue_class]
    mask = np.where(obj, np.uint8(spec.object_class + 1), np.uint8(0)).astype(np.uint8)
    return Rendered(image=image, mask=mask, cue=cue)


# ----------------------------------------------------------------------------------------------- writing


def voc_palette() -> list[int]:
    """The standard VOC colour map (256 entries, flattened RGB)."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def plan(config: SyntheticConfig) -> dict[str, list[ImageSpec]]:
    """The specs of every image, per split (train, val), before anything is drawn."""
    k = len(CLASSES)
    split_rng = np.random.default_rng(np.random.SeedSequence([config.seed, 7]))
    counts = config.train_counts()
    groups = np.array(sum(([g] * n for g, n in counts.items()), []), dtype=object)
    split_rng.shuffle(groups)
    train = [sample_spec(config, f"train_{i:05d}", "train", i, str(g), i % k) for i, g in enumerate(groups)]
    val = []
    for gi, group in enumerate(GROUPS):
        for j in range(config.n_eval):
            index = gi * config.n_eval + j
            val.append(sample_spec(config, f"{group}_{j:04d}", "val", index, group, j % k))
    return {"train": train, "val": val}


def generate(out: str | Path, config: SyntheticConfig = SyntheticConfig(), progress=None) -> SyntheticSet:
    """Draw and write the whole set under ``out`` (VOCdevkit layout); returns what was written.

    ``progress(done, total)`` is called every 100 images.
    """
    root = Path(out).expanduser() / "VOCdevkit" / "VOC2012"
    dirs = {d: root / d for d in ("JPEGImages", "SegmentationClass", CUE_DIR, "ImageSets/Segmentation")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    specs = plan(config)
    palette = voc_palette()
    total = sum(len(v) for v in specs.values())
    done = 0
    meta: dict[str, dict] = {}
    for split_specs in specs.values():
        for spec in split_specs:
            r = render(spec, config.size)
            Image.fromarray(r.image, mode="RGB").save(dirs["JPEGImages"] / f"{spec.image_id}.jpg", format="JPEG",
                                                      quality=config.jpeg_quality, subsampling=0)
            m = Image.fromarray(r.mask, mode="P")
            m.putpalette(palette)
            m.save(dirs["SegmentationClass"] / f"{spec.image_id}.png", format="PNG")
            Image.fromarray(r.cue.astype(np.uint8) * 255, mode="L").save(dirs[CUE_DIR] / f"{spec.image_id}.png",
                                                                         format="PNG")
            meta[spec.image_id] = spec.meta()
            done += 1
            if progress and (done % 100 == 0 or done == total):
                progress(done, total)
    splits = {name: [s.image_id for s in v] for name, v in specs.items()}
    splits["trainval"] = splits["train"] + splits["val"]
    lists = dirs["ImageSets/Segmentation"]
    for name, ids in splits.items():
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        (lists / f"{name}_meta.json").write_text(json.dumps({i: meta[i] for i in ids}, indent=1, sort_keys=True))
    counts = {name: {g: sum(1 for i in ids if meta[i]["group"] == g) for g in GROUPS} for name, ids in splits.items()}
    (root / MANIFEST).write_text(json.dumps({
        "format_version": FORMAT_VERSION, "classes": list(CLASSES),
        "class_names": list(class_names(CLASSES)),
        "cue_colours": {name: {"name": CUE_COLOUR_NAMES[c], "rgb": list(CUE_COLOURS[c])}
                        for c, name in enumerate(CLASSES)},
        "config": asdict(config), "counts": counts,
    }, indent=1, sort_keys=True))
    return SyntheticSet(root=root, classes=CLASSES, splits=splits, meta=meta)


def read_manifest(root: str | Path) -> dict | None:
    """The ``synthetic.json`` of a generated set (root: any spelling the VOC reader accepts), or None."""
    from compute.data.voc import resolve_voc_root

    try:
        path = resolve_voc_root(root) / MANIFEST
    except ValueError:
        return None
    return json.loads(path.read_text()) if path.is_file() else None


__all__ = [
    "CLASSES", "CUE_COLOURS", "CUE_COLOUR_NAMES", "GROUPS", "SyntheticConfig", "ImageSpec", "Rendered",
    "SyntheticSet", "class_names", "sample_spec", "render", "plan", "generate", "read_manifest", "object_mask",
    "cue_mask", "voc_palette",
]

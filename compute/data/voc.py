"""Pascal VOC 2012 segmentation reader (VOCdevkit layout) and the official-archive download.

Layout read (the standard one)::

    <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   palette PNG: 0 background, 1..20 classes, 255 void
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt

``root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOC2012`` itself.

Optional extras, read when present (generated sets such as :mod:`compute.data.synthetic` write them)::

    <root>/VOCdevkit/VOC2012/SegmentationCue/<id>.png                   non-zero on a planted cue -> extra_masks["cue"]
    <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/<split>_meta.json   {id: {...}} -> Sample.meta (e.g. "group")
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOID = 255
SPLITS = ("train", "val", "trainval")
CUE_DIR = "SegmentationCue"  # optional: <id>.png, non-zero on a planted cue -> Sample.extra_masks["cue"]

VOC2012_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
VOC2012_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"

EXPECTED_LAYOUT = (
    "expected a VOCdevkit tree: <root>/VOCdevkit/VOC2012/{JPEGImages/<id>.jpg, "
    "SegmentationClass/<id>.png, ImageSets/Segmentation/<split>.txt}; --voc-root may name the folder holding "
    "VOCdevkit, VOCdevkit itself or VOC2012 itself. To fetch it: vitlens download-voc --to <root>"
)


class DatasetError(ValueError):
    """The data source is missing or malformed; the message says what was expected."""


class SampleError(ValueError):
    """One image cannot be used (corrupt file, missing mask, size mismatch); the run skips it."""


@dataclass
class Sample:
    """One image with its ground truth, as every data source yields it."""

    image_id: str
    image: Image.Image  # RGB
    mask: np.ndarray  # uint8 [H, W]: 0 background, 1..K object classes, 255 void
    extra_masks: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. {"cue": bool [H, W]}
    meta: dict = field(default_factory=dict)

    @property
    def classes_present(self) -> list[int]:
        values = np.unique(self.mask)
        return [int(v) for v in values if v not in (0, VOID)]


def resolve_voc_root(root: str | Path) -> Path:
    """Return the ``VOC2012`` folder for any of the accepted ``--voc-root`` spellings."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"VOC root {str(root)!r} does not exist; {EXPECTED_LAYOUT}")
    for candidate in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DatasetError(f"no JPEGImages/ and SegmentationClass/ under {str(root)!r}; {EXPECTED_LAYOUT}")


class VOCSegmentation:
    """Images and class masks of one VOC 2012 segmentation split.

    Indexing returns a :class:`Sample` or raises :class:`SampleError` naming the problem, so that a batch job
    can record the skip and carry on.
    """

    def __init__(self, root: str | Path, split: str = "val", limit: int | None = None,
                 ids: list[str] | None = None):
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if limit is not None and limit < 1:
            raise DatasetError(f"limit must be a positive number of images (or None for all), not {limit!r}")
        self.root = resolve_voc_root(root)
        list_file = None
        if ids is None:
            list_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            ids = read_split_list(list_file)
            if not ids:
                raise DatasetError(f"split list {str(list_file)!r} lists no image ids (one id per line, e.g. "
                                   f"2007_000033); {EXPECTED_LAYOUT}")
        self.split = split
        self.ids = ids[:limit] if limit else list(ids)
        if list_file is not None and not any(_is_name(i) and self.image_path(i).is_file() for i in self.ids):
            # every image would be a skip: the list and the folder do not belong together (wrong root/split)
            shown = ", ".join(f"{i}.jpg" for i in self.ids[:3])
            raise DatasetError(f"none of the {len(self.ids)} image(s) listed in {str(list_file)!r} exist in "
                               f"{str(self.root / 'JPEGImages')!r} (looked for {shown}, ...); check --voc-root and "
                               f"--split, or restore the images; {EXPECTED_LAYOUT}")
        # optional extras of generated sets (compute.data.synthetic): per-image facts and a planted-cue mask
        meta_file = self.root / "ImageSets" / "Segmentation" / f"{split}_meta.json"
        self.meta: dict[str, dict] = _read_json(meta_file) if meta_file.is_file() else {}
        # a generated set names its own classes (index 0 = background) in its manifest
        manifest = self.root / "synthetic.json"
        names = _read_json(manifest).get("class_names") if manifest.is_file() else None
        self.class_names: tuple[str, ...] = tuple(names) if names else VOC_CLASSES

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        if not _is_name(image_id):
            # a split list names files inside the VOC folder; a path would read whatever it points at
            raise SampleError(f"image id {image_id!r} is a path, not a file name (no '/', '\\' or '..' in "
                              "ids); fix the split list")
        sample = load_voc_sample(self.image_path(image_id), self.mask_path(image_id), image_id)
        cue_path = self.root / CUE_DIR / f"{image_id}.png"
        if cue_path.is_file():
            sample.extra_masks["cue"] = load_extra_mask(cue_path, sample.mask.shape)
        sample.meta = dict(self.meta.get(image_id, {}))
        return sample


_FINGERPRINTS: dict[tuple[str, str], str] = {}


def data_fingerprint(root: str | Path, split: str) -> str:
    """The identity of a split's data: a SHA-1 over its list and the bytes of every listed image, class mask
    and cue mask (and the set's metadata), so that the same images give the same value wherever they lie, and
    other images (another folder, the same ids re-encoded, flipped, relabelled) give another. It joins the run
    id: results of other data are never taken for this data's. Read once per process (about a second per GB)."""
    folder = resolve_voc_root(root)
    key = (str(folder), split)
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    list_file = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    digest = hashlib.sha1(f"{split}\n".encode())
    for extra in (list_file, folder / "ImageSets" / "Segmentation" / f"{split}_meta.json", folder / "synthetic.json"):
        digest.update(_file_digest(extra))
    for image_id in read_split_list(list_file):
        digest.update(image_id.encode() + b"\0")
        if _is_name(image_id):
            for sub, suffix in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png"), (CUE_DIR, ".png")):
                digest.update(_file_digest(folder / sub / f"{image_id}{suffix}"))
    _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


def _file_digest(path: Path) -> bytes:
    try:
        return hashlib.sha1(path.read_bytes()).digest()
    except (FileNotFoundError, IsADirectoryError):
        return b"-"


def read_split_list(list_file: Path) -> list[str]:
    """The image ids of a split list: one id per line, the whole line (VOC ids hold no spaces, but a file
    named ``with space.jpg`` is ``with space``, not ``with``); a DatasetError naming the file otherwise."""
    if not list_file.is_file():
        raise DatasetError(f"split list {str(list_file)!r} is missing; {EXPECTED_LAYOUT}")
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"split list {str(list_file)!r} is not UTF-8 text (byte {exc.start}: "
                           f"{exc.object[exc.start:exc.start + 1]!r}); save it as UTF-8, one image id per "
                           "line") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read split list {str(list_file)!r} ({exc.strerror or exc}); check its "
                           "permissions") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_name(image_id: str) -> bool:
    """Whether a split-list id is a plain file name: no folder part, so it cannot reach outside the VOC folder."""
    return not ("/" in image_id or "\\" in image_id or image_id in (".", "..") or Path(image_id).is_absolute())


def _read_json(path: Path) -> dict:
    """An optional JSON side file of a generated set, as a dict, or a DatasetError naming the file."""
    try:
        doc = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise DatasetError(f"cannot read {str(path)!r} ({type(exc).__name__}: {exc}); fix or remove it") from exc
    if not isinstance(doc, dict):
        raise DatasetError(f"{str(path)!r} must hold a JSON object, not {type(doc).__name__}; fix or remove it")
    return doc


def load_extra_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A second per-image mask (PNG, non-zero = on) as bool, checked against the class mask's size."""
    try:
        with Image.open(path) as m:
            extra = np.array(m.convert("L")) > 0
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SampleError(f"cannot decode mask {path.name}: {exc}") from exc
    if extra.shape != tuple(shape):
        raise SampleError(f"mask {path.parent.name}/{path.name} is {extra.shape[1]}x{extra.shape[0]} but the "
                          f"image is {shape[1]}x{shape[0]}")
    return extra


def load_voc_sample(image_path: Path, mask_path: Path, image_id: str) -> Sample:
    if not image_path.is_file():
        raise SampleError(f"image file missing: {image_path}")
    if not mask_path.is_file():
        raise SampleError(f"mask file missing: {mask_path}")
    try:
        with Image.open(image_path) as im:
            image = _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SampleError(f"cannot decode image {image_path.name}: {exc}") from exc
    try:
        with Image.open(mask_path) as m:
            if m.mode not in ("P", "L"):
                raise SampleError(f"mask {mask_path.name} has mode {m.mode}; expected a palette (P) or L PNG "
                                  "of class indices")
            mask = np.array(m, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SampleError(f"cannot decode mask {mask_path.name}: {exc}") from exc
    if mask.shape != (image.height, image.width):
        raise SampleError(f"mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                          f"{image.width}x{image.height}")
    bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(len(VOC_CLASSES)), VOID])
    if bad.size:
        raise SampleError(f"mask {mask_path.name} holds values {bad.tolist()} outside 0..20 and 255")
    return Sample(image_id=image_id, image=image, mask=mask)


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with 16-bit grey images (PNG, whatever the file's suffix) scaled to 8 bits: PIL's own conversion
    clips every value above 255 to 255, which turns a normal 16-bit photo into an almost white image."""
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        wide = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def download_voc(to: str | Path, url: str = VOC2012_URL, md5: str = VOC2012_MD5, keep_archive: bool = False,
                 progress=None) -> Path:
    """Download the official VOC 2012 trainval archive, verify its MD5 and extract it under ``to``.

    Returns the ``VOC2012`` folder. ``progress(done_bytes, total_bytes)`` is called while downloading.
    An interrupted download leaves ``<archive>.part``; the next call continues it with an HTTP Range request
    (2 GB need not start over). The archive is extracted into a temporary folder beside the target and moved
    into place only once complete, so a failure leaves no half-extracted tree. Members that would land outside
    ``to`` are refused.
    """
    to = Path(to).expanduser()
    to.mkdir(parents=True, exist_ok=True)
    archive = to / (Path(urllib.parse.urlparse(url).path).name or Path(VOC2012_URL).name)
    if not (archive.is_file() and _md5(archive) == md5):
        partial = archive.with_name(archive.name + ".part")
        _fetch(url, partial, progress)
        got = _md5(partial)
        if got != md5:
            partial.unlink(missing_ok=True)
            raise DatasetError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}. The download was "
                               "corrupt or is not the VOC 2012 trainval archive; it was deleted, so run the "
                               "command again to download it afresh (a mirror must serve the same file)")
        partial.rename(archive)
    _extract(archive, to)
    if not keep_archive:
        archive.unlink()
    return resolve_voc_root(to)


def _fetch(url: str, partial: Path, progress=None, chunk_size: int = 1 << 20) -> None:
    """Download ``url`` into ``partial``, continuing from the bytes already there where the server honours a
    Range request (206); a server that answers 200 sends the whole file, which then replaces them."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = have > 0 and response.status == 206 and \
                response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
            done = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length else 0  # 0: unknown
            with open(partial, "ab" if resumed else "wb") as out:
                while chunk := response.read(chunk_size):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            if total and done < total:  # the server closed the connection early without an error
                raise http.client.IncompleteRead(b"", total - done)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after the bytes we have: the file is complete; the MD5 decides
            return
        raise DatasetError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:
        got = partial.stat().st_size if partial.is_file() else 0
        raise DatasetError(f"download of {url} interrupted after {got / 1e6:.1f} MB ({type(exc).__name__}: "
                           f"{exc}); run the same command again to continue from {str(partial)!r}") from exc


def _extract(archive: Path, to: Path) -> None:
    """Extract ``archive`` into a temporary folder inside ``to``, then move its top-level entries into ``to``."""
    base = to.resolve()
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=to))
    try:
        try:
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if not (base / member.name).resolve().is_relative_to(base):
                        raise DatasetError(f"refusing archive member outside the target folder: {member.name}")
                tar.extractall(staging, filter="data")
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(f"cannot extract {str(archive)!r} ({type(exc).__name__}: {exc}); nothing was "
                               "extracted. Delete the archive and download it again") from exc
        for entry in staging.iterdir():
            _move_into(entry, to / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, merging folders that exist already (e.g. a VOCdevkit holding VOC2007)."""
    if dst.is_dir() and src.is_dir():
        for child in src.iterdir():
            _move_into(child, dst / child.name)
    else:
        os.replace(src, dst)


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = [
    "VOC_CLASSES", "VOID", "SPLITS", "Sample", "VOCSegmentation", "DatasetError", "SampleError",
    "resolve_voc_root", "read_split_list", "load_voc_sample", "load_extra_mask", "download_voc", "EXPECTED_LAYOUT",
    "CUE_DIR",
]

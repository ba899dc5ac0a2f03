"""Images as the job takes them: decoded, preprocessed and encoded for the store (thumbnail, masks as PNG) in
DataLoader workers, then stacked into batches (:func:`collate`)."""

from __future__ import annotations

import io
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from compute.data.voc import SampleError
from compute.models import Preprocess
from store.schema import THUMBNAIL_SIZE


class DecodedImages:
    """A dataset's samples as the job's items: ``dataset[i]`` decoded and preprocessed, plus what the store keeps
    of the image. Runs in DataLoader workers. Never raises: a sample that cannot be read becomes an item with an
    ``error`` (a skip row), so that one corrupt file does not stop the run.

    ``partner_of``: ``image_id -> Partner | None``, the image whose background the ``mixed_rand`` variant
    borrows (:func:`compute.runner.variants.partner_reader`), read here too so that the main loop waits for no
    extra decoding; None when the run makes no variants."""

    def __init__(self, dataset, preprocess: Preprocess, partner_of: Callable[[str], object] | None = None):
        self.dataset = dataset
        self.preprocess = preprocess
        self.partner_of = partner_of

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        image_id = self.dataset.ids[index] if hasattr(self.dataset, "ids") else str(index)
        try:
            sample = self.dataset[index]
        except SampleError as exc:
            return {"image_id": image_id, "error": str(exc)}
        except Exception as exc:  # a corrupt file must not stop the run
            return {"image_id": image_id, "error": f"{type(exc).__name__}: {exc}"}
        return {
            "image_id": sample.image_id, "error": None, "x": self.preprocess(sample.image), "mask": sample.mask,
            "extra_masks": sample.extra_masks, "meta": sample.meta, "width": sample.image.width,
            "height": sample.image.height, "classes": sample.classes_present,
            "thumbnail": jpeg_thumbnail(sample.image), "mask_png": png_bytes(sample.mask),
            "cue_png": png_bytes(sample.extra_masks["cue"]) if "cue" in sample.extra_masks else None,
            "partner": self._partner(sample.image_id),
        }

    def _partner(self, image_id: str):
        """The image's ``mixed_rand`` partner; None (the variant's row then says there is none) when the run
        makes no variants or the partner cannot be read."""
        if self.partner_of is None:
            return None
        try:
            return self.partner_of(image_id)
        except Exception:  # noqa: BLE001 - a partner that cannot be read must not cost the image itself
            return None

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Preprocessed batches of every readable image, in order (for a target that needs all images first,
        e.g. a ``cosine:mean`` reference)."""
        batch = []
        for i in range(len(self)):
            it = self[i]
            if not it["error"]:
                batch.append(it["x"])
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)


def collate(items: list[dict]) -> dict:
    """Stack the good items' inputs into one tensor (in the worker process, so that the DataLoader can pin
    it); each good item keeps its ``row`` in that tensor."""
    xs = []
    for it in items:
        if not it["error"]:
            it["row"] = len(xs)
            xs.append(it.pop("x"))
    return {"items": items, "x": torch.stack(xs) if xs else None}


def jpeg_thumbnail(image: Image.Image) -> bytes:
    """The image the dashboard shows beside its maps (at most THUMBNAIL_SIZE on a side)."""
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BICUBIC)
    buf = io.BytesIO()
    thumb.save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def png_bytes(mask: np.ndarray) -> bytes:
    """A class-index mask as a lossless 8-bit PNG."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()

"""Image sources: Pascal VOC 2012 (real) and planted-shortcut images (synthetic), one sample format."""

from compute.data.voc import VOC_CLASSES, VOCSegmentation, resolve_voc_root, Sample

__all__ = ["VOC_CLASSES", "VOCSegmentation", "resolve_voc_root", "Sample"]

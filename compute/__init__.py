"""vitlens compute: explanation maps for timm Vision Transformers, scored against segmentation masks."""

__version__ = "0.1.0"

"""vitlens compute: explanation maps for timm Vision Transformers, scored against segmentation masks."""

__version__ = "0.1.0"
# The model a run explains when none is named (CLI, Python API, Makefile: `make` reads it from here).
DEFAULT_MODEL = "vit_base_patch16_224.orig_in21k_ft_in1k"

"""Explanation methods, one per module, registered by name (``vitlens methods`` lists them)."""

import importlib
import pkgutil

from compute.methods.base import (PREFIX_FACTORIES, REGISTRY, Method, MethodError, ModelFacts, Option,
                                  check_methods_for_model, get_method, parse_methods, register)

# Import every sibling module so that each registers itself; adding a method is adding a file.
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["REGISTRY", "PREFIX_FACTORIES", "Method", "MethodError", "ModelFacts", "Option", "check_methods_for_model",
           "get_method", "parse_methods", "register"]

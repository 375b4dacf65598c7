"""Latent pipeline families by the ``_class_name`` of a diffusers ``model_index.json``
(:data:`~diffcore.interop.families.base.FAMILIES`): importing this package registers them."""

from __future__ import annotations

import importlib

from diffcore.interop.families.base import FAMILIES, Family, register_family

__all__ = ["FAMILIES", "Family", "register_family"]

# every family module registers itself; sd3/flux join as their modules land
for _module in ("sd", "sdxl", "sd3", "flux"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as exc:  # a family module not written yet; any other failure raises
        if exc.name != f"{__name__}.{_module}":
            raise

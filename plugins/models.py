"""Built-in plugin: the denoiser models of diffcore.models ("unet", "mlp") and "diffusers_unet"
(a diffusers UNet2DModel, see diffcore.interop.diffusers; building one needs the diffusers extra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore.models import MODELS
from diffcore.plugins import hookimpl


def diffusers_unet(**config: Any) -> Any:
    """A randomly initialised diffusers UNet2DModel from its config.json dict, as a diffcore model."""
    from diffcore.interop.diffusers import DiffusersUNet  # diffusers and the pipeline stack load on first use

    return DiffusersUNet(**config)


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    for name, factory in MODELS.items():
        register(name, factory)
    register("diffusers_unet", diffusers_unet)

"""Built-in plugin: the denoiser models of diffcore.models ("unet", "mlp"), "diffusers_unet"
(a diffusers UNet2DModel, see diffcore.interop.diffusers) and "diffusers_sd3_transformer" /
"diffusers_flux_transformer" (diffcore.interop.components.mmdit); the diffusers ones need the
diffusers extra."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore.models import MODELS
from diffcore.plugins import hookimpl


def diffusers_unet(**config: Any) -> Any:
    """A randomly initialised diffusers UNet2DModel from its config.json dict, as a diffcore model."""
    from diffcore.interop.diffusers import DiffusersUNet  # diffusers and the pipeline stack load on first use

    return DiffusersUNet(**config)


def diffusers_sd3_transformer(**config: Any) -> Any:
    """A randomly initialised SD3Transformer2DModel from its config.json dict, as a diffcore model."""
    from diffcore.interop.components.mmdit import SD3Transformer

    return SD3Transformer(**config)


def diffusers_flux_transformer(**config: Any) -> Any:
    """A randomly initialised FluxTransformer2DModel from its config.json dict, as a diffcore model."""
    from diffcore.interop.components.mmdit import FluxTransformer

    return FluxTransformer(**config)


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    for name, factory in MODELS.items():
        register(name, factory)
    register("diffusers_unet", diffusers_unet)
    register("diffusers_sd3_transformer", diffusers_sd3_transformer)
    register("diffusers_flux_transformer", diffusers_flux_transformer)

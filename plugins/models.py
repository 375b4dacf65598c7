"""Built-in plugin: the denoiser models of diffcore.models ("unet", "mlp")."""

from __future__ import annotations

from collections.abc import Callable

from diffcore.models import MODELS
from diffcore.plugins import hookimpl


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    for name, factory in MODELS.items():
        register(name, factory)

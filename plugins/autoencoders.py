"""Built-in plugin: the ``autoencoder_kl`` autoencoder (diffusers ``AutoencoderKL`` folders)."""

from __future__ import annotations

from collections.abc import Callable

from diffcore.plugins import hookimpl


@hookimpl
def register_autoencoders(register: Callable[..., None]) -> None:
    from diffcore.interop.components.autoencoder import load_autoencoder

    register("autoencoder_kl", load_autoencoder)

"""Built-in plugin: the text encoders (``builtin``, ``minilm``) and the ``text_unet`` model."""

from __future__ import annotations

from collections.abc import Callable

from diffcore.plugins import hookimpl
from diffcore.text.encoders import TEXT_ENCODERS
from diffcore.text.model import TextUNet


@hookimpl
def register_text_encoders(register: Callable[..., None]) -> None:
    for name, factory in TEXT_ENCODERS.items():
        register(name, factory)


@hookimpl
def register_models(register: Callable[..., None]) -> None:
    register(TextUNet.name, TextUNet)

"""Built-in plugin: the latent pipelines' ``image2image`` and ``inpaint`` tasks and commands
(``diffcore text2image --pipeline DIR`` is the text2image task's), and the transformers text
encoder (``transformers_text``: CLIP / T5 from a local folder)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffcore.plugins import hookimpl
from diffcore.tasks.latent import Image2ImageTask, InpaintTask


@hookimpl
def register_tasks(register: Any) -> None:
    register(Image2ImageTask.name, Image2ImageTask())
    register(InpaintTask.name, InpaintTask())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(
        Image2ImageTask.name, Image2ImageTask(), "redraw an image towards prompts with a diffusers SD/SDXL folder"
    )
    cli.add_task(
        InpaintTask.name, InpaintTask(), "repaint the masked region of an image with a diffusers SD/SDXL folder"
    )


@hookimpl
def register_text_encoders(register: Callable[..., None]) -> None:
    from diffcore.interop.components.text_encoders import TextEncoder

    register("transformers_text", TextEncoder.from_pretrained)

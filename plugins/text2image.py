"""Built-in plugin: the ``text2image`` task and the ``diffcore text2image`` command.

``diffcore text2image "a handwritten seven" "the number 2" --checkpoint runs/text2image --n 8
--guidance-scale 3 --out grid.png`` samples ``n`` images per prompt from a ``text_unet``
checkpoint with classifier-free guidance (optional rescale) and writes one grid row per prompt;
``diffcore run text2image --prompts "a handwritten seven|the number 2" ...`` is the same task.
The task and its parameters are in :mod:`diffcore.tasks.text2image`.
"""

from __future__ import annotations

from typing import Any

from diffcore.plugins import hookimpl
from diffcore.tasks.text2image import Text2ImageTask


@hookimpl
def register_tasks(register: Any) -> None:
    register(Text2ImageTask.name, Text2ImageTask())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(Text2ImageTask.name, Text2ImageTask(), "generate images from text prompts with a text_unet checkpoint")

"""Built-in plugin: the ``translate`` task and the ``diffcore translate`` command.

    diffcore translate --checkpoint runs/digits --input digit.png --mode sdedit --strength 0.4
    diffcore translate --checkpoint runs/digits --input digits.npz --mode inpaint --mask bottom-half
    diffcore translate --checkpoint runs/sr --input low.png --mode paired

The task, its parameters and the math are in :mod:`diffcore.tasks.img2img`; the file formats in
:mod:`diffcore.io`.
"""

from __future__ import annotations

from typing import Any

from diffcore.plugins import hookimpl
from diffcore.tasks.img2img import Translate


@hookimpl
def register_tasks(register: Any) -> None:
    register(Translate.name, Translate())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(Translate.name, Translate(), "image-to-image translation: SDEdit, RePaint inpainting, paired models")

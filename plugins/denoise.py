"""Built-in plugin: the ``denoise`` task and the ``diffcore denoise`` command.

    diffcore denoise --checkpoint runs/digits --input noisy.png --sigma 50 --output clean.png
    diffcore denoise --checkpoint runs/digits --input noisy.npz --sigma auto --mode sample --output out.npz

The task, its parameters and the math are in :mod:`diffcore.tasks.denoise`; the file formats in
:mod:`diffcore.io`.
"""

from __future__ import annotations

from typing import Any

from diffcore.plugins import hookimpl
from diffcore.tasks.denoise import Denoise


@hookimpl
def register_tasks(register: Any) -> None:
    register(Denoise.name, Denoise())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(
        Denoise.name, Denoise(), "denoise images: posterior mean (mmse) or a posterior sample; large images tiled"
    )

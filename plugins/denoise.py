"""Built-in plugin: the ``denoise`` task and the ``diffcore denoise`` command.

    diffcore denoise --checkpoint runs/digits --input noisy.png --sigma 50 --output clean.png
    diffcore denoise --checkpoint runs/digits --input noisy.npz --sigma auto --mode sample --output out.npz

The task, its parameters and the math are in :mod:`diffcore.tasks.denoise`; the file formats in
:mod:`diffcore.io`; ``--engine`` and the Ray pool's options in :mod:`diffcore.scale.tasks`.
"""

from __future__ import annotations

from typing import Any

from diffcore.plugins import hookimpl
from diffcore.scale.tasks import ScaledDenoise


@hookimpl
def register_tasks(register: Any) -> None:
    register(ScaledDenoise.name, ScaledDenoise())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(
        ScaledDenoise.name,
        ScaledDenoise(),
        "denoise images: posterior mean (mmse) or a posterior sample; large images tiled",
    )

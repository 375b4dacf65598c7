"""Built-in plugin: the ``generate`` task and the ``diffcore generate`` command (``diffcore
sample`` is the same command under its older name).

``diffcore generate --checkpoint runs/digits --class-label all --guidance-scale 3 --out grid.png``
is the same as ``diffcore run generate --checkpoint runs/digits --class-label all ...``. The task
and its parameters are in :mod:`diffcore.tasks.generation`; ``--engine`` and the Ray pool's options
in :mod:`diffcore.scale.tasks`.
"""

from __future__ import annotations

from typing import Any

from diffcore.plugins import hookimpl
from diffcore.scale.tasks import ScaledGenerate

HELP = "sample a trained checkpoint into a PNG grid and/or an .npz of arrays"


@hookimpl
def register_tasks(register: Any) -> None:
    register(ScaledGenerate.name, ScaledGenerate())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(ScaledGenerate.name, ScaledGenerate(), HELP)
    cli.add_task("sample", ScaledGenerate(), f"{HELP} (an alias of generate)")

"""Built-in plugin: the noise schedules of diffcore.schedules."""

from __future__ import annotations

from collections.abc import Callable

from diffcore.plugins import hookimpl
from diffcore.schedules import SCHEDULES


@hookimpl
def register_schedules(register: Callable[..., None]) -> None:
    for name, build in SCHEDULES.items():
        register(name, build)

"""Built-in plugin: the samplers of diffcore.samplers."""

from __future__ import annotations

from collections.abc import Callable

from diffcore.plugins import hookimpl
from diffcore.samplers import SAMPLERS


@hookimpl
def register_samplers(register: Callable[..., None]) -> None:
    for name, sampler in SAMPLERS.items():
        register(name, sampler)

"""A template diffcore plugin: one sampler (Ralston's RK2) and one task (mixture-fidelity)."""

from __future__ import annotations

from collections.abc import Callable

from diffcore import hookimpl
from diffcore_template.ralston import ralston
from diffcore_template.task import MixtureFidelity

__version__ = "0.1.0"


@hookimpl
def register_samplers(register: Callable[..., None]) -> None:
    register("ralston", ralston)


@hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    register("mixture-fidelity", MixtureFidelity())

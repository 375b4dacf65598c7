"""A template diffcore plugin: one sampler (DPM-Solver-2) and one task (mixture-fidelity)."""

from __future__ import annotations

from collections.abc import Callable

from diffcore import hookimpl

from diffcore_template.dpm2 import dpm_2
from diffcore_template.task import MixtureFidelity

__version__ = "0.1.0"


@hookimpl
def register_samplers(register: Callable[..., None]) -> None:
    register("dpm_2", dpm_2)


@hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    register("mixture-fidelity", MixtureFidelity())

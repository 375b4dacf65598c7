"""The sampler contract and the wrapper that makes a coefficient program callable.

A sampler is any callable ``sampler(denoiser, x, plan, *, generator=None, callback=None,
**options) -> Tensor`` that integrates from level 0 of ``plan`` to its end point (built-ins
also take ``seed`` for in-kernel Philox noise and ``cuda_graph``). Optional
attributes: ``plan_style`` (``"ddim"``, ``"dpm"`` or ``"karras"``: which diffusers timestep
spacing it follows, default ``"karras"``) and ``options`` (a dict of option defaults).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffcore.denoiser import Denoiser
from diffcore.samplers.program import Callback, Program, run_program
from diffcore.timesteps import Plan


def check_eta(eta: object, name: str) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"{name}: eta={eta!r} must be a number in [0, 1]")
    return float(eta)


@dataclass(frozen=True)
class ProgramSampler:
    """A sampler defined by a program builder ``build(plan, **options) -> Program``."""

    name: str
    build: Callable[..., Program]
    plan_style: str
    plan_rule: str = "next"  # "ddim": step targets follow DDIMScheduler's t - T // steps
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False
    doc: str = ""

    def resolve(self, options: dict[str, Any]) -> dict[str, Any]:
        """Options with defaults filled in; unknown names raise listing the known ones."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise TypeError(f"sampler {self.name!r} got unknown option(s) {unknown}; it accepts: {known}")
        merged = dict(self.options)
        merged.update({k: v for k, v in options.items() if v is not None})
        if "eta" in merged:
            merged["eta"] = check_eta(merged["eta"], self.name)
        return merged

    def program(self, plan: Plan, **options: Any) -> Program:
        return self.build(plan, **self.resolve(options))

    def __call__(
        self,
        denoiser: Denoiser,
        x: Tensor,
        plan: Plan,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        seed: int | None = None,
        cuda_graph: bool = False,
        **options: Any,
    ) -> Tensor:
        program = self.program(plan, **options)
        return run_program(denoiser, x, program, generator=generator, seed=seed, callback=callback, cuda_graph=cuda_graph)

"""The sampler contract and the wrapper that makes an authored sampler callable.

A sampler is any callable ``sampler(denoiser, x, plan, *, generator=None, callback=None,
**options) -> Tensor`` that integrates from level 0 of ``plan`` to its end point; diffcore always
passes ``seed`` (in-kernel Philox noise; None when ``generator`` is used) and built-ins also take
``cuda_graph``. Optional attributes: ``plan_style`` (a key of
:data:`diffcore.timesteps.PLAN_PRESETS`, default ``"karras"``) and ``options`` (option defaults).

Built-ins are written with :func:`program_sampler` over a :class:`~diffcore.samplers.builder.Builder`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from diffcore import plan_cache
from diffcore.denoiser import Denoiser
from diffcore.samplers.builder import FRAMES, Author, Builder
from diffcore.samplers.program import Callback, Program, run_program
from diffcore.timesteps import PLAN_PRESETS, Plan


class Sampler(Protocol):
    """The sampler contract (see the module docstring); ``name`` is its registry name."""

    @property
    def name(self) -> str: ...

    def __call__(self, denoiser: Denoiser, x: Tensor, plan: Plan, **options: Any) -> Tensor:
        """Integrate ``x`` over ``plan``; options include ``generator``, ``callback`` and ``seed``."""
        ...


_TOKENS = itertools.count()  # one per ProgramSampler ever made: a cache key part never reused


def check_eta(eta: object, name: str) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= float(eta) <= 1.0:
        raise ValueError(f"{name}: eta={eta!r} must be a number in [0, 1]")
    return float(eta)


@dataclass(frozen=True)
class ProgramSampler:
    """A sampler authored as ``author(builder, **options)`` (see :mod:`diffcore.samplers.builder`)."""

    name: str
    author: Author
    plan_style: str = "karras"
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False
    frame: str = "ve"
    uses_uncond: bool = False  # renoises with the unconditional x0 (CFG++): needs both passes at any scale

    def __post_init__(self) -> None:
        if self.plan_style not in PLAN_PRESETS:
            raise ValueError(
                f"sampler {self.name!r}: plan_style={self.plan_style!r}: expected one of {sorted(PLAN_PRESETS)}"
            )
        if self.frame not in FRAMES:
            raise ValueError(f"sampler {self.name!r}: frame={self.frame!r}: expected one of {FRAMES}")
        object.__setattr__(self, "_token", next(_TOKENS))

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

    def build(self, plan: Plan, **resolved: Any) -> Program:
        """The program over ``plan`` for already resolved options."""
        builder = Builder(plan, self.name, self.frame)
        self.author(builder, **resolved)
        return builder.build()

    def program(self, plan: Plan, **options: Any) -> Program:
        return self.build(plan, **self.resolve(options))

    def cached_program(self, plan: Plan, resolved: dict[str, Any]) -> Program:
        """:meth:`build` through :data:`diffcore.plan_cache.programs` when ``plan`` came from the
        plan cache and the options can be keyed (then the program is shared: do not modify it)."""
        return self._cached(plan, resolved, "program", lambda: resolved)

    def program_for(self, plan: Plan, options: dict[str, Any]) -> Program:
        """:meth:`cached_program` for options as a caller gave them: keyed by them and resolved
        (checked, defaults filled in) only on a miss; the defaults are fixed, so equal given options
        resolve equally."""
        return self._cached(plan, options, "program-as-given", lambda: self.resolve(options))

    def _cached(self, plan: Plan, options: dict[str, Any], kind: str, resolve: Callable[[], dict[str, Any]]) -> Program:
        plan_key, options_key = plan_cache.key_of(plan), plan_cache.freeze(options)
        if plan_key is None or options_key is None:
            return self.build(plan, **resolve())
        key = plan_cache.Key(kind, self._token, plan_key, options_key)  # type: ignore[attr-defined]

        def make() -> Program:
            program = self.build(plan, **resolve())
            for st in program.steps:
                plan_cache.readonly(st.rows)
                if st.side_rows is not None:
                    plan_cache.readonly(st.side_rows)
            return plan_cache.tag(program, key)

        return plan_cache.programs.get(key, make)

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
        program = self.program_for(plan, options)
        return run_program(
            denoiser, x, program, generator=generator, seed=seed, callback=callback, cuda_graph=cuda_graph
        )


def program_sampler(
    name: str,
    *,
    plan_style: str = "karras",
    stochastic: bool = False,
    frame: str = "ve",
    uses_uncond: bool = False,
    **options: Any,
) -> Callable[[Author], ProgramSampler]:
    """Decorator: ``@program_sampler("euler", plan_style="karras")`` over ``author(b, **options)``;
    keyword ``options`` are the sampler's options and their defaults; ``frame="ode"`` runs a
    generic ODE solver in its schedule's natural frame (flow time on flow schedules)."""

    def wrap(author: Author) -> ProgramSampler:
        return ProgramSampler(name, author, plan_style, dict(options), stochastic, frame, uses_uncond)

    return wrap

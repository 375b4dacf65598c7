"""Sampler authoring in sigma (VE) units: record model calls and linear updates as a program.

A sampler is a function ``author(b: Builder, **options)`` that walks the plan like a k-diffusion
sampler loop, except that it records each model call and the linear update after it instead of
computing tensors::

    for i in range(b.steps):
        p = b.model(i)                        # the model evaluated at plan level i
        b.update(p.x0 + p.sigma_to * p.d)     # DDIM / Euler to the next level

Everything is in VE units (Karras et al. 2022): ``x`` is the state divided by its signal scale
alpha, ``sigma = std / alpha`` and ``d = (x - x0) / sigma`` is the probability-flow ODE derivative
(k-diffusion's ``to_d``). The builder converts once to the sampler state ``alpha * x``, so one
author serves variance-preserving, flow and EDM schedules. History slots hold VE quantities.
At zero terminal SNR the first level has sigma = inf and ``x`` is undefined: samplers that run on
such plans (DDIM, DDPM) write ``x0 + c * d``, which stays finite.

Frames: a sampler declared with ``frame="ode"`` (the generic one-step ODE solvers: Euler, Heun,
DPM-Solver-2) is written in the same words but runs in its schedule's natural ODE frame. On a
flow schedule that is flow time: ``x`` is the state over ``alpha + std`` (= 1),
``sigma = t = std / (alpha + std)`` and ``d = (x - x0) / t`` the velocity, as in diffusers'
FlowMatch schedulers (a Heun step averages slopes in t, not in VE sigma); elsewhere it is VE.
Exponential integrators (DPM-Solver++, UniPC), ancestral/SDE samplers and LMS (whose warm-up
steps are nearly exact only where the VE ODE is nearly linear, at large sigma) use the VE frame.

CFG++ samplers (Chung et al. 2024) also read ``p.x0u``, the unconditional x0 (and ``p.du``, the
derivative from it). The fused op computes one x0 per step, ``a*x + b*m`` with ``m`` a
combination of the unconditional and conditional outputs, so a row ``al*x0 + be*x0u + ...`` is
``(al + be) * x0'`` with ``x0'`` the x0 of guidance scaled by ``f = al / (al + be)``: the builder
folds ``x0u`` into the x0 column and records ``f`` on the :class:`~diffcore.samplers.program.Step`.
All rows of a step must share that ratio, except history values of ``x0u`` alone: those are
written by a second fused op before the step (on the unconditional output), into slots the step
does not read (give such a History one slot more than it reads).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffcore.samplers.expr import Expr
from diffcore.samplers.program import Program, Step
from diffcore.timesteps import Level, Plan

FRAMES = ("ve", "ode")


def ve_sigma(alpha: float, std: float) -> float:
    """VE noise level ``std / alpha``; inf at alpha = 0."""
    return math.inf if alpha == 0 else std / alpha


def half_log_snr(sigma: float) -> float:
    """lambda = log(alpha / std) = -log(sigma); +inf at sigma = 0, -inf at sigma = inf."""
    return math.inf if sigma == 0 else -math.log(sigma)


def plan_level(plan: Plan, i: int) -> Level:
    """Level ``i`` of ``plan`` (``i = plan.steps`` is its end point)."""
    t = plan.final_timestep if i == plan.steps else float(plan.timesteps[i])
    return Level(t, float(plan.alphas[i]), float(plan.stds[i]))


@dataclass(frozen=True)
class Point:
    """One model evaluation: where it happens and the VE expressions it provides.

    ``sigma_to`` is the VE level a plain :meth:`Builder.update` lands on (the plan's next level,
    or diffusers' DDIM target); ``alpha``/``alpha_to`` are the state scales there, for samplers
    defined on variance-preserving states (DDPM's ``fixed_large``).
    """

    step: int
    level: Level
    sigma: float
    sigma_to: float
    alpha_to: float
    scale: float = 0.0  # the frame's state scale here: alpha (VE frame) or alpha + std (flow frame)
    scale_to: float = math.nan  # ... and at the default target

    @property
    def alpha(self) -> float:
        return self.level.alpha

    @property
    def x(self) -> Expr:
        """The state in frame units, ``x_state / alpha`` in the VE frame."""
        return Expr({"x": math.inf if self.scale == 0 else 1.0 / self.scale}, self.step)

    @property
    def x0(self) -> Expr:
        """The model's estimate of the clean sample."""
        return Expr({"x0": 1.0}, self.step)

    @property
    def d(self) -> Expr:
        """``(x - x0) / sigma``, the ODE derivative dx/dsigma (the eps estimate)."""
        return self._derivative("x0")

    @property
    def x0u(self) -> Expr:
        """The unconditional model's x0 estimate (CFG++; needs guidance)."""
        return Expr({"x0u": 1.0}, self.step)

    @property
    def du(self) -> Expr:
        """``(x - x0u) / sigma``, the derivative from the unconditional x0 (CFG++'s renoising direction)."""
        return self._derivative("x0u")

    def _derivative(self, x0: str) -> Expr:
        if self.level.std == 0:
            raise ValueError(f"the derivative d{'u' if x0 == 'x0u' else ''} is undefined at sigma = 0")
        return Expr({"x": 1.0 / self.level.std, x0: -self.scale / self.level.std}, self.step)


class History:
    """The last ``size`` values pushed (VE units), newest first: ``h[0]`` is the latest push.

    A push made during a step becomes ``h[0]`` from the next model evaluation on; the builder
    keeps each value in a history slot of the fused op, reusing the slot of the oldest value.
    """

    def __init__(self, builder: Builder, size: int) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"history size={size!r} must be an integer >= 1")
        self._slots = list(range(builder.slots, builder.slots + size))
        self._ring: list[int] = []  # filled slots, newest first
        self._pending: tuple[int, Expr] | None = None
        builder.slots += size

    def __len__(self) -> int:
        return len(self._ring)

    def __getitem__(self, j: int) -> Expr:
        if not 0 <= j < len(self._ring):
            raise IndexError(f"history holds {len(self._ring)} value(s); [{j}] does not exist yet")
        return Expr({self._ring[j]: 1.0})

    def push(self, value: Expr) -> None:
        """Keep ``value`` (built from the current evaluation) for later steps."""
        if self._pending is not None:
            raise ValueError("one push per history per update")
        slot = self._ring[-1] if len(self._ring) == len(self._slots) else self._slots[len(self._ring)]
        self._pending = (slot, value)

    def _commit(self) -> tuple[int, Expr] | None:
        write, self._pending = self._pending, None
        if write is not None:
            self._ring = [write[0]] + [s for s in self._ring if s != write[0]]
        return write


@dataclass
class _Record:
    point: Point
    x_next: Expr  # in state units
    writes: list[tuple[int, Expr]]
    sigma: float
    span: tuple[float, float] | None


class Builder:
    """Records a sampler's model calls and updates over ``plan`` (see the module docstring)."""

    def __init__(self, plan: Plan, name: str = "sampler", frame: str = "ve") -> None:
        if frame not in FRAMES:
            raise ValueError(f"sampler {name!r}: frame={frame!r}: expected one of {FRAMES}")
        self.plan = plan
        self.name = name
        self.frame = plan.ode_frame if frame == "ode" else "ve"
        self.steps = plan.steps
        self.slots = 0
        self.noise = Expr({"z": 1.0})
        self._histories: list[History] = []
        self._records: list[_Record] = []
        self._open: Point | None = None
        self._span: tuple[float, float] | None = None

    def sigma(self, i: int) -> float:
        """Frame sigma (VE sigma, or flow time) of plan level ``i`` (``i = steps`` is the end point)."""
        return self._time(float(self.plan.alphas[i]), float(self.plan.stds[i]))

    def _scale(self, alpha: float, std: float) -> float:
        return alpha + std if self.frame == "flow" else alpha

    def _time(self, alpha: float, std: float) -> float:
        scale = self._scale(alpha, std)
        return math.inf if scale == 0 else std / scale

    def _ve(self, sigma: float) -> float:
        """VE sigma of frame sigma ``sigma``."""
        if self.frame == "flow":
            return math.inf if sigma >= 1 else sigma / (1.0 - sigma)
        return float(sigma)

    def history(self, size: int) -> History:
        """A :class:`History` of ``size`` values; create histories before the first model call."""
        if self._records or self._open is not None:
            raise ValueError("create histories before the first model call")
        h = History(self, size)
        self._histories.append(h)
        return h

    def noise_between(self, sigma: float, sigma_next: float) -> Expr:
        """The step's noise as the standard-normal increment of the run's Brownian path between
        two VE levels (:mod:`diffcore.samplers.brownian`): one path per seed at any step count."""
        if self._open is None:
            raise ValueError(f"sampler {self.name!r}: noise_between() belongs to a model call's update")
        self._span = (self._ve(sigma), self._ve(sigma_next))
        return self.noise

    def model(self, i: int) -> Point:
        """Evaluate the model at plan level ``i``; a plain update lands on the plan's target of i."""
        if not 0 <= i <= self.steps:
            raise ValueError(f"level {i} is outside the plan's 0..{self.steps}")
        alpha_to, std_to = self.plan.target(i) if i < self.steps else (math.nan, math.nan)
        return self._evaluate(
            plan_level(self.plan, i), self._time(alpha_to, std_to), alpha_to, self._scale(alpha_to, std_to)
        )

    def model_at(self, sigma: float) -> Point:
        """Evaluate the model at frame sigma ``sigma`` (e.g. a midpoint); updates name their target."""
        return self._evaluate(self.plan.level_at(self._ve(sigma)), math.nan, math.nan)

    def _evaluate(self, level: Level, sigma_to: float, alpha_to: float, scale_to: float = math.nan) -> Point:
        if self._open is not None:
            raise ValueError(f"sampler {self.name!r}: each model call needs its update() before the next")
        self._open = Point(
            len(self._records),
            level,
            self._time(level.alpha, level.std),
            sigma_to,
            alpha_to,
            self._scale(level.alpha, level.std),
            scale_to,
        )
        return self._open

    def update(self, x_next: Expr, *, level: int | None = None, sigma: float | None = None) -> None:
        """The new state (frame units) after the open model call, landing on plan level ``level``,
        on frame ``sigma``, or by default on the call's ``sigma_to``; pushed history values are written."""
        p = self._open
        if p is None:
            raise ValueError(f"sampler {self.name!r}: update() needs a model() call first")
        land = None
        if level is not None:
            land = plan_level(self.plan, level)
        elif sigma is not None:
            land = self.plan.level_at(self._ve(sigma))
        if land is not None:
            scale, sigma_land = self._scale(land.alpha, land.std), ve_sigma(land.alpha, land.std)
        elif math.isnan(p.sigma_to):
            raise ValueError(f"sampler {self.name!r}: an update after model_at() needs level= or sigma=")
        else:
            scale, sigma_land = p.scale_to, self._ve(p.sigma_to)
        writes = [w for w in (h._commit() for h in self._histories) if w is not None]
        for e in [x_next, *(v for _, v in writes)]:
            if e.step not in (None, p.step):
                raise ValueError(f"sampler {self.name!r}: an update uses x/x0 of an earlier model call")
        self._records.append(_Record(p, x_next * scale, writes, sigma_land, self._span))
        self._open, self._span = None, None

    def build(self) -> Program:
        """The program: per model call, rows over ``[x, x0, h_0..h_{K-1}, z]`` in state units."""
        if self._open is not None:
            raise ValueError(f"sampler {self.name!r}: the last model call has no update()")
        live = _live_writes(self._records)
        steps = []
        for k, rec in enumerate(self._records):
            kept = [(slot, e) for slot, e in rec.writes if (k, slot) in live]
            rows = np.stack([self._row(e, k) for e in [rec.x_next, *(e for _, e in kept)]])
            uses_uncond = bool(np.any(rows[:, 2] != 0))
            main, factor, side = self._fold(rows, [None, *(s for s, _ in kept)], k)
            rows = np.stack([r for _, r in main])
            noise = bool(np.any(rows[:, -1] != 0))
            steps.append(
                Step(
                    rec.point.level,
                    rows,
                    writes=tuple(s for s, _ in main[1:] if s is not None),
                    noise=noise,
                    sigma=rec.sigma,
                    span=rec.span if noise else None,
                    uncond=uses_uncond,
                    factor=factor,
                    side_rows=np.stack([r for _, r in side]) if side else None,
                    side_writes=tuple(s for s, _ in side),
                )
            )
        return Program(steps=steps, slots=self.slots)

    def _row(self, e: Expr, k: int) -> np.ndarray:
        """Coefficients over ``[x, x0, x0u, h_0..h_{K-1}, z]``."""
        row = np.zeros(4 + self.slots)
        for term, c in e.terms.items():
            row[{"x": 0, "x0": 1, "x0u": 2, "z": 3 + self.slots}[term] if isinstance(term, str) else 3 + term] += c
        if not np.isfinite(row).all():
            raise ValueError(
                f"sampler {self.name!r}: step {k} has a non-finite coefficient {row.tolist()}; at "
                "sigma = inf (zero terminal SNR) write updates as x0 + c * d"
            )
        return row

    def _fold(
        self, rows: np.ndarray, slots: list[int | None], k: int
    ) -> tuple[list[tuple[int | None, np.ndarray]], float, list[tuple[int, np.ndarray]]]:
        """Split a step's ``[x, x0, x0u, ...]`` rows into the main op's rows (x0u folded into x0;
        the CFG++ factor f) and the side op's history rows of x0u alone (x0u in the x0 column)."""
        drop = lambda r: np.delete(r, 2)  # noqa: E731
        if not np.any(rows[:, 2] != 0):
            return [(s, drop(r)) for s, r in zip(slots, rows)], 1.0, []
        side = [(s, r) for s, r in zip(slots, rows) if s is not None and r[1] == 0 and r[2] != 0]
        main = [(s, r) for s, r in zip(slots, rows) if not any(s == t for t, _ in side)]
        ratios = []
        for _, r in main:
            if r[1] != 0 or r[2] != 0:
                if r[1] + r[2] == 0:
                    raise ValueError(
                        f"sampler {self.name!r}: step {k} uses x0 - x0u alone, which no guidance "
                        "scale gives; write it as a mix a*x0 + b*x0u with a + b != 0"
                    )
                ratios.append(r[1] / (r[1] + r[2]))
        if any(not math.isclose(f, ratios[0], rel_tol=1e-9, abs_tol=1e-12) for f in ratios):
            raise ValueError(
                f"sampler {self.name!r}: step {k} mixes x0 and x0u in different ratios {ratios}; "
                "the fused op computes one x0 per step"
            )
        read = {j for _, r in main for j in range(self.slots) if r[3 + j] != 0}
        for s, r in side:
            if s in read or r[-1] != 0:
                raise ValueError(
                    f"sampler {self.name!r}: step {k} writes x0u to history slot {s}, which the step "
                    "also reads, or with noise; give the History one more slot"
                )
        folded = [(s, np.concatenate([r[:1], [r[1] + r[2]], r[3:]])) for s, r in main]
        return folded, ratios[0] if ratios else 1.0, [(s, np.concatenate([r[:1], r[2:3], r[3:]])) for s, r in side]


def _live_writes(records: list[_Record]) -> set[tuple[int, int]]:
    """(step, slot) of the history writes some later step reads before the slot is written again."""
    live = set()
    for k, rec in enumerate(records):
        for slot, _ in rec.writes:
            for later in records[k + 1 :]:
                if any(slot in e.terms for e in [later.x_next, *(v for _, v in later.writes)]):
                    live.add((k, slot))
                    break
                if any(s == slot for s, _ in later.writes):
                    break
    return live


Author = Callable[..., None]

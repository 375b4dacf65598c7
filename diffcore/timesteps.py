"""Sampling plans: which noise levels a sampler visits and what timestep the model sees at each.

A :class:`Plan` holds, in float64, for levels ``i = 0..n`` (level ``n`` is the end point):
the VE noise level ``sigmas[i]``, the state-space signal scale ``alphas[i]`` and noise std
``stds[i]`` (the sampler state is ``x = alpha * x0 + std * eps``: variance preserving for
discrete schedules, so the model input needs no scaling, and ``alpha = 1`` for EDM), and the
model time ``timesteps[i]`` for ``i < n``.

Each diffusers scheduler spaces timesteps its own way; a sampler names its preset in
:data:`PLAN_PRESETS` so diffcore reproduces the levels of the diffusers scheduler it follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from diffcore.schedules import DiscreteSchedule, EDMSchedule, Schedule, exponential_sigmas, karras_sigmas

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


@dataclass(frozen=True)
class PlanPreset:
    """How one diffusers scheduler family places its levels.

    ``grid``: ``"train"`` timesteps on the training grid (DDIM/DDPM), ``"dpm"`` the n+1-point
    spacing of the multistep solvers, ``"karras"`` sigmas interpolated at fractional timesteps.
    ``target``: ``"next"`` steps land on the next level; ``"ddim"`` on ``t - T // steps``.
    """

    grid: str
    target: str
    follows: str


PLAN_PRESETS: dict[str, PlanPreset] = {
    "ddim": PlanPreset("train", "ddim", "DDIMScheduler"),
    "ddpm": PlanPreset("train", "next", "DDPMScheduler"),
    "dpm": PlanPreset("dpm", "next", "DPMSolverMultistepScheduler, UniPCMultistepScheduler"),
    "karras": PlanPreset("karras", "next", "Euler-, EulerAncestral-, Heun- and LMSDiscreteScheduler"),
}


@dataclass(frozen=True)
class Level:
    """One noise level: model time ``t``, state scale ``alpha`` and state noise std ``std``."""

    t: float
    alpha: float
    std: float


@dataclass(frozen=True)
class Plan:
    """Noise levels of one sampling run (see the module docstring)."""

    timesteps: Tensor
    sigmas: Tensor
    alphas: Tensor
    stds: Tensor
    init_scale: float
    timestep_dtype: torch.dtype
    target_alphas: Tensor
    target_stds: Tensor
    final_timestep: float = 0.0  # model time at the end point (used when it is a positive level)
    vp: bool = True  # variance-preserving state (discrete schedules); False: VE state, alpha = 1
    sigma_to_t: Callable[[Tensor], Tensor] | None = None  # VE sigma -> model time

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    def level(self, i: int) -> tuple[float, float]:
        """(alpha, std) of level i."""
        return float(self.alphas[i]), float(self.stds[i])

    def level_at(self, sigma: float) -> Level:
        """The level of VE noise ``sigma`` on this plan's schedule, e.g. a solver's midpoint."""
        if not sigma >= 0 or self.sigma_to_t is None:
            raise ValueError(f"sigma={sigma} must be >= 0 on a plan that knows its schedule")
        t = float(self.sigma_to_t(torch.tensor([sigma], dtype=torch.float64))[0])
        if not self.vp:
            return Level(t, 1.0, float(sigma))
        alpha = 1.0 / (1.0 + sigma * sigma) ** 0.5
        return Level(t, alpha, sigma * alpha)

    def target(self, i: int) -> tuple[float, float]:
        """(alpha, std) the step from level i lands on (level i+1 except diffusers' DDIM rule)."""
        return float(self.target_alphas[i]), float(self.target_stds[i])


def vp_from_sigma(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """State-space (alpha, std) of VE sigmas for a variance-preserving model; sigma=inf -> (0, 1)."""
    alphas = torch.where(torch.isinf(sigmas), torch.zeros_like(sigmas), 1 / (1 + sigmas**2).sqrt())
    stds = torch.where(torch.isinf(sigmas), torch.ones_like(sigmas), sigmas * alphas)
    return alphas, stds


def _check(steps: int, spacing: str, style: str, schedule: Schedule) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r}: expected one of {TIMESTEP_SPACINGS}")
    if style not in PLAN_PRESETS:
        raise ValueError(f"plan preset {style!r}: expected one of {sorted(PLAN_PRESETS)}")
    if isinstance(schedule, DiscreteSchedule) and steps > schedule.num_train_timesteps:
        raise ValueError(f"steps={steps} exceeds num_train_timesteps={schedule.num_train_timesteps}")
    if not isinstance(schedule, (DiscreteSchedule, EDMSchedule)):
        raise TypeError(f"schedule must be a DiscreteSchedule or EDMSchedule, got {type(schedule).__name__}")


def _spaced(T: int, n: int, spacing: str, offset: int, extra: int) -> Tensor:
    """Descending timesteps; ``extra=1`` reproduces the n+1-point spacing of DPM-Solver/UniPC.

    Computed with NumPy as diffusers does, so half-way values round the same way.
    """
    m = n + extra
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, m).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, m) * (T // m)).round()[::-1] + offset
    else:
        ts = np.arange(T, 0, -T / n).round() - 1
    return torch.from_numpy(np.ascontiguousarray(ts[:n], dtype=np.float64))


def _append(values: Tensor, last: float) -> Tensor:
    return torch.cat([values, torch.tensor([last], dtype=torch.float64)])


def _spaced_sigmas(schedule: DiscreteSchedule, lo: float, hi: float, n: int) -> Tensor:
    lo = schedule.sigma_min if schedule.sigma_min is not None else lo
    hi = schedule.sigma_max if schedule.sigma_max is not None else hi
    if schedule.sigma_spacing == "karras":
        return karras_sigmas(lo, hi, n, schedule.rho)
    return exponential_sigmas(lo, hi, n)


def _next_targets(alphas: Tensor, stds: Tensor) -> tuple[Tensor, Tensor]:
    return alphas[1:].clone(), stds[1:].clone()


def _edm_plan(schedule: EDMSchedule, n: int) -> Plan:
    sigmas = _append(karras_sigmas(schedule.sigma_min, schedule.sigma_max, n, schedule.rho), 0.0)
    alphas = torch.ones_like(sigmas)
    return Plan(
        timesteps=sigmas[:-1].clone(),
        sigmas=sigmas,
        alphas=alphas,
        stds=sigmas.clone(),
        init_scale=float(sigmas[0]),
        timestep_dtype=torch.float32,
        target_alphas=alphas[1:].clone(),
        target_stds=sigmas[1:].clone(),
    )


def _ddim_plan(schedule: DiscreteSchedule, n: int, spacing: str, rule: str) -> Plan:
    T = schedule.num_train_timesteps
    abar = schedule.alphas_cumprod
    if schedule.sigma_spacing != "timesteps":
        train = schedule.train_sigmas()
        sig = _spaced_sigmas(schedule, float(train[0]), float(train[-1]), n)
        ts = schedule.sigma_to_t(sig).round()
        alphas, stds = vp_from_sigma(_append(sig, 0.0))
        ta, tsd = _next_targets(alphas, stds)
        return Plan(ts, _append(sig, 0.0), alphas, stds, 1.0, torch.int64, ta, tsd)
    ts = _spaced(T, n, spacing, schedule.steps_offset, 0)
    if int(ts.max()) >= T:
        raise ValueError(f"steps_offset={schedule.steps_offset} pushes timestep {int(ts.max())} past {T - 1}")
    a_bar = abar[ts.long()]
    alphas = _append(a_bar.sqrt(), 1.0)
    stds = _append((1 - a_bar).sqrt(), 0.0)
    sigmas = _append(((1 - a_bar) / a_bar).sqrt(), 0.0)
    if rule == "ddim":  # diffusers' DDIMScheduler steps to t - T // n, not to the next timestep
        prev = ts - T // n
        prev_abar = torch.where(prev >= 0, abar[prev.clamp_min(0).long()], torch.ones_like(prev))
        ta, tsd = prev_abar.sqrt(), (1 - prev_abar).sqrt()
    else:
        ta, tsd = _next_targets(alphas, stds)
    return Plan(ts, sigmas, alphas, stds, 1.0, torch.int64, ta, tsd)


def _dpm_plan(schedule: DiscreteSchedule, n: int, spacing: str) -> Plan:
    T = schedule.num_train_timesteps
    train = schedule.train_sigmas()
    if schedule.sigma_spacing != "timesteps":
        sig = _spaced_sigmas(schedule, float(train[0]), float(train[-1]), n)
        ts = schedule.sigma_to_t(sig)
        if schedule.sigma_spacing == "karras":
            ts = ts.round()
    else:
        ts = _spaced(T, n, spacing, schedule.steps_offset, 1)
        if int(ts.max()) >= T:
            raise ValueError(f"steps_offset={schedule.steps_offset} pushes timestep {int(ts.max())} past {T - 1}")
        sig = train[ts.long()]
    sigmas = _append(sig, 0.0)
    alphas, stds = vp_from_sigma(sigmas)
    dtype = torch.int64 if bool((ts == ts.round()).all()) else torch.float32
    return Plan(ts, sigmas, alphas, stds, 1.0, dtype, *_next_targets(alphas, stds))


def _karras_plan(schedule: DiscreteSchedule, n: int, spacing: str) -> Plan:
    T = schedule.num_train_timesteps
    if spacing == "linspace":  # diffusers builds these in float32
        ts = torch.from_numpy(np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64))
    else:
        ts = _spaced(T, n, spacing, schedule.steps_offset, 0)
    if float(ts.max()) > T - 1:
        raise ValueError(f"steps_offset={schedule.steps_offset} pushes timestep {float(ts.max())} past {T - 1}")
    train = schedule.train_sigmas()
    lo_i = ts.floor().long().clamp(0, T - 1)
    hi_i = (lo_i + 1).clamp(max=T - 1)
    w = ts - lo_i
    sig = train[lo_i] * (1 - w) + train[hi_i] * w
    if schedule.sigma_spacing != "timesteps":
        sig = _spaced_sigmas(schedule, float(sig[-1]), float(sig[0]), n)
        ts = schedule.sigma_to_t(sig)
    sigmas = _append(sig, 0.0)
    alphas, stds = vp_from_sigma(sigmas)
    s_max = float(sig.max())
    # diffusers' init_noise_sigma: sigma_max for linspace/trailing, sqrt(sigma_max^2 + 1) for leading
    init_ve = s_max if spacing in ("linspace", "trailing") else (s_max**2 + 1) ** 0.5
    return Plan(ts, sigmas, alphas, stds, init_ve * float(alphas[0]), torch.float32, *_next_targets(alphas, stds))


def make_plan(schedule: Schedule, steps: int, spacing: str = "leading", style: str = "karras") -> Plan:
    """The noise levels ``steps`` sampler steps visit on ``schedule``, placed as the diffusers
    scheduler of preset ``style`` (a key of :data:`PLAN_PRESETS`) places them."""
    _check(steps, spacing, style, schedule)
    preset = PLAN_PRESETS[style]
    if isinstance(schedule, EDMSchedule):
        plan = _edm_plan(schedule, steps)
    elif preset.grid == "train":
        plan = _ddim_plan(schedule, steps, spacing, preset.target)
    elif preset.grid == "dpm":
        plan = _dpm_plan(schedule, steps, spacing)
    else:
        plan = _karras_plan(schedule, steps, spacing)
    return _with_schedule(plan, schedule)


def _with_schedule(plan: Plan, schedule: Schedule) -> Plan:
    if isinstance(schedule, EDMSchedule):
        return replace(plan, vp=False, sigma_to_t=lambda s: s.clone())
    return replace(plan, vp=True, sigma_to_t=schedule.sigma_to_t)


def plan_from_sigmas(schedule: Schedule, sigmas: Tensor | list[float]) -> Plan:
    """A plan through explicit, strictly decreasing VE sigmas (the last may be 0 or positive)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sig.numel() < 2:
        raise ValueError(f"need at least 2 sigmas, got {sig.numel()}")
    if not bool((sig[1:] < sig[:-1]).all()) or float(sig[-1]) < 0:
        raise ValueError(f"sigmas must be strictly decreasing and >= 0, got {sig.tolist()}")
    if isinstance(schedule, EDMSchedule):
        alphas, stds, ts = torch.ones_like(sig), sig.clone(), sig.clone()
    else:
        alphas, stds = vp_from_sigma(sig)
        ts = schedule.sigma_to_t(sig)
    plan = Plan(ts[:-1], sig, alphas, stds, float(stds[0]), torch.float32, *_next_targets(alphas, stds), float(ts[-1]))
    return _with_schedule(plan, schedule)


def partial_plan(schedule: Schedule, steps: int, t_start: float) -> Plan:
    """``steps`` steps from model time ``t_start`` down to 0, for runs that start from data:
    SDEdit, denoising, partial-diffusion reconstruction. ``t_start`` is a (fractional) training
    timestep of a discrete schedule, or the VE sigma of an EDM schedule. Timesteps are uniform
    in t (sigma-spaced for karras / exponential / EDM schedules); the model sees their exact t."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    t0 = float(t_start)
    if isinstance(schedule, EDMSchedule):
        if not schedule.sigma_min < t0:
            raise ValueError(f"start sigma {t0} must exceed the schedule's sigma_min={schedule.sigma_min}")
        return plan_from_sigmas(schedule, _append(karras_sigmas(schedule.sigma_min, t0, steps, schedule.rho), 0.0))
    if not 0 < t0 <= schedule.num_train_timesteps - 1:
        raise ValueError(f"start timestep {t0} must be in (0, {schedule.num_train_timesteps - 1}]")
    train = schedule.train_sigmas()
    ts = torch.linspace(t0, 0, steps + 1, dtype=torch.float64)[:-1]
    lo = ts.floor().long().clamp(0, train.shape[0] - 1)
    hi = (lo + 1).clamp(max=train.shape[0] - 1)
    sig = train[lo] * (1 - (ts - lo)) + train[hi] * (ts - lo)
    if schedule.sigma_spacing != "timesteps":
        sig = _spaced_sigmas(schedule, float(train[0]), float(sig[0]), steps)
    return plan_from_sigmas(schedule, _append(sig, 0.0))

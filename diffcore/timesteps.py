"""Sampling plans: which noise levels a sampler visits and what timestep the model sees at each.

A :class:`Plan` holds, in float64, for levels ``i = 0..n`` (level ``n`` is the end point):
the VE noise level ``sigmas[i]``, the state-space signal scale ``alphas[i]`` and noise std
``stds[i]`` (the sampler state is ``x = alpha * x0 + std * eps``: variance preserving for
discrete schedules, so the model input needs no scaling, ``alpha = 1`` for EDM and
``alpha = 1 - t, std = t`` for flow schedules), and the model time ``timesteps[i]`` for ``i < n``.

Each diffusers scheduler spaces timesteps its own way; a sampler names its preset in
:data:`PLAN_PRESETS` so diffcore reproduces the levels of the diffusers scheduler it follows.
On a flow schedule the presets place the levels of diffusers' flow schedulers (the ``flow``
field): FlowMatchEulerDiscreteScheduler for ``karras`` (and for ``ddim`` / ``ddpm``, which have
no flow counterpart: DDIM is the Euler step on a flow path), DPMSolverMultistepScheduler and
UniPCMultistepScheduler with ``use_flow_sigmas=True`` for ``dpm`` and ``unipc``; diffusers
ignores ``timestep_spacing`` there, and so does diffcore, except ``trailing``: evenly spaced flow
times that end exactly at t = 0, for the Euler-grid presets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from diffcore.flow_levels import flow_spaced_times, flow_times
from diffcore.schedules import (
    SCHEDULE_TYPES,
    DiscreteSchedule,
    EDMSchedule,
    FlowSchedule,
    Schedule,
    shift_times,
    vp_from_sigma,
)
from diffcore.sigmas import BETWEEN_ENDS, ays_sigmas, discrete_sigmas, karras_sigmas, log_interp

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
STEP_RULES = ("diffusers", "exact")


@dataclass(frozen=True)
class PlanPreset:
    """How one diffusers scheduler family places its levels.

    ``grid``: ``"train"`` timesteps on the training grid (DDIM/DDPM), ``"dpm"`` the n+1-point
    spacing of the multistep solvers, ``"karras"`` sigmas interpolated at fractional timesteps.
    ``target``: ``"next"`` steps land on the next level; ``"ddim"`` on ``t - T // steps``.
    ``flow``: the levels on a flow schedule, one of :data:`diffcore.flow_levels.FLOW_GRIDS` (see :func:`flow_times`).
    ``plan``: where no grid fits, ``plan(schedule, steps, spacing, **options)`` places the levels
    on a discrete schedule; ``options`` names the sampler options it takes (see :func:`make_plan`).
    """

    grid: str
    target: str
    follows: str
    flow: str = "euler"
    plan: Callable[..., Plan] | None = None
    options: tuple[str, ...] = ()


PLAN_PRESETS: dict[str, PlanPreset] = {
    "ddpm": PlanPreset("train", "next", "DDPMScheduler", "euler"),
    "dpm": PlanPreset("dpm", "next", "DPMSolverMultistepScheduler", "dpm"),
    "unipc": PlanPreset("dpm", "next", "UniPCMultistepScheduler", "unipc"),
    "karras": PlanPreset(
        "karras",
        "next",
        "Euler-, EulerAncestral-, Heun- and LMSDiscreteScheduler; FlowMatchEuler- and FlowMatchHeunDiscreteScheduler",
        "euler",
    ),
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
    state: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None  # VE sigma -> (alpha, std)
    sigma_to_t: Callable[[Tensor], Tensor] | None = None  # VE sigma -> model time
    ode_frame: str = "ve"  # the schedule's natural ODE frame for generic ODE solvers: "ve" or "flow" (t)

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    def level(self, i: int) -> tuple[float, float]:
        """(alpha, std) of level i."""
        return float(self.alphas[i]), float(self.stds[i])

    def level_at(self, sigma: float) -> Level:
        """The level of VE noise ``sigma`` on this plan's schedule, e.g. a solver's midpoint."""
        if not sigma >= 0 or self.sigma_to_t is None or self.state is None:
            raise ValueError(f"sigma={sigma} must be >= 0 on a plan that knows its schedule")
        s = torch.tensor([sigma], dtype=torch.float64)
        alpha, std = self.state(s)
        return Level(float(self.sigma_to_t(s)[0]), float(alpha[0]), float(std[0]))

    def target(self, i: int) -> tuple[float, float]:
        """(alpha, std) the step from level i lands on (level i+1 except diffusers' DDIM rule)."""
        return float(self.target_alphas[i]), float(self.target_stds[i])

    def tail(self, first: int) -> Plan:
        """The plan from level ``first`` on (img2img's truncated run: diffusers' ``timesteps[t_start:]``)."""
        if not 0 <= first < self.steps:
            raise ValueError(f"first step {first} must be in [0, {self.steps})")
        names = ("timesteps", "sigmas", "alphas", "stds", "target_alphas", "target_stds")
        cut = {k: getattr(self, k)[first:] for k in names}
        return replace(self, **cut, init_scale=float(self.stds[first]))


def _check(steps: int, spacing: str, style: str, schedule: Schedule) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r}: expected one of {TIMESTEP_SPACINGS}")
    if style not in PLAN_PRESETS:
        raise ValueError(f"plan preset {style!r}: expected one of {sorted(PLAN_PRESETS)}")
    if isinstance(schedule, DiscreteSchedule) and steps > schedule.num_train_timesteps:
        raise ValueError(f"steps={steps} exceeds num_train_timesteps={schedule.num_train_timesteps}")
    if not isinstance(schedule, SCHEDULE_TYPES):
        raise TypeError(
            f"schedule must be a DiscreteSchedule, EDMSchedule or FlowSchedule, got {type(schedule).__name__}"
        )


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
    """n levels in the schedule's ``sigma_spacing``; ``lo`` / ``hi`` (or the schedule's
    ``sigma_min`` / ``sigma_max``) are the ends of the spacings between two ends."""
    lo = schedule.sigma_min if schedule.sigma_min is not None else lo
    hi = schedule.sigma_max if schedule.sigma_max is not None else hi
    return discrete_sigmas(schedule.sigma_spacing, n, lo, hi, schedule.train_sigmas(), schedule.rho, schedule.ays_model)


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


def _ddim_rule_plan(schedule: DiscreteSchedule, n: int, spacing: str, step_rule: str = "diffusers") -> Plan:
    """DDIMScheduler's timesteps. ``step_rule="diffusers"`` (default, for parity) steps from t to
    ``t - T // n`` as DDIMScheduler does, which under linspace / trailing spacing is not the next
    planned timestep (diffusers issues #11347, #12633); ``"exact"`` lands on the next one."""
    if step_rule not in STEP_RULES:
        raise ValueError(f"step_rule={step_rule!r}: expected one of {STEP_RULES}")
    return _ddim_plan(schedule, n, spacing, "ddim" if step_rule == "diffusers" else "next")


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


def _flow_plan(schedule: FlowSchedule, times: Tensor, integer: bool) -> Plan:
    """A plan through descending flow times ``times`` down to t = 0."""
    t = _append(times, 0.0)
    sigmas = torch.where(t >= 1, torch.full_like(t, torch.inf), t / (1 - t))
    model_t = times * schedule.num_train_timesteps
    if integer:  # diffusers' multistep schedulers cast t * T to int64
        model_t = torch.from_numpy((times.numpy() * schedule.num_train_timesteps).astype(np.int64)).to(torch.float64)
    alphas, stds = 1 - t, t.clone()
    plan = Plan(
        model_t, sigmas, alphas, stds, 1.0, torch.int64 if integer else torch.float32, *_next_targets(alphas, stds)
    )
    return _with_schedule(plan, schedule)


def make_plan(
    schedule: Schedule, steps: int, spacing: str = "leading", style: str = "karras", **options: object
) -> Plan:
    """The noise levels ``steps`` sampler steps visit on ``schedule``, placed as the diffusers
    scheduler of preset ``style`` (a key of :data:`PLAN_PRESETS`) places them. ``options``: the
    sampler options the preset's plan function takes (``PLAN_PRESETS[style].options``)."""
    _check(steps, spacing, style, schedule)
    preset = PLAN_PRESETS[style]
    unknown = sorted(set(options) - set(preset.options))
    if unknown:
        raise TypeError(
            f"plan preset {style!r} got unknown option(s) {unknown}; it takes: {', '.join(preset.options) or 'none'}"
        )
    if isinstance(schedule, FlowSchedule):
        return _flow_plan(schedule, *flow_times(schedule, steps, preset.flow, uniform=spacing == "trailing"))
    if isinstance(schedule, EDMSchedule):
        plan = _edm_plan(schedule, steps)
    elif preset.plan is not None:
        plan = preset.plan(schedule, steps, spacing, **options)
    elif preset.grid == "train":
        plan = _ddim_plan(schedule, steps, spacing, preset.target)
    elif preset.grid == "dpm":
        plan = _dpm_plan(schedule, steps, spacing)
    else:
        plan = _karras_plan(schedule, steps, spacing)
    if isinstance(schedule, DiscreteSchedule) and schedule.final_sigmas_type == "sigma_min":
        plan = _end_at_first_timestep(plan, schedule, ve_end=preset.grid == "karras")
    return _with_schedule(plan, schedule)


def continuous_time(sigma: Tensor) -> Tensor:
    """EDM's c_noise = 0.25 ln(sigma) (Karras et al. 2022, Table 1): the model time of a discrete
    schedule with ``timestep_type="continuous"``."""
    return 0.25 * sigma.to(torch.float64).clamp_min(1e-10).log()


def _with_schedule(plan: Plan, schedule: Schedule) -> Plan:
    frame = "flow" if isinstance(schedule, FlowSchedule) else "ve"
    if isinstance(schedule, DiscreteSchedule) and schedule.timestep_type == "continuous":
        end = float(plan.sigmas[-1])
        final = float(continuous_time(plan.sigmas[-1:])[0]) if end > 0 else 0.0
        timesteps = continuous_time(plan.sigmas[: plan.steps])
        plan = replace(plan, timesteps=timesteps, timestep_dtype=torch.float32, final_timestep=final)
        return replace(plan, state=schedule.state, sigma_to_t=continuous_time, ode_frame=frame)
    return replace(plan, state=schedule.state, sigma_to_t=schedule.sigma_to_t, ode_frame=frame)


def plan_from_sigmas(schedule: Schedule, sigmas: Tensor | list[float]) -> Plan:
    """A plan through explicit, strictly decreasing VE sigmas (the last may be 0 or positive)."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if sig.numel() < 2:
        raise ValueError(f"need at least 2 sigmas, got {sig.numel()}")
    if not bool((sig[1:] < sig[:-1]).all()) or float(sig[-1]) < 0:
        raise ValueError(f"sigmas must be strictly decreasing and >= 0, got {sig.tolist()}")
    alphas, stds = schedule.state(sig)
    ts = schedule.sigma_to_t(sig)
    plan = Plan(ts[:-1], sig, alphas, stds, float(stds[0]), torch.float32, *_next_targets(alphas, stds), float(ts[-1]))
    return _with_schedule(plan, schedule)


def partial_plan(schedule: Schedule, steps: int, t_start: float) -> Plan:
    """``steps`` steps from model time ``t_start`` down to 0, for runs that start from data:
    SDEdit, denoising, partial-diffusion reconstruction. ``t_start`` is a (fractional) training
    timestep of a discrete schedule, the VE sigma of an EDM schedule, or the model time
    ``t * num_train_timesteps`` of a flow schedule. Timesteps are uniform in t (on a flow
    schedule uniform before its shift, so the levels are the shifted schedule's below t_start;
    log-interpolated levels for simple / sgm_uniform); the spacings between two ends and EDM place
    their levels between the first training level and t_start's; align_your_steps follows its
    table's curve from t_start's level. The model sees their exact t."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1")
    t0 = float(t_start)
    if isinstance(schedule, FlowSchedule):
        return _flow_partial_plan(schedule, steps, t0)
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
    if schedule.sigma_spacing in BETWEEN_ENDS:
        sig = _spaced_sigmas(schedule, float(train[0]), float(sig[0]), steps)
    elif schedule.sigma_spacing == "align_your_steps":  # the table's curve from the start level
        sig = ays_sigmas(schedule.ays_model, steps, start=float(sig[0]))
    elif schedule.sigma_spacing != "timesteps":  # simple, sgm_uniform: uniform timesteps from t_start
        sig = log_interp(train, ts)
    return plan_from_sigmas(schedule, _append(sig, 0.0))


def _flow_partial_plan(schedule: FlowSchedule, steps: int, t0: float) -> Plan:
    T = schedule.num_train_timesteps
    if not 0 < t0 <= T:
        raise ValueError(f"start time {t0} must be in (0, {T}] (t * num_train_timesteps)")
    s = schedule.effective_shift()
    start = t0 / T
    u0 = start / (s - (s - 1) * start)  # the inverse of shift_times
    times = shift_times(torch.linspace(u0, 0, steps + 1, dtype=torch.float64)[:-1], s)
    times[0] = start
    if schedule.sigma_spacing in BETWEEN_ENDS:  # simple, sgm_uniform: the uniform training index above
        lo = min(float(shift_times(torch.tensor(1 / T, dtype=torch.float64), s)), start / 2)
        times = flow_spaced_times(schedule, lo, start, steps)
    return _flow_plan(schedule, times, integer=False)


def sigma_at_time(plan: Plan, t: float) -> float:
    """The VE sigma where ``plan``'s schedule reaches model time ``t``: the inverse of its
    ``sigma_to_t`` by bisection in log sigma, ``sup{sigma : sigma_to_t(sigma) <= t}`` (so time 0 of
    a discrete schedule is its first training level). Returns the upper end of the final bracket,
    whose time is >= t: an integer time truncates back to ``t``."""
    to_t = plan.sigma_to_t
    if to_t is None:
        raise ValueError("the plan does not know its schedule's times")

    def time(s: float) -> float:
        return float(to_t(torch.tensor([s], dtype=torch.float64))[0])

    lo, hi = 0.0, 1.0
    while time(hi) <= t:
        hi *= 2.0
        if hi > 1e12:
            raise ValueError(f"model time {t} is beyond the schedule's last level")
    for _ in range(300):
        mid = (lo * hi) ** 0.5 if lo > 0 else hi / 16
        if mid <= lo or mid >= hi:
            break
        lo, hi = (mid, hi) if time(mid) <= t else (lo, mid)
    return hi


def _end_at_first_timestep(plan: Plan, schedule: DiscreteSchedule, ve_end: bool = False) -> Plan:
    """``plan`` with its end point, and every step target at sigma 0, moved to training timestep 0
    (diffusers' ``set_alpha_to_one=False`` / ``sigma_last`` of timestep 0). ``ve_end``: return
    the VE state ``x0 + sigma eps`` there, as diffusers' Euler-style schedulers do (alpha 1)."""
    a0 = schedule.alphas_cumprod[0]
    alphas, stds, sigmas = plan.alphas.clone(), plan.stds.clone(), plan.sigmas.clone()
    alphas[-1], stds[-1], sigmas[-1] = a0.sqrt(), (1 - a0).sqrt(), ((1 - a0) / a0).sqrt()
    if ve_end:
        alphas[-1], stds[-1] = 1.0, sigmas[-1]
    ta, tsd = plan.target_alphas.clone(), plan.target_stds.clone()
    at_zero = tsd == 0
    ta[at_zero], tsd[at_zero] = alphas[-1], stds[-1]
    return replace(plan, alphas=alphas, stds=stds, sigmas=sigmas, target_alphas=ta, target_stds=tsd)


def _deis_plan(schedule: DiscreteSchedule, n: int, spacing: str) -> Plan:
    """DEISMultistepScheduler: the multistep solvers' grid, ending at timestep 0, not sigma 0."""
    plan = _dpm_plan(schedule, n, spacing)
    return plan if schedule.sigma_spacing != "timesteps" else _end_at_first_timestep(plan, schedule)


def _pndm_plan(schedule: DiscreteSchedule, n: int, spacing: str) -> Plan:
    """PNDMScheduler: DDIM's timesteps and ``t - T // n`` targets; a target below timestep 0 is
    timestep 0 (its default ``set_alpha_to_one=False``)."""
    plan = _ddim_plan(schedule, n, spacing, "ddim")
    return plan if schedule.sigma_spacing != "timesteps" else _end_at_first_timestep(plan, schedule)


def lcm_timesteps(num_train_timesteps: int, steps: int, original_inference_steps: int = 50) -> Tensor:
    """LCMScheduler's and TCDScheduler's timesteps (Luo et al. 2023): ``steps`` evenly skipped
    among the ``original_inference_steps`` distillation timesteps ``k j - 1``, k = T // original."""
    T, orig = num_train_timesteps, original_inference_steps
    if isinstance(orig, bool) or not isinstance(orig, int) or not 1 <= orig <= T:
        raise ValueError(f"original_inference_steps={orig!r} must be an integer in [1, {T}]")
    if steps > orig:
        raise ValueError(f"steps={steps} exceeds original_inference_steps={orig}: the steps are a subset of those")
    origin = (np.arange(1, orig + 1) * (T // orig) - 1)[::-1]
    pick = np.floor(np.linspace(0, orig, num=steps, endpoint=False)).astype(np.int64)
    return torch.from_numpy(origin[pick].astype(np.float64))


def _train_plan(schedule: DiscreteSchedule, ts: Tensor, end_abar: float) -> Plan:
    """A plan through training timesteps ``ts`` to an end level of alpha_bar ``end_abar``."""
    a_bar = _append(schedule.alphas_cumprod[ts.long()], end_abar)
    alphas, stds = a_bar.sqrt(), (1 - a_bar).sqrt()
    return Plan(ts, ((1 - a_bar) / a_bar).sqrt(), alphas, stds, 1.0, torch.int64, *_next_targets(alphas, stds))


def _lcm_plan(schedule: DiscreteSchedule, n: int, spacing: str, original_inference_steps: int = 50) -> Plan:
    """LCMScheduler: :func:`lcm_timesteps`, ending at sigma 0 (its last step returns the denoised
    sample); ``timestep_spacing`` and ``sigma_spacing`` do not apply."""
    return _train_plan(schedule, lcm_timesteps(schedule.num_train_timesteps, n, original_inference_steps), 1.0)


def _tcd_plan(schedule: DiscreteSchedule, n: int, spacing: str, original_inference_steps: int = 50) -> Plan:
    """TCDScheduler: LCM's timesteps, ending at training timestep 0."""
    ts = lcm_timesteps(schedule.num_train_timesteps, n, original_inference_steps)
    return _train_plan(schedule, ts, float(schedule.alphas_cumprod[0]))


PLAN_PRESETS.update(
    {
        "ddim": PlanPreset("train", "ddim", "DDIMScheduler", "euler", plan=_ddim_rule_plan, options=("step_rule",)),
        "deis": PlanPreset("dpm", "next", "DEISMultistepScheduler", "dpm", plan=_deis_plan),
        "pndm": PlanPreset("train", "ddim", "PNDMScheduler", "euler", plan=_pndm_plan),
        "lcm": PlanPreset(
            "lcm", "next", "LCMScheduler", "euler", plan=_lcm_plan, options=("original_inference_steps",)
        ),
        "tcd": PlanPreset(
            "lcm", "next", "TCDScheduler", "euler", plan=_tcd_plan, options=("original_inference_steps",)
        ),
    }
)

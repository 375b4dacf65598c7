"""``diffcore.sample``: the one high-level sampling entry point."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from diffcore import ops, plan_cache
from diffcore.denoiser import Denoiser
from diffcore.guidance import Guidance, make_guidance
from diffcore.ops.philox import ADD_NOISE_OFFSET, DEFAULT_NOISE_MODE
from diffcore.parameterization import Parameterization, make_parameterization
from diffcore.samplers.base import ProgramSampler
from diffcore.schedules import SCHEDULE_TYPES, Schedule
from diffcore.timesteps import PLAN_PRESETS, Plan, make_plan, partial_plan, plan_from_sigmas
from diffcore.x0_limit import X0Limit

Sampler = Callable[..., Tensor]


def resolve_sampler(sampler: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    """A sampler by registry name, or a callable passed through."""
    if isinstance(sampler, str):
        from diffcore.plugins import get

        return get("samplers", sampler)
    if not callable(sampler):
        raise TypeError(f"sampler must be a name or a callable, got {type(sampler).__name__}")
    return sampler


def sampler_plan(fn: Sampler, schedule: Schedule, steps: int, spacing: str, options: dict[str, Any]) -> Plan:
    """The levels sampler ``fn`` visits: its plan preset, with the sampler options the preset takes
    (e.g. lcm's ``original_inference_steps``)."""
    style = getattr(fn, "plan_style", "karras")
    preset = PLAN_PRESETS.get(style)
    plan_options = {k: options[k] for k in (preset.options if preset else ()) if options.get(k) is not None}
    return make_plan(schedule, steps, spacing, style, **plan_options)


def _cached_plan(fn: Sampler, schedule_key: Any, key: tuple[Any, ...], make: Callable[[], Plan]) -> Plan:
    """``make()``'s plan through :data:`diffcore.plan_cache.plans` for built-in (program) samplers,
    which never modify their plan; other callables get a fresh one."""
    if schedule_key is None or not isinstance(fn, ProgramSampler) or None in key:
        return make()
    full = plan_cache.Key("plan", schedule_key, *key)
    return plan_cache.plans.get(full, lambda: plan_cache.tag(make(), full))


# schedules built by name inside sample()/sample_from(), never handed out: name -> (factory, schedule, key)
_NAMED: dict[str, tuple[Any, Schedule, Any]] = {}


def _schedule_with_key(schedule: str | Schedule) -> tuple[Schedule, Any]:
    """The schedule object and its cache key (by value; None if it cannot be keyed); a schedule
    named by a string is built once per registered factory."""
    if isinstance(schedule, str):
        from diffcore.plugins import get

        factory = get("schedules", schedule)
        entry = _NAMED.get(schedule)
        if entry is None or entry[0] is not factory:
            built = resolve_schedule(schedule)
            entry = _NAMED[schedule] = (factory, built, plan_cache.object_key(built))
        return entry[1], entry[2]
    sched = resolve_schedule(schedule)
    return sched, plan_cache.object_key(sched)


def resolve_schedule(schedule: str | Schedule) -> Schedule:
    """A schedule object, or a registry name built with its defaults."""
    if isinstance(schedule, str):
        from diffcore.plugins import get

        return get("schedules", schedule)()
    if not isinstance(schedule, SCHEDULE_TYPES):
        raise TypeError(f"schedule must be a name or a schedule object, got {type(schedule).__name__}")
    return schedule


@torch.no_grad()
def sample(
    model: Callable[..., Any],
    x_T: Tensor,
    *,
    sampler: str | Callable[..., Tensor] = "dpmpp_2m",
    steps: int = 20,
    schedule: str | Schedule = "linear",
    prediction: str | Parameterization = "epsilon",
    timestep_spacing: str = "leading",
    eta: float | None = None,
    generator: torch.Generator | None = None,
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    guidance: str | Guidance = "cfg",
    guidance_interval: Sequence[float] | None = None,
    guidance_options: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    sigmas: Sequence[float] | Tensor | None = None,
    sampler_options: dict[str, Any] | None = None,
    check_finite: bool = True,
    seed: int | None = None,
    cuda_graph: bool = False,
    start: int = 0,
    sample_index: int = 0,
    noise_mode: str = DEFAULT_NOISE_MODE,
    x0_limit: X0Limit | None = None,
) -> Tensor:
    """Integrate the reverse process from standard-normal ``x_T`` and return the sample.

    ``model(x, t, cond)`` receives what a diffusers UNet receives in a diffusers pipeline: the
    (scaled) model input and a (B,) tensor of timesteps (sigmas for EDM schedules); ``cond`` is
    passed only when given. Runs under ``torch.no_grad()`` (the fused steps update x in place).

    Args:
        x_T: standard-normal noise (B, ...); each sampler scales it to its first noise level.
        sampler: registry name (``diffcore.available("samplers")``) or a sampler callable.
        steps: number of sampler steps (Heun: intervals, 2*steps-1 model calls).
        schedule: a schedule object (``diffcore.get("schedules", name)(...)``) or a name.
        prediction: ``epsilon``, ``sample``, ``v_prediction``, ``edm``, ``flow`` or a Parameterization.
        timestep_spacing: ``linspace``, ``leading`` or ``trailing`` (diffusers' meaning).
        eta: stochasticity of ddim / euler_ancestral / dpmpp_*_sde in [0, 1]; None = the
            sampler's default (ddim 0, the others 1).
        generator: torch.Generator for the samplers' noise (torch RNG, matches diffusers draw for
            draw); same inputs + same generator seed = same output.
        seed: instead of ``generator``, draw noise inside the fused kernel from the counter-based
            Philox stream (seed, step): identical on every backend and capturable in a CUDA graph.
        cuda_graph: on CUDA, capture the whole loop (model included) in one CUDA graph and replay
            it; falls back to eager execution with a warning when the model cannot be captured.
        cond, uncond, guidance_scale, guidance_rescale: conditioning and classifier-free guidance
            (w, and phi of Lin et al. 2023); for the ``*_cfg_pp`` samplers the scale is CFG++'s lambda.
        guidance: ``"cfg"``, ``"apg"`` (adaptive projected guidance), ``"cfg_zero_star"``, or a
            :class:`diffcore.guidance.Guidance` holding every guidance setting.
        guidance_interval: ``(lo, hi)`` VE sigmas: guide only where ``lo < sigma <= hi``
            (Kynkäänniemi et al. 2024); elsewhere the unconditional pass is skipped.
        guidance_options: the method's options: apg ``eta``, ``norm_threshold``, ``momentum``;
            cfg_zero_star ``zero_init_steps``.
        callback: called after every step with ``{"i", "t", "sigma", "x"}``.
        sigmas: explicit decreasing VE noise levels to visit instead of ``steps`` spaced ones.
        sampler_options: extra sampler options (e.g. ``{"order": 3}`` for unipc).
        start: begin at level ``start`` of the plan; ``x_T`` is then the state there (img2img).
        sample_index: index of x_T's first sample in the seeded sequence; in-kernel noise of
            sample b is keyed by (seed, sample_index + b), so a sample's result does not depend
            on the batch it runs in.
        noise_mode: in-kernel noise transform, ``fast`` or ``exact`` (:mod:`diffcore.ops.philox`).
        x0_limit: clip or dynamically threshold x0 inside every fused step (:class:`diffcore.X0Limit`,
            diffusers' ``clip_sample`` / ``thresholding``).
    """
    _check_batch("x_T", x_T, finite=False)  # finiteness: checked in the pass that makes the start state
    fn, (sched, skey), param = resolve_sampler(sampler), _schedule_with_key(schedule), make_parameterization(prediction)
    options = _options(fn, eta, sampler_options)
    if sigmas is not None:
        levels = torch.as_tensor(sigmas, dtype=torch.float64)
        plan = _cached_plan(
            fn, skey, ("sigmas", plan_cache.tensor_key(levels)), lambda: plan_from_sigmas(sched, levels)
        )
    else:
        style = getattr(fn, "plan_style", "karras")
        preset = PLAN_PRESETS.get(style)
        plan_options = {k: options.get(k) for k in (preset.options if preset else ())}
        key = (plan_cache.freeze(steps), plan_cache.freeze(timestep_spacing), style, plan_cache.freeze(plan_options))
        plan = _cached_plan(fn, skey, key, lambda: sampler_plan(fn, sched, steps, timestep_spacing, options))
    x, finite = ops.start_state(x_T, 1.0 if start else plan.init_scale)  # img2img: x_T is the state at ``start``
    if not finite:
        raise ValueError("x_T contains NaN or inf")
    guide = (guidance, guidance_scale, guidance_rescale, guidance_interval, guidance_options)
    denoiser = _denoiser(
        model, param, plan.timestep_dtype, cond, uncond, guide, check_finite, sample_index, noise_mode, x0_limit
    )
    seed, generator = _noise_source(seed, generator, cuda_graph)
    if seed is not None:
        options["seed"] = seed
    if cuda_graph:
        options["cuda_graph"] = True
    if start:  # img2img: the plan from level ``start`` on, cached under its whole plan's key
        whole = plan
        plan = _cached_plan(fn, plan_cache.key_of(whole), ("tail", plan_cache.freeze(start)), lambda: whole.tail(start))
    return fn(denoiser, x, plan, generator=generator, callback=callback, **options)


@torch.no_grad()
def sample_from(
    model: Callable[..., Any],
    x: Tensor,
    t_start: float | Tensor,
    *,
    sampler: str | Callable[..., Tensor] = "dpmpp_2m",
    steps: int = 20,
    schedule: str | Schedule = "linear",
    prediction: str | Parameterization = "epsilon",
    add_noise: bool = True,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    cond: Any = None,
    uncond: Any = None,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    guidance: str | Guidance = "cfg",
    guidance_interval: Sequence[float] | None = None,
    guidance_options: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    sampler_options: dict[str, Any] | None = None,
    check_finite: bool = True,
    sample_index: int = 0,
    noise_mode: str = DEFAULT_NOISE_MODE,
    x0_limit: X0Limit | None = None,
) -> Tensor:
    """Run the reverse process from model time ``t_start`` (per sample or shared) down to 0.

    With ``add_noise`` (SDEdit, partial-diffusion reconstruction) ``x`` is clean data and is noised
    to each sample's start level, ``alpha*x + std*noise`` (``noise`` given, else drawn from
    ``generator``, else from the Philox stream of ``seed``); without it ``x`` already is the
    sampler state at that level (e.g. ``sqrt(abar_t) * y`` for a noisy image y). Samples with
    different ``t_start`` step in the same fused ops with per-sample coefficients, ``steps`` each.
    ``t_start`` is a training timestep of a discrete schedule or the sigma of an EDM schedule.
    Guidance arguments as in :func:`sample` (zero-init steps count from the start level);
    ``sample_index``, ``noise_mode`` and ``x0_limit`` too (the added noise of sample b is keyed by
    (seed, sample_index + b) as well).
    """
    _check_batch("x", x)
    fn, (sched, skey), param = resolve_sampler(sampler), _schedule_with_key(schedule), make_parameterization(prediction)
    starts = _starts(t_start, x.shape[0])

    def start_plan(v: float) -> Plan:
        return _cached_plan(fn, skey, ("partial", plan_cache.freeze(steps), v), lambda: partial_plan(sched, steps, v))

    plans = {v: start_plan(v) for v in sorted(set(starts))}
    if len(plans) > 1 and not hasattr(fn, "program"):
        raise ValueError(f"sampler {getattr(fn, 'name', fn)!r} cannot mix start levels in one batch")
    options = dict(sampler_options or {})
    seed, generator = _noise_source(seed, generator)
    per_sample = [plans[v] for v in starts]
    keys = (sample_index, noise_mode)
    state = _noised(x, per_sample, noise, generator, seed, keys) if add_noise else x.clone()
    guide = (guidance, guidance_scale, guidance_rescale, guidance_interval, guidance_options)
    denoiser = _denoiser(
        model, param, torch.float32, cond, uncond, guide, check_finite, sample_index, noise_mode, x0_limit
    )
    if len(plans) == 1:
        kw = {"seed": seed} if seed is not None else {}
        return fn(denoiser, state, per_sample[0], generator=generator, callback=callback, **kw, **options)
    from diffcore.samplers.program import run_program

    resolved = fn.resolve(options)  # type: ignore[attr-defined]
    programs = {v: fn.cached_program(p, resolved) for v, p in plans.items()}  # type: ignore[attr-defined]
    return run_program(
        denoiser, state, [programs[v] for v in starts], generator=generator, seed=seed, callback=callback
    )


def _denoiser(
    model: Callable[..., Any],
    param: Parameterization,
    timestep_dtype: torch.dtype,
    cond: Any,
    uncond: Any,
    guide: tuple[str | Guidance, float | None, float, Sequence[float] | None, dict[str, Any] | None],
    check_finite: bool,
    sample_index: int,
    noise_mode: str,
    x0_limit: X0Limit | None,
) -> Denoiser:
    """The :class:`Denoiser` of a :func:`sample` / :func:`sample_from` call; ``guide``: their
    ``(guidance, guidance_scale, guidance_rescale, guidance_interval, guidance_options)``."""
    method, scale, rescale, interval, options = guide
    return Denoiser(
        model,
        param,
        timestep_dtype=timestep_dtype,
        cond=cond,
        uncond=uncond,
        guidance=make_guidance(method, scale, rescale=rescale, interval=interval, options=options),
        check_finite=check_finite,
        sample_index=sample_index,
        noise_mode=noise_mode,
        x0_limit=x0_limit,
    )


def _check_batch(name: str, x: Any, finite: bool = True) -> None:
    """Raise unless ``x`` is a non-empty, floating-point (B, ...) tensor, finite unless ``finite``
    is False (the caller checks that itself)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    if finite and not ops.all_finite(x):
        raise ValueError(f"{name} contains NaN or inf")


def _options(fn: Sampler, eta: float | None, sampler_options: dict[str, Any] | None) -> dict[str, Any]:
    """The sampler's keyword options: ``sampler_options`` plus ``eta`` where the sampler takes it
    (a deterministic sampler accepts only eta None or 0)."""
    options = dict(sampler_options or {})
    if eta is not None:
        accepted = getattr(fn, "options", None)
        if accepted is not None and "eta" not in accepted:
            if eta != 0:
                raise ValueError(f"sampler {getattr(fn, 'name', fn)!r} is deterministic; eta={eta} must be None or 0")
        else:
            options["eta"] = eta
    return options


def _noise_source(
    seed: int | None, generator: torch.Generator | None, cuda_graph: bool = False
) -> tuple[int | None, torch.Generator | None]:
    """``(seed, generator)`` with exactly one set: a CUDA graph needs in-kernel noise, so its seed
    is drawn from ``generator``; with neither, in-kernel noise seeded from torch's global RNG."""
    ops.check_noise_source(seed, generator)
    if cuda_graph and generator is not None:
        seed, generator = int(torch.randint(0, 2**62, (1,), generator=generator)), None
    if seed is None and generator is None:
        seed = int(torch.randint(0, 2**62, (1,)))
    return seed, generator


def _starts(t_start: float | Tensor, batch: int) -> list[float]:
    """One start time per sample of a batch of ``batch`` (a single value is shared)."""
    starts = torch.as_tensor(t_start, dtype=torch.float64).reshape(-1).cpu()
    if starts.numel() == 1:
        starts = starts.expand(batch)
    if starts.shape[0] != batch:
        raise ValueError(f"t_start has {starts.shape[0]} values for a batch of {batch}")
    return starts.tolist()


def _noised(
    x: Tensor,
    plans: list[Plan],
    noise: Tensor | None,
    generator: torch.Generator | None,
    seed: int | None,
    keys: tuple[int, str] = (0, DEFAULT_NOISE_MODE),
) -> Tensor:
    """Clean ``x`` noised to each sample's start level, ``alpha*x + std*noise``; ``noise`` given,
    else drawn from ``generator``, else from the Philox stream of ``seed`` (``keys``: the first
    sample's index and the noise mode)."""
    if noise is None:
        if generator is not None:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        else:
            assert seed is not None  # _noise_source gives a seed when there is no generator
            noise = ops.philox_noise_like(x, seed, offset=ADD_NOISE_OFFSET, sample_index=keys[0], noise_mode=keys[1])
    elif noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)} but x has shape {tuple(x.shape)}")
    shape = (-1, *([1] * (x.dim() - 1)))
    start = {i: p.level(0) for i, p in {id(p): p for p in plans}.items()}  # per distinct plan, not per sample
    rows = list(start.values()) if len(start) == 1 else [start[id(p)] for p in plans]  # one row broadcasts
    levels = torch.tensor(rows, dtype=x.dtype, device=x.device)
    alpha, std = levels[:, 0].reshape(shape), levels[:, 1].reshape(shape)
    return alpha * x + std * noise.to(x.device, x.dtype)

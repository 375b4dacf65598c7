"""A diffusers ``scheduler_config.json`` read into diffcore terms: schedule, prediction, sampler.

Needs no diffusers install: the config is plain JSON, and keys a saved config omits take the
defaults of diffusers 0.42 (:data:`DEFAULTS`). Flow-matching configs (FlowMatchEuler/Heun, and
DPM-Solver++ / UniPC with ``use_flow_sigmas``) become diffcore's ``flow`` schedule
(:mod:`diffcore.interop.flow_scheduler`). Options diffcore does not reproduce (e.g.
``clip_sample=True``, ``thresholding=True``) are never dropped silently: they are named in a
:class:`DiffusersInteropWarning`, or raised as a :class:`DiffusersInteropError` with
``strict=True``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffcore.interop.errors import DiffusersInteropError, DiffusersInteropWarning
from diffcore.interop.flow_scheduler import (
    FLOW_DEFAULTS,
    FLOW_INERT,
    FLOW_KEYS,
    FLOW_MATCH_SAMPLERS,
    MULTISTEP_FLOW_DEFAULTS,
    flow_match_sampler,
    flow_problems,
    flow_schedule,
    uses_flow,
)
from diffcore.interop.scheduler_options import (
    X0_LIMIT_KEYS,
    final_sigmas_type,
    timestep_type,
    x0_limit,
)
from diffcore.schedules import SCHEDULES, DiscreteSchedule, FlowSchedule

if TYPE_CHECKING:
    from diffcore.x0_limit import X0Limit

__all__ = [
    "DEFAULTS",
    "SAMPLER_FOR_SCHEDULER",
    "DiffusersInteropError",
    "DiffusersInteropWarning",
    "SchedulerSpec",
    "read_config",
    "scheduler_from_config",
]


# diffusers scheduler class -> the diffcore sampler that reproduces its step (options aside)
SAMPLER_FOR_SCHEDULER: dict[str, str] = {
    "DDIMScheduler": "ddim",
    "DDPMScheduler": "ddpm",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral",
    "HeunDiscreteScheduler": "heun",
    "LMSDiscreteScheduler": "lms",
    "UniPCMultistepScheduler": "unipc",
    **FLOW_MATCH_SAMPLERS,
}
FALLBACK_SAMPLER = "dpmpp_2m"  # for a scheduler class no diffcore sampler follows (e.g. PNDM)

_COMMON: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
}
_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
# diffusers 0.42.1 constructor defaults of the keys diffcore reads (tests check them against diffusers)
DEFAULTS: dict[str, dict[str, Any]] = {
    "DDIMScheduler": {
        **_COMMON,
        "timestep_spacing": "leading",
        "clip_sample": True,
        "thresholding": False,
        "set_alpha_to_one": True,
    },
    "DDPMScheduler": {
        **_COMMON,
        "timestep_spacing": "leading",
        "clip_sample": True,
        "thresholding": False,
        "variance_type": "fixed_small",
    },
    "DPMSolverMultistepScheduler": {
        **_COMMON,
        **_SIGMAS,
        "solver_order": 2,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "thresholding": False,
        "euler_at_final": False,
        "final_sigmas_type": "zero",
        "variance_type": None,
        **MULTISTEP_FLOW_DEFAULTS,
    },
    "EulerDiscreteScheduler": {
        **_COMMON,
        **_SIGMAS,
        "sigma_min": None,
        "sigma_max": None,
        "interpolation_type": "linear",
        "timestep_type": "discrete",
        "final_sigmas_type": "zero",
    },
    "EulerAncestralDiscreteScheduler": dict(_COMMON),
    "HeunDiscreteScheduler": {**_COMMON, **_SIGMAS, "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False},
    "LMSDiscreteScheduler": {**_COMMON, **_SIGMAS},
    "UniPCMultistepScheduler": {
        **_COMMON,
        **_SIGMAS,
        "solver_order": 2,
        "solver_type": "bh2",
        "lower_order_final": True,
        "predict_x0": True,
        "thresholding": False,
        "disable_corrector": [],
        "solver_p": None,
        "final_sigmas_type": "zero",
        "sigma_min": None,
        "sigma_max": None,
        **MULTISTEP_FLOW_DEFAULTS,
        "shift_terminal": None,
    },
    **FLOW_DEFAULTS,
}
# option -> the only value diffcore reproduces (when the config sets it at all)
_REQUIRED: dict[str, Any] = {
    "trained_betas": None,
    "use_beta_sigmas": False,
    "euler_at_final": False,
    "use_lu_lambdas": False,
    "use_flow_sigmas": False,
    "use_dynamic_shifting": False,
    "lambda_min_clipped": -math.inf,
    "interpolation_type": "linear",
    "predict_x0": True,
    "disable_corrector": [],
    "solver_p": None,
    "shift_terminal": None,
    "skip_prk_steps": False,
}
# options without effect while the options above hold their required values
_INERT = {"flow_shift", "time_shift_type"}
_READ = (
    set(_COMMON)
    | set(_SIGMAS)
    | {"sigma_min", "sigma_max", "solver_order", "algorithm_type", "solver_type", "lower_order_final", "variance_type"}
    | set(X0_LIMIT_KEYS)
    | {"set_alpha_to_one", "final_sigmas_type", "timestep_type"}
)
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
_PREDICTIONS = ("epsilon", "v_prediction", "sample")
_SPACINGS = ("linspace", "leading", "trailing")
_FLOW_PREDICTIONS = {**{p: p for p in _PREDICTIONS}, "flow_prediction": "flow"}  # with use_flow_sigmas


@dataclass(frozen=True)
class SchedulerSpec:
    """What a diffusers scheduler config means to diffcore: pass :meth:`sample_kwargs` to
    :func:`diffcore.sample` to sample like that scheduler, or override ``sampler`` freely."""

    scheduler_class: str
    schedule: DiscreteSchedule | FlowSchedule
    prediction: str
    timestep_spacing: str
    sampler: Any  # a registry name, or a sampler object (DDPM's learned_range: ddpm_learned_range)
    sampler_options: dict[str, Any] = field(default_factory=dict)
    eta: float | None = None
    unsupported: tuple[str, ...] = ()  # the options (as "name=value: why") diffcore does not reproduce
    x0_limit: X0Limit | None = None  # clip_sample / thresholding, applied to x0 in the fused step

    def sample_kwargs(self) -> dict[str, Any]:
        """``schedule``, ``prediction``, ``timestep_spacing``, ``sampler`` (+ options, eta,
        x0_limit) for ``diffcore.sample``."""
        kw: dict[str, Any] = {
            "schedule": self.schedule,
            "prediction": self.prediction,
            "timestep_spacing": self.timestep_spacing,
            "sampler": self.sampler,
        }
        if self.sampler_options:
            kw["sampler_options"] = dict(self.sampler_options)
        if self.eta is not None:
            kw["eta"] = self.eta
        if self.x0_limit is not None:
            kw["x0_limit"] = self.x0_limit
        return kw


def read_config(config: Mapping[str, Any] | str | Path, name: str = "scheduler_config.json") -> dict[str, Any]:
    """A config dict from a mapping, a JSON file, or a folder holding ``name``."""
    if isinstance(config, Mapping):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise DiffusersInteropError(f"no diffusers config at {path} (expected a {name} file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffusersInteropError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DiffusersInteropError(f"{path} holds a JSON {type(data).__name__}, expected an object")
    return data


def scheduler_from_config(
    config: Mapping[str, Any] | str | Path,
    *,
    scheduler_class: str | None = None,
    strict: bool = False,
    mu: float | None = None,
) -> SchedulerSpec:
    """Translate a diffusers scheduler config (dict, ``scheduler_config.json`` or its folder).

    ``scheduler_class`` overrides the config's ``_class_name`` (a DDIMPipeline runs any saved
    scheduler as a DDIMScheduler). ``mu``: the dynamic-shift exponent of a flow scheduler with
    ``use_dynamic_shifting=True`` (what diffusers' ``set_timesteps(mu=...)`` takes). Options
    diffcore does not reproduce warn, or raise :class:`DiffusersInteropError` with
    ``strict=True``; malformed values always raise.
    """
    raw = read_config(config)
    cls = scheduler_class or raw.get("_class_name")
    if not isinstance(cls, str):
        raise DiffusersInteropError(
            "scheduler config has no '_class_name'; pass scheduler_class= (e.g. 'DDIMScheduler')"
        )
    cfg = {**DEFAULTS.get(cls, _COMMON), **{k: v for k, v in raw.items() if not k.startswith("_")}}
    spec, unknown = _flow_spec(cls, cfg, mu) if uses_flow(cls, cfg) else _diffusion_spec(cls, cfg, mu)
    if spec.unsupported:
        message = f"{cls}: options diffcore does not reproduce (its samples will differ from diffusers'): " + "; ".join(
            spec.unsupported
        )
        if strict:
            raise DiffusersInteropError(message)
        warnings.warn(message, DiffusersInteropWarning, stacklevel=2)
    if unknown:
        warnings.warn(
            f"{cls}: config options unknown to diffcore, ignored: {unknown}", DiffusersInteropWarning, stacklevel=2
        )
    return spec


def _diffusion_spec(cls: str, cfg: dict[str, Any], mu: float | None) -> tuple[SchedulerSpec, list[str]]:
    """The spec of a diffusion (beta-schedule) config and its unknown keys."""
    if mu is not None:
        raise DiffusersInteropError(f"mu={mu} applies only to a flow scheduler with use_dynamic_shifting=True")
    if cfg.get("prediction_type") == "flow_prediction":
        raise DiffusersInteropError(
            "scheduler config prediction_type='flow_prediction' needs use_flow_sigmas=True (a flow-matching schedule)"
        )
    problems = [
        f"{k}={cfg[k]!r}: diffcore reproduces only {k}={want!r}"
        for k, want in _REQUIRED.items()
        if k in cfg and cfg[k] != want
    ]
    unknown = sorted(k for k in cfg if k not in _READ and k not in _REQUIRED and k not in _INERT)
    sampler, options, eta = _sampler_for(cls, cfg, problems)
    end, time = final_sigmas_type(cls, cfg, problems), timestep_type(cls, cfg, problems)
    limit = x0_limit(cls, cfg, problems)
    spec = SchedulerSpec(
        scheduler_class=cls,
        schedule=_schedule(cfg, final_sigmas_type=end, timestep_type=time),
        prediction=_choice(cfg, "prediction_type", _PREDICTIONS),
        timestep_spacing=_choice(cfg, "timestep_spacing", _SPACINGS),
        sampler=sampler,
        sampler_options=options,
        eta=eta,
        unsupported=tuple(problems),
        x0_limit=limit,
    )
    return spec, unknown


def _flow_spec(cls: str, cfg: dict[str, Any], mu: float | None) -> tuple[SchedulerSpec, list[str]]:
    """The spec of a flow-matching config (:mod:`diffcore.interop.flow_scheduler`) and its unknown keys."""
    problems = flow_problems(cls, cfg)
    if cls in FLOW_MATCH_SAMPLERS:
        prediction = "flow"
    else:
        prediction = _FLOW_PREDICTIONS[_choice(cfg, "prediction_type", tuple(_FLOW_PREDICTIONS))]
    known = _READ | FLOW_KEYS | FLOW_INERT | set(_REQUIRED) | _INERT
    unknown = sorted(k for k in cfg if k not in known)
    sampler, options, eta = _sampler_for(cls, cfg, problems)
    spec = SchedulerSpec(
        scheduler_class=cls,
        schedule=flow_schedule(cls, cfg, mu),
        prediction=prediction,
        timestep_spacing="linspace",  # diffusers' flow schedulers ignore it; diffcore's flow trailing differs
        sampler=sampler,
        sampler_options=options,
        eta=eta,
        unsupported=tuple(problems),
    )
    return spec, unknown


def _choice(cfg: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = cfg[key]
    if value not in allowed:
        raise DiffusersInteropError(f"scheduler config {key}={value!r}: diffcore supports {list(allowed)}")
    return str(value)


def _schedule(cfg: dict[str, Any], **ends: str) -> DiscreteSchedule:
    """The diffcore schedule of the config's betas (and sigma spacing, for Karras-style samplers);
    ``ends``: its ``final_sigmas_type`` and ``timestep_type``."""
    beta = _choice(cfg, "beta_schedule", _BETA_SCHEDULES)
    name, kw = beta, {}
    if cfg.get("use_karras_sigmas") and cfg.get("use_exponential_sigmas"):
        raise DiffusersInteropError("scheduler config sets both use_karras_sigmas and use_exponential_sigmas")
    if cfg.get("use_karras_sigmas") or cfg.get("use_exponential_sigmas"):
        name = "karras" if cfg.get("use_karras_sigmas") else "exponential"
        kw = {"beta_schedule": beta, "sigma_min": cfg.get("sigma_min"), "sigma_max": cfg.get("sigma_max")}
    try:
        schedule = SCHEDULES[name](
            num_train_timesteps=cfg["num_train_timesteps"],
            beta_start=float(cfg["beta_start"]),
            beta_end=float(cfg["beta_end"]),
            rescale_betas_zero_snr=bool(cfg["rescale_betas_zero_snr"]),
            steps_offset=int(cfg["steps_offset"]),
            **kw,
            **ends,
        )
    except (TypeError, ValueError) as exc:
        raise DiffusersInteropError(f"scheduler config does not make a valid {name!r} schedule: {exc}") from exc
    assert isinstance(schedule, DiscreteSchedule)
    return schedule


def _sampler_for(cls: str, cfg: dict[str, Any], problems: list[str]) -> tuple[Any, dict[str, Any], float | None]:
    """(sampler, sampler_options, eta) reproducing ``cls`` with ``cfg``; appends what it cannot."""
    if cls not in SAMPLER_FOR_SCHEDULER:
        problems.append(
            f"_class_name={cls!r}: no diffcore sampler follows it; default sampler {FALLBACK_SAMPLER!r} "
            f"(known: {sorted(SAMPLER_FOR_SCHEDULER)})"
        )
        return FALLBACK_SAMPLER, {}, None
    if cls in FLOW_MATCH_SAMPLERS:
        return flow_match_sampler(cls, cfg), {}, None
    if cls == "DDIMScheduler":
        return "ddim", {}, 0.0  # DDIMPipeline's default eta
    if cls == "DDPMScheduler":
        variance = cfg["variance_type"]
        if variance == "learned_range":  # the UNet outputs 2x channels: prediction, then variance
            from diffcore.samplers.ddpm_learned import ddpm_learned_range

            return ddpm_learned_range, {}, None
        if variance == "learned":
            raise DiffusersInteropError(
                "DDPMScheduler variance_type='learned' (the raw variance as output) is not supported; "
                "'learned_range' is"
            )
        if variance not in ("fixed_small", "fixed_large"):
            problems.append(f"variance_type={variance!r}: diffcore's ddpm has 'fixed_small' and 'fixed_large'")
            return "ddpm", {}, None
        return "ddpm", {"variance_type": variance}, None
    if cls == "DPMSolverMultistepScheduler":
        return _dpm_solver(cfg, problems)
    if cls == "UniPCMultistepScheduler":
        if cfg["solver_type"] != "bh2":
            problems.append(f"solver_type={cfg['solver_type']!r}: diffcore's unipc implements 'bh2'")
        return "unipc", {"order": int(cfg["solver_order"]), "lower_order_final": bool(cfg["lower_order_final"])}, None
    return SAMPLER_FOR_SCHEDULER[cls], {}, None


def _dpm_solver(cfg: dict[str, Any], problems: list[str]) -> tuple[str, dict[str, Any], float | None]:
    algorithm, order, solver = cfg["algorithm_type"], int(cfg["solver_order"]), cfg["solver_type"]
    lower = bool(cfg["lower_order_final"])
    if cfg.get("variance_type") is not None:
        problems.append(f"variance_type={cfg['variance_type']!r}: diffcore's DPM-Solver++ uses no learned variance")
    if algorithm not in ("dpmsolver++", "sde-dpmsolver++"):
        problems.append(f"algorithm_type={algorithm!r}: diffcore has 'dpmsolver++' and 'sde-dpmsolver++'")
        return "dpmpp_2m", {"lower_order_final": lower}, None
    sde = algorithm == "sde-dpmsolver++"
    if order == 2:
        return (
            ("dpmpp_2m_sde" if sde else "dpmpp_2m"),
            {"solver_type": solver, "lower_order_final": lower},
            (1.0 if sde else None),
        )
    if order == 3:
        if solver != "midpoint":
            problems.append(f"solver_type={solver!r} with solver_order=3: diffcore's 3M solver uses 'midpoint'")
        if sde:
            problems.append(
                "sde-dpmsolver++ solver_order=3: diffusers 0.42 flips the sign of the 1/2 in its "
                "second-difference term; diffcore's dpmpp_3m_sde integrates it exactly"
            )
        return "dpmpp_3m_sde", {"lower_order_final": lower}, (1.0 if sde else 0.0)
    problems.append(f"solver_order={order}: diffcore's DPM-Solver++ samplers are of order 2 and 3; using order 2")
    return (
        ("dpmpp_2m_sde" if sde else "dpmpp_2m"),
        {"solver_type": solver, "lower_order_final": lower},
        (1.0 if sde else None),
    )

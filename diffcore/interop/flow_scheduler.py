"""diffusers' flow-matching scheduler configs in diffcore terms: the ``flow`` schedule and its
sampler.

Four diffusers 0.42 schedulers sample flow-matching models (the model predicts the velocity
``eps - x0`` on ``x_t = (1 - t) x0 + t eps``): ``FlowMatchEulerDiscreteScheduler`` (``euler``)
and ``FlowMatchHeunDiscreteScheduler`` (``heun``), and ``DPMSolverMultistepScheduler`` /
``UniPCMultistepScheduler`` with ``use_flow_sigmas=True`` (``dpmpp_2m`` / ``unipc``, with
``prediction_type="flow_prediction"`` and ``flow_shift``); FlowMatchEuler's
``stochastic_sampling`` (a fresh-noise step to each level) is ``lcm``. Their keywords map onto
:class:`diffcore.schedules.FlowSchedule` one to one; :data:`diffcore.timesteps.PLAN_PRESETS`
places each scheduler's levels. The options diffcore does not reproduce come back as problems
(see :func:`flow_problems`).
"""

from __future__ import annotations

from typing import Any

from diffcore.interop.errors import DiffusersInteropError
from diffcore.schedules import FlowSchedule

__all__ = [
    "FLOW_DEFAULTS",
    "FLOW_KEYS",
    "FLOW_MATCH_SAMPLERS",
    "flow_match_sampler",
    "flow_problems",
    "flow_schedule",
    "uses_flow",
]

FLOW_MATCH_SAMPLERS = {"FlowMatchEulerDiscreteScheduler": "euler", "FlowMatchHeunDiscreteScheduler": "heun"}
_SPACINGS = {"use_karras_sigmas": "karras", "use_exponential_sigmas": "exponential", "use_beta_sigmas": "beta"}
_DYNAMIC = {
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "time_shift_type": "exponential",
}
# diffusers 0.42.1 constructor defaults (tests check them against diffusers)
FLOW_DEFAULTS: dict[str, dict[str, Any]] = {
    "FlowMatchEulerDiscreteScheduler": {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        **_DYNAMIC,
        "invert_sigmas": False,
        "shift_terminal": None,
        **dict.fromkeys(_SPACINGS, False),
        "stochastic_sampling": False,
    },
    "FlowMatchHeunDiscreteScheduler": {"num_train_timesteps": 1000, "shift": 1.0},
}
# the multistep schedulers' flow keys (their other defaults are in scheduler_config.DEFAULTS)
MULTISTEP_FLOW_DEFAULTS: dict[str, Any] = {
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}
FLOW_KEYS = {*FLOW_DEFAULTS["FlowMatchEulerDiscreteScheduler"], *MULTISTEP_FLOW_DEFAULTS}
# option -> the only value diffcore reproduces, on a flow config
_FLOW_REQUIRED: dict[str, Any] = {
    "invert_sigmas": False,
    "clip_sample": False,
    "thresholding": False,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "use_lu_lambdas": False,
    "predict_x0": True,
    "disable_corrector": [],
    "solver_p": None,
}
# on a flow config these keys do not act (the betas give way to the flow sigmas)
FLOW_INERT = {
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
    "timestep_spacing",
    "steps_offset",
    "lambda_min_clipped",
    "sigma_min",
    "sigma_max",
    "variance_type",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "clip_sample_range",
}


def uses_flow(cls: str, cfg: dict[str, Any]) -> bool:
    """Whether the scheduler ``cls`` with ``cfg`` samples a flow-matching model."""
    return cls in FLOW_MATCH_SAMPLERS or bool(cfg.get("use_flow_sigmas"))


def flow_match_sampler(cls: str, cfg: dict[str, Any]) -> str:
    """The sampler of a FlowMatch scheduler: its own, or ``lcm`` for FlowMatchEuler's
    ``stochastic_sampling`` (x0 estimate, then fresh noise to the next level, as LCM steps)."""
    return "lcm" if cfg.get("stochastic_sampling") else FLOW_MATCH_SAMPLERS[cls]


def flow_problems(cls: str, cfg: dict[str, Any]) -> list[str]:
    """The options of a flow config diffcore does not reproduce, as ``"name=value: why"``."""
    problems = [
        f"{k}={cfg[k]!r}: diffcore reproduces only {k}={want!r}"
        for k, want in _FLOW_REQUIRED.items()
        if k in cfg and cfg[k] != want
    ]
    if cls not in FLOW_MATCH_SAMPLERS:
        problems += [
            f"{k}=True with use_flow_sigmas=True: {cls} then spaces the VP sigmas of its betas, not flow times; "
            f"use FlowMatchEulerDiscreteScheduler's {k} for {name}-spaced flow times"
            for k, name in _SPACINGS.items()
            if cfg.get(k)
        ]
        dpm_dynamic = cls == "DPMSolverMultistepScheduler" and cfg.get("use_dynamic_shifting")
        if dpm_dynamic and cfg.get("time_shift_type") != "exponential":
            problems.append(
                f"time_shift_type={cfg.get('time_shift_type')!r} with use_dynamic_shifting: "
                "DPMSolverMultistepScheduler takes mu as exp(mu) only ('exponential')"
            )
        if cfg.get("prediction_type") == "v_prediction":
            problems.append(
                "prediction_type='v_prediction' with use_flow_sigmas=True: diffusers' x0 = alpha x - sigma v "
                "assumes alpha^2 + sigma^2 = 1, which flow states break"
            )
    return problems


def flow_schedule(cls: str, cfg: dict[str, Any], mu: float | None) -> FlowSchedule:
    """The :class:`FlowSchedule` of a flow config; ``mu`` the dynamic-shift exponent diffusers'
    ``set_timesteps(mu=...)`` takes (only with ``use_dynamic_shifting``)."""
    if mu is not None and not cfg.get("use_dynamic_shifting"):
        raise DiffusersInteropError(f"mu={mu} applies only to a scheduler with use_dynamic_shifting=True")
    spacings = [name for key, name in _SPACINGS.items() if cfg.get(key)]
    if len(spacings) > 1:
        raise DiffusersInteropError(f"scheduler config sets several sigma spacings: {spacings}")
    kw: dict[str, Any] = {"num_train_timesteps": cfg["num_train_timesteps"]}
    if cls == "FlowMatchHeunDiscreteScheduler":
        kw["shift"] = cfg["shift"]
    elif cls == "FlowMatchEulerDiscreteScheduler":
        kw.update({k: cfg[k] for k in ("shift", "shift_terminal", *_DYNAMIC)})
        kw["sigma_spacing"] = spacings[0] if spacings else "timesteps"
    elif cls == "DPMSolverMultistepScheduler":  # without mu it samples with flow_shift, dynamic or not
        dynamic = bool(cfg.get("use_dynamic_shifting")) and mu is not None
        kw.update(shift=cfg["flow_shift"], use_dynamic_shifting=dynamic, time_shift_type=cfg["time_shift_type"])
    else:
        kw.update(shift=cfg["flow_shift"], shift_terminal=cfg.get("shift_terminal"))
        kw.update({k: cfg.get(k, v) for k, v in _DYNAMIC.items()})
    if mu is not None and kw.get("use_dynamic_shifting"):
        kw["mu"] = float(mu)
    try:
        return FlowSchedule(**kw)
    except (TypeError, ValueError) as exc:
        raise DiffusersInteropError(f"scheduler config does not make a valid flow schedule: {exc}") from exc

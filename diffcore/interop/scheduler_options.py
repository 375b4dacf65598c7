"""The diffusers scheduler options real checkpoints set, reproduced by diffcore.

Each reader takes the scheduler class and its config (defaults filled in) and returns what diffcore
uses instead; an option diffcore cannot follow for that class is appended to ``problems`` as
``"name=value: why"`` (the caller warns, or raises with ``strict=True``).

- x0 limits (diffusers ``_threshold_sample`` / ``clip_sample``) -> :class:`diffcore.x0_limit.X0Limit`,
  applied to x0 inside the fused step: ``thresholding`` wins over ``clip_sample``, as in diffusers.
- DDIM ``set_alpha_to_one=False`` and ``final_sigmas_type="sigma_min"`` -> the schedule's
  ``final_sigmas_type="sigma_min"``: sampling ends at training timestep 0, not at sigma 0.
- EulerDiscrete ``timestep_type="continuous"`` with v-prediction -> the schedule's
  ``timestep_type="continuous"``: the model sees ``0.25 ln(sigma)``.
"""

from __future__ import annotations

from typing import Any

from diffcore.interop.errors import DiffusersInteropError
from diffcore.x0_limit import X0Limit

__all__ = ["X0_LIMIT_KEYS", "final_sigmas_type", "timestep_type", "x0_limit"]

X0_LIMIT_KEYS = ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value")
# the classes whose step limits x0, and which of the two limits each has (diffusers 0.42)
_CLIPS = {"DDIMScheduler", "DDPMScheduler", "HeunDiscreteScheduler"}
_THRESHOLDS = {"DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}
# the classes with final_sigmas_type whose end level diffcore places as diffusers does
_FINAL_SIGMA = {"EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}


def x0_limit(cls: str, cfg: dict[str, Any], problems: list[str]) -> X0Limit | None:
    """The :class:`~diffcore.x0_limit.X0Limit` of ``cfg`` (None: x0 is not limited)."""
    thresholding, clip = bool(cfg.get("thresholding", False)), bool(cfg.get("clip_sample", False))
    if thresholding and cls not in _THRESHOLDS:
        problems.append(f"thresholding=True: {cls} has no dynamic thresholding in diffusers 0.42; ignored")
        thresholding = False
    if clip and cls not in _CLIPS:
        problems.append(f"clip_sample=True: {cls} does not clip x0 in diffusers 0.42; ignored")
        clip = False
    if not (thresholding or clip):
        return None
    if cls == "DDIMScheduler":
        problems.append(
            f"clip_sample={clip} / thresholding={thresholding} with DDIMScheduler: diffcore steps along the "
            "limited x0 (diffusers' use_clipped_model_output=True); DDIMPipeline's default reuses the raw noise"
        )
    try:
        if thresholding:  # diffusers checks thresholding first
            ratio, top = cfg.get("dynamic_thresholding_ratio", 0.995), cfg.get("sample_max_value", 1.0)
            return X0Limit(dynamic_ratio=float(ratio), max_value=float(top))
        return X0Limit(clip=float(cfg.get("clip_sample_range", 1.0)))
    except (TypeError, ValueError) as exc:
        raise DiffusersInteropError(f"{cls}: the x0 limit of this config is not valid: {exc}") from exc


def final_sigmas_type(cls: str, cfg: dict[str, Any], problems: list[str]) -> str:
    """Where sampling ends: ``"zero"`` or ``"sigma_min"`` (training timestep 0's level)."""
    end = "zero"
    if cfg.get("set_alpha_to_one", True) is False:
        if cls == "DDIMScheduler":
            end = "sigma_min"  # final_alpha_cumprod = alphas_cumprod[0]
        else:
            problems.append(f"set_alpha_to_one=False: diffcore follows it for DDIMScheduler, not {cls}")
    final = cfg.get("final_sigmas_type", "zero")
    if final == "zero":
        return end
    spaced = any(cfg.get(k) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"))
    if final != "sigma_min" or cls not in _FINAL_SIGMA:
        problems.append(f"final_sigmas_type={final!r}: diffcore has 'zero', and 'sigma_min' for {sorted(_FINAL_SIGMA)}")
    elif cls == "UniPCMultistepScheduler" and spaced:
        # UniPC then repeats its last spaced sigma (a step of length 0), not timestep 0's level
        problems.append("final_sigmas_type='sigma_min' with a sigma spacing: UniPC's last step has length 0 there")
    else:
        end = "sigma_min"
    return end


def timestep_type(cls: str, cfg: dict[str, Any], problems: list[str]) -> str:
    """The model time: ``"discrete"`` or ``"continuous"`` (0.25 ln sigma, EulerDiscrete with v-prediction)."""
    kind = cfg.get("timestep_type", "discrete")
    if kind == "discrete":
        return "discrete"
    if kind != "continuous" or cls != "EulerDiscreteScheduler":
        problems.append(f"timestep_type={kind!r}: diffcore follows 'continuous' for EulerDiscreteScheduler only")
        return "discrete"
    # diffusers gives continuous times only to v-prediction models (its TODO); the others keep timesteps
    return "continuous" if cfg.get("prediction_type") == "v_prediction" else "discrete"

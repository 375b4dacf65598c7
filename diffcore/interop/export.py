"""A diffcore pipeline written as a diffusers folder that ``DDPMPipeline`` / ``DDIMPipeline`` load.

Layout (what ``DDPMPipeline.save_pretrained`` writes)::

    out/  model_index.json              {"_class_name": "DDPMPipeline", "unet": [...], "scheduler": [...]}
          unet/config.json, unet/diffusion_pytorch_model.safetensors
          scheduler/scheduler_config.json   a DDPMScheduler config of the pipeline's schedule

The UNet is exported when it *is* a diffusers ``UNet2DModel`` (:class:`DiffusersUNet`: loaded
from diffusers, or trained in diffcore with ``--model diffusers_unet``). diffcore's own
:class:`diffcore.models.unet.UNet` has no diffusers equivalent whose weights it could be copied
into: its ResBlocks take one skip per level rather than per block, its attention attends to a
learned null token, and its time embedding takes raw timesteps or sigmas; a conversion would need a
UNet2DModel variant with those blocks (a custom diffusers model class, which a plain
``DDPMPipeline.from_pretrained`` would not load), so :func:`save_pretrained` refuses it by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffcore.io.files import temporary_path
from diffcore.schedules import DiscreteSchedule

__all__ = ["EXPORT_FORMATS", "save_pretrained", "scheduler_config"]

EXPORT_FORMATS = ("diffusers",)
_PREDICTIONS = ("epsilon", "v_prediction", "sample")


def scheduler_config(pipeline: Any) -> dict[str, Any]:
    """The diffusers ``DDPMScheduler`` config of ``pipeline``'s schedule and prediction; raises
    ValueError for what DDPMScheduler cannot express (EDM / flow schedules, sigma spacings,
    continuous times, EDM / flow predictions)."""
    schedule, prediction = pipeline.schedule, pipeline.param.name
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"schedule {getattr(schedule, 'name', schedule)!r}: a DDPMPipeline folder needs a discrete beta schedule"
        )
    if schedule.sigma_spacing != "timesteps":
        raise ValueError(f"sigma_spacing={schedule.sigma_spacing!r}: DDPMScheduler spaces timesteps, not sigmas")
    if schedule.timestep_type != "discrete":
        raise ValueError(f"timestep_type={schedule.timestep_type!r}: DDPMScheduler feeds training timesteps")
    if prediction not in _PREDICTIONS:
        raise ValueError(f"prediction={prediction!r}: DDPMScheduler's prediction_type is one of {_PREDICTIONS}")
    spacing = (pipeline.run.get("diffusers") or {}).get("timestep_spacing", "leading")
    config: dict[str, Any] = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": schedule.num_train_timesteps,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "beta_schedule": schedule.name,
        "rescale_betas_zero_snr": schedule.rescale_betas_zero_snr,
        "steps_offset": schedule.steps_offset,
        "prediction_type": prediction,
        "timestep_spacing": spacing,
        "variance_type": "fixed_small",
        "clip_sample": False,  # diffcore samples without an x0 clamp unless one is asked for
        "thresholding": False,
    }
    if schedule.final_sigmas_type == "sigma_min":
        config["set_alpha_to_one"] = False  # read by DDIMScheduler (DDIMPipeline), ignored by DDPM
    return config


def save_pretrained(pipeline: Any, out: str | Path) -> Path:
    """Write ``pipeline`` (a :class:`diffcore.Pipeline` with a ``UNet2DModel``) to folder ``out``
    as a diffusers DDPMPipeline folder (see the module docstring); returns ``out``. Raises
    TypeError for a model diffusers cannot load, ValueError for a schedule it cannot express."""
    from diffcore.interop.diffusers import DiffusersUNet

    model = pipeline.model
    if not isinstance(model, DiffusersUNet):
        raise TypeError(
            f"model {type(model).__name__!r} has no diffusers equivalent to export to; diffcore exports "
            "a diffusers UNet2DModel (train with --model diffusers_unet, or load one from diffusers); "
            "see diffcore.interop.export for what a diffcore UNet conversion would need"
        )
    if model.num_classes:
        raise ValueError(
            f"a class-conditional UNet2DModel (num_class_embeds={model.num_classes}): DDPMPipeline passes no labels"
        )
    config = scheduler_config(pipeline)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(str(root / "unet"), safe_serialization=True)
    _write_json(root / "scheduler" / "scheduler_config.json", {**config, "_diffusers_version": _version()})
    index = {
        "_class_name": "DDPMPipeline",
        "_diffusers_version": _version(),
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"],
    }
    _write_json(root / "model_index.json", index)
    return root


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.42.1"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

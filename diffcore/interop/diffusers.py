"""diffusers ``UNet2DModel`` checkpoints as diffcore models, sampled by any diffcore sampler.

Two layouts load::

    unet_dir/     config.json + diffusion_pytorch_model.safetensors          (UNet2DModel.save_pretrained)
    pipe_dir/     model_index.json, unet/, scheduler/scheduler_config.json   (DDPMPipeline / DDIMPipeline)

:func:`load_diffusers_pipeline` returns a :class:`DiffusersPipeline` (a :class:`diffcore.Pipeline`
whose defaults are the diffusers scheduler's: sampler, timestep spacing, options); or sample
directly::

    unet = load_diffusers_unet("pipe_dir")
    spec = scheduler_from_config("pipe_dir/scheduler")
    x = diffcore.sample(unet, torch.randn(4, 3, 32, 32), steps=50, **spec.sample_kwargs())

The UNet sees exactly what a diffusers pipeline feeds it: the sample and the scheduler's
timesteps (int64 for DDIM/DDPM/DPM-Solver spacings, float32 for Euler-style fractional ones;
``t * 1000`` on a flow-matching scheduler, truncated to int64 by DPM-Solver++ and UniPC).
Weights load through safetensors only; a pickle ``.bin`` checkpoint is refused unread. diffusers
itself is imported on first use (``pip install 'diffcore[diffusers]'``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.interop.scheduler_config import (
    SAMPLER_FOR_SCHEDULER,
    DiffusersInteropError,
    DiffusersInteropWarning,
    SchedulerSpec,
    read_config,
    scheduler_from_config,
)
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
# a scheduler-less UNet folder samples with this (DDPMPipeline's betas, DDIM steps, no clipping)
DEFAULT_SCHEDULER_CONFIG = {"_class_name": "DDIMScheduler", "clip_sample": False}

__all__ = [
    "SAMPLER_FOR_SCHEDULER",
    "DiffusersInteropError",
    "DiffusersInteropWarning",
    "DiffusersPipeline",
    "DiffusersUNet",
    "SchedulerSpec",
    "load_diffusers_pipeline",
    "load_diffusers_unet",
    "load_latent_pipeline",
    "scheduler_from_config",
]


def import_diffusers() -> Any:
    """The ``diffusers`` module, or an ImportError that says how to install it."""
    try:
        import diffusers
    except ImportError as exc:
        raise ImportError("diffcore's diffusers interop needs diffusers: pip install 'diffcore[diffusers]'") from exc
    return diffusers


def _public(config: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of a diffusers config without its private ``_*`` keys."""
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}))


def _checked(config: Mapping[str, Any]) -> dict[str, Any]:
    config = _public(config)
    if config.get("time_embedding_type", "positional") == "fourier":
        raise DiffusersInteropError("UNet2DModel time_embedding_type='fourier' (score-SDE VE models) is not supported")
    return config


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` behind diffcore's model contract ``model(x, t, cond=None)``.

    ``cond`` is a class-label tensor (B,) or a dict of UNet keyword arguments such as
    ``{"class_labels": labels}`` (what :meth:`diffcore.Pipeline.conditioning` builds).
    ``DiffusersUNet(**config)`` builds a randomly initialised UNet from a diffusers ``config.json``
    dict (how the model registry and :meth:`diffcore.Pipeline.load` rebuild it).
    """

    name = "diffusers_unet"

    def __init__(self, **config: Any) -> None:
        super().__init__()
        config = _checked(config)
        unet_cls = import_diffusers().UNet2DModel
        try:
            self.unet = unet_cls.from_config(config)
        except (TypeError, ValueError) as exc:
            raise DiffusersInteropError(f"not a valid UNet2DModel config: {exc}") from exc
        self.config: dict[str, Any] = _public(self.unet.config)

    @classmethod
    def from_unet(cls, unet: nn.Module) -> DiffusersUNet:
        """Wrap an existing ``UNet2DModel`` (its weights are shared, not copied)."""
        if type(unet).__name__ != "UNet2DModel" or not hasattr(unet, "config"):
            raise TypeError(f"expected a diffusers UNet2DModel, got {type(unet).__name__}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.unet = unet
        self.config = _checked(unet.config)  # type: ignore[arg-type]  # a diffusers FrozenDict
        return self

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_class_embeds") or 0)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the UNet was built for."""
        size = self.config.get("sample_size")
        h, w = (size, size) if isinstance(size, int) else tuple(size or ())
        return int(self.config["in_channels"]), int(h), int(w)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """UNet output for state ``x`` (B, C, H, W) at timesteps ``t`` (B,)."""
        if cond is None:
            kwargs: dict[str, Any] = {}
        elif isinstance(cond, Tensor):
            kwargs = {"class_labels": cond}
        elif isinstance(cond, Mapping):
            kwargs = dict(cond)
        else:
            raise TypeError(f"cond must be a class-label tensor or a dict of UNet arguments, got {type(cond).__name__}")
        if self.num_classes and kwargs.get("class_labels") is None:
            raise ValueError(f"this UNet is class-conditional (num_class_embeds={self.num_classes}): pass class_labels")
        return self.unet(x, t, return_dict=False)[0] if not kwargs else self.unet(x, t, **kwargs, return_dict=False)[0]


def _unet_dir(path: Path) -> Path:
    """The folder holding the UNet's config.json: ``path`` itself, or ``path/unet`` of a pipeline."""
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise DiffusersInteropError(f"{path} is not a folder (expected a diffusers UNet or pipeline folder)")
    if (path / "model_index.json").is_file():
        path = path / _pipeline_unet_key(read_config(path, "model_index.json"), path)
    if not (path / "config.json").is_file():
        raise DiffusersInteropError(f"{path} has no config.json (expected a UNet2DModel.save_pretrained folder)")
    return path


def _pipeline_unet_key(index: dict[str, Any], path: Path) -> str:
    kind = index.get("_class_name")
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None}
    if kind not in SUPPORTED_PIPELINES or set(components) != {"unet", "scheduler"}:
        from diffcore.interop.families import FAMILIES

        raise DiffusersInteropError(
            f"{path}/model_index.json describes a {kind} with components {sorted(components)}; diffcore loads "
            f"{' / '.join(SUPPORTED_PIPELINES)} folders (a UNet2DModel 'unet' and a 'scheduler') and the latent "
            f"pipelines {', '.join(sorted(FAMILIES))}"
        )
    if components["unet"][-1] != "UNet2DModel":
        raise DiffusersInteropError(f"{path}: its unet is a {components['unet'][-1]}; diffcore loads UNet2DModel")
    return "unet"


def _weights(folder: Path) -> dict[str, Tensor]:
    """The UNet's state dict from safetensors (single file or sharded); pickle is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = folder / WEIGHTS_NAME, folder / f"{WEIGHTS_NAME}.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = read_config(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise DiffusersInteropError(f"{index} has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.ckpt")):
        raise DiffusersInteropError(
            f"{folder} holds only pickle weights ({PICKLE_WEIGHTS_NAME}); diffcore loads safetensors only, since "
            "unpickling can run arbitrary code. Convert it once where you trust the file: "
            "UNet2DModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    else:
        raise DiffusersInteropError(f"{folder} has no {WEIGHTS_NAME}")
    state: dict[str, Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DiffusersInteropError(
                f"{file} is not a valid safetensors file (pickle, corrupt or truncated): {exc}"
            ) from exc
    return state


def load_diffusers_unet(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusersUNet:
    """A diffusers ``UNet2DModel`` from a UNet folder or a DDPM/DDIM pipeline folder, in eval mode."""
    folder = _unet_dir(Path(path))
    config = read_config(folder, "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DiffusersInteropError(
            f"{folder}/config.json describes a {config['_class_name']}; diffcore loads UNet2DModel"
        )
    model = DiffusersUNet(**config)
    state = _weights(folder)
    try:
        model.unet.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DiffusersInteropError(f"{folder}: weights do not fit its config.json: {exc}") from exc
    return model.to(device=device, dtype=dtype).eval()


class DiffusersPipeline(Pipeline):
    """A :class:`diffcore.Pipeline` loaded from diffusers files; ``generate`` defaults to the
    diffusers scheduler's timestep spacing, sampler options and eta (see ``self.spec``)."""

    def __init__(self, model: DiffusersUNet, spec: SchedulerSpec, *, steps: int = 50) -> None:
        run = {
            "model": {"name": DiffusersUNet.name, "config": model.config},
            "schedule": spec.schedule.config(),
            "prediction": {"name": spec.prediction},
            "dataset": {"shape": list(model.sample_shape), "num_classes": model.num_classes},
            "diffusers": {
                "scheduler_class": spec.scheduler_class,
                "timestep_spacing": spec.timestep_spacing,
                "sampler_options": spec.sampler_options,
                "eta": spec.eta,
            },
        }
        name = spec.sampler if isinstance(spec.sampler, str) else spec.sampler.name  # learned_range: an object
        super().__init__(
            model, spec.schedule, make_parameterization(spec.prediction), run=run, sampler=name, steps=steps
        )
        self.spec = spec

    def generate(self, n: int, **kwargs: Any) -> Tensor:
        """:meth:`diffcore.Pipeline.generate` with the diffusers scheduler's defaults."""
        kwargs.setdefault("timestep_spacing", self.spec.timestep_spacing)
        if self.spec.x0_limit is not None:  # clip_sample / thresholding: a property of the data, for any sampler
            kwargs.setdefault("x0_limit", self.spec.x0_limit)
        if kwargs.get("sampler") in (None, self.sampler) and not isinstance(self.spec.sampler, str):
            kwargs["sampler"] = self.spec.sampler
        if kwargs.get("sampler") in (None, self.spec.sampler):
            if self.spec.sampler_options:
                kwargs.setdefault("sampler_options", dict(self.spec.sampler_options))
            if self.spec.eta is not None:
                kwargs.setdefault("eta", self.spec.eta)
        return super().generate(n, **kwargs)


def load_diffusers_pipeline(
    path: str | Path,
    *,
    scheduler: Mapping[str, Any] | str | Path | None = None,
    device: str | torch.device | None = None,
    steps: int | None = None,
    strict: bool = False,
    mu: float | None = None,
    torch_dtype: torch.dtype | None = None,
) -> Any:
    """A diffusers folder as a diffcore pipeline, by its ``model_index.json`` ``_class_name``:
    StableDiffusion(XL) pipelines (and their Img2Img / Inpaint names) and the families of
    :data:`diffcore.interop.families.FAMILIES` as a :class:`~diffcore.interop.latent.LatentPipeline`
    (components in ``torch_dtype``, on ``device``); see :func:`load_latent_pipeline`. Otherwise
    a UNet folder or DDPM/DDIM pipeline folder as a :class:`DiffusersPipeline`.

    The schedule comes from ``scheduler`` (a config dict, file or folder) when given, else the
    pipeline's ``scheduler/`` or a ``scheduler_config.json`` beside the UNet's ``config.json``;
    with none, :data:`DEFAULT_SCHEDULER_CONFIG` with a warning. A DDIMPipeline runs its scheduler
    as DDIM, as diffusers does. ``steps`` defaults to the diffusers pipeline's: 1000 for DDPM, else 50.
    ``strict`` raises instead of warning on scheduler options diffcore does not reproduce; ``mu``
    is the dynamic-shift exponent of a flow scheduler with ``use_dynamic_shifting``.
    """
    import warnings

    root = Path(path)
    if (root / "model_index.json").is_file():
        from diffcore.interop.families import FAMILIES

        if read_config(root, "model_index.json").get("_class_name") in FAMILIES:
            if steps is not None or mu is not None:
                raise DiffusersInteropError("steps= and mu= are per call for a latent pipeline (text2image(steps=...))")
            return load_latent_pipeline(
                root, scheduler=scheduler, device=device, strict=strict, torch_dtype=torch_dtype
            )
    if torch_dtype not in (None, torch.float32):
        raise DiffusersInteropError(
            f"torch_dtype={torch_dtype} applies to latent pipelines; a UNet2DModel loads float32"
        )
    device = "cpu" if device is None else device
    unet = load_diffusers_unet(root, device=device)
    scheduler_class = None
    if (root / "model_index.json").is_file():
        index = read_config(root, "model_index.json")
        scheduler_class = "DDIMScheduler" if index.get("_class_name") == "DDIMPipeline" else None
        config: Mapping[str, Any] | str | Path = scheduler if scheduler is not None else root / "scheduler"
    elif scheduler is not None:
        config = scheduler
    elif (_unet_dir(root) / "scheduler_config.json").is_file():
        config = _unet_dir(root)
    else:
        warnings.warn(
            f"{root} has no scheduler config; using {DEFAULT_SCHEDULER_CONFIG} (pass scheduler= to choose)",
            DiffusersInteropWarning,
            stacklevel=2,
        )
        config = DEFAULT_SCHEDULER_CONFIG
    spec = scheduler_from_config(config, scheduler_class=scheduler_class, strict=strict, mu=mu)
    if steps is None:
        steps = 1000 if spec.scheduler_class == "DDPMScheduler" else 50
    return DiffusersPipeline(unet, spec, steps=min(steps, spec.schedule.num_train_timesteps))


def load_latent_pipeline(
    path: str | Path,
    *,
    scheduler: Mapping[str, Any] | str | Path | None = None,
    device: str | torch.device | None = None,
    strict: bool = False,
    torch_dtype: torch.dtype | None = None,
) -> Any:
    """A latent text-to-image pipeline folder (SD, SDXL, ... by ``_class_name``) as a
    :class:`~diffcore.interop.latent.LatentPipeline`: every component of ``model_index.json``
    loaded from local safetensors files (``safety_checker`` / ``feature_extractor`` are skipped),
    in ``torch_dtype`` (float16 / bfloat16; default float32), moved to ``device``; the scheduler
    from ``scheduler`` (a config dict, file or folder) or the folder's ``scheduler/``."""
    from diffcore.interop.components import load_component
    from diffcore.interop.families import FAMILIES
    from diffcore.interop.latent import LatentPipeline

    root = Path(path)
    index = read_config(root, "model_index.json")
    kind = index.get("_class_name")
    family_cls = FAMILIES.get(kind)  # type: ignore[arg-type]
    if family_cls is None:
        raise DiffusersInteropError(
            f"{root}/model_index.json describes a {kind}; diffcore loads {', '.join(sorted(FAMILIES))}, "
            f"{' and '.join(SUPPORTED_PIPELINES)}"
        )
    if torch_dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"torch_dtype={torch_dtype} must be torch.float32, torch.float16 or torch.bfloat16")
    components: dict[str, Any] = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or name == "scheduler":
            continue
        if name in family_cls.ignored or len(entry) != 2 or entry[1] is None:
            continue
        components[name] = load_component(root, name, str(entry[1]), torch_dtype)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if name in components:
            from diffcore.interop.components.text_encoders import TextEncoder

            tokenizer = components.get(name.replace("text_encoder", "tokenizer"))
            if tokenizer is None:
                raise DiffusersInteropError(f"{root}: {name} has no tokenizer")
            components[name] = TextEncoder(tokenizer, components[name])
    config = read_config(scheduler if scheduler is not None else root / "scheduler")
    pipe = LatentPipeline(family_cls(components, index), config, strict=strict, source=str(root))
    return pipe.to(device) if device is not None else pipe

"""Image-to-image translation with a trained diffusion model: SDEdit, RePaint inpainting and
paired (Palette-style) translation.

- :func:`sdedit` (Meng et al. 2022): noise the input to ``strength`` of the diffusion and run the
  reverse process back with :func:`diffcore.sample_from`; per-sample strengths step together.
- :func:`repaint` (Lugmayr et al. 2022; in :mod:`.repaint`): an unconditional model fills a masked
  region; after every reverse step the known region is replaced by the input noised to the same
  level, and every ``jump_length`` steps the state is noised back up and re-denoised (``resample`` times).
- :func:`translate` (Saharia et al. 2022, "Palette"; in :mod:`.paired`): a model trained with
  ``diffcore.train(..., task_condition=...)`` sees the source image as extra input channels.

Images are (B, C, H, W) tensors in [-1, 1] (model space); masks are 1 where a pixel is missing.
Every function takes a :class:`~diffcore.pipeline.Pipeline` or a bare ``model(x, t, cond)`` with
``schedule=`` and ``prediction=``, checks its input where it enters (size, channels, NaN/inf,
range, mask, strength), calls samplers by registry name and returns images clamped to [-1, 1].
The ``translate`` task (:class:`Translate`, :class:`TranslateParams`) runs them on files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffcore import io
from diffcore.io.progress import model_calls_bar, shown
from diffcore.parameterization import Parameterization
from diffcore.pipeline import Pipeline
from diffcore.schedules import Schedule
from diffcore.tasks import as_json, load_pipeline
from diffcore.tasks.generation import png_info
from diffcore.tasks.inputs import (
    MASK_REGIONS,
    MAX_SEED,
    MAX_STEPS,
    check_guidance,
    check_images,
    check_int,
    check_mask,
    check_strength,
    clip_field,
    device_field,
    quiet_field,
    start_time,
)
from diffcore.tasks.paired import translate
from diffcore.tasks.repaint import repaint, repaint_schedule

__all__ = [
    "MODES",
    "Translate",
    "TranslateParams",
    "repaint",
    "repaint_schedule",
    "sdedit",
    "translate",
]

Model = Pipeline | Callable[..., Tensor]


# --------------------------------------------------------------------------- SDEdit


@torch.no_grad()
def sdedit(
    pipe_or_model: Model,
    images: Tensor,
    strength: float | Sequence[float] | Tensor,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    schedule: str | Schedule | None = None,
    prediction: str | Parameterization | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    resize: bool = False,
    sample_index: int = 0,
) -> Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1): noise ``images`` to ``strength`` and denoise them.

    ``strength`` in (0, 1] is the fraction of the diffusion the input is pushed through (one
    number, or one per image: a batch may mix strengths, stepping together with per-sample
    coefficients; on a flow schedule the flow time before its shift,
    :func:`~diffcore.tasks.levels.fraction_to_time`); each image takes ``steps`` sampler steps
    from its start level. Small strengths stay faithful to the input, large ones trade
    faithfulness for realism. ``noise`` (like the images) fixes the start noise; without it, image i's
    noise is keyed by (seed, ``sample_index`` + i), so results do not depend on the batch. Returns
    (B, C, H, W) in [-1, 1].
    """
    pipe = Pipeline.wrap(pipe_or_model, schedule, prediction)
    x = check_images(images, pipe.shape, resize=resize).to(pipe.device)
    s = check_strength(strength, x.shape[0])
    cond, uncond = pipe.conditioning(x.shape[0], class_labels=class_labels, guidance_scale=guidance_scale)
    if seed is None and generator is None:
        seed = 0
    out = pipe.sample_from(
        x,
        start_time(pipe.schedule, s),
        sampler=sampler,
        steps=steps,
        noise=noise,
        generator=generator,
        seed=seed,
        sample_index=sample_index,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
    )
    return out.clamp(-1, 1)


# --------------------------------------------------------------------------- the translate task


MODES = ("sdedit", "inpaint", "paired")


@dataclass
class TranslateParams:
    """Parameters of the ``translate`` task: files in, an output folder out."""

    checkpoint: Path = field(metadata={"help": "run folder or checkpoint.safetensors"})
    input: Path = field(metadata={"help": "PNG/JPEG image, or NPY/NPZ array(s): uint8 pixels or floats in [-1, 1]"})
    mode: Literal["sdedit", "inpaint", "paired"] = field(
        default="sdedit", metadata={"help": "sdedit | inpaint (RePaint) | paired (a --task-condition model)"}
    )
    strength: float = field(default=0.5, metadata={"help": "SDEdit: fraction of the diffusion to noise to, (0, 1]"})
    mask: str | None = field(
        default=None,
        metadata={
            "help": "missing region: bottom-half, top-half, left-half, right-half, center, or a PNG/NPY/NPZ "
            "file (white / 1 = missing)"
        },
    )
    jump_length: int = field(default=10, metadata={"help": "RePaint: levels per resampling jump"})
    resample: int = field(default=5, metadata={"help": "RePaint: times each stretch is denoised"})
    sampler: str | None = field(
        default=None, metadata={"help": "sampler name (default: the model's for sdedit/paired, ddpm for inpaint)"}
    )
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's; 50 for inpaint)"})
    seed: int = field(default=0, metadata={"help": "noise seed"})
    resize: bool = field(
        default=False,
        metadata={
            "help": "resize inputs (and masks) of another size, and convert RGB <-> grayscale, instead of refusing"
        },
    )
    class_label: int | None = field(default=None, metadata={"help": "class label for a class-conditional model"})
    guidance_scale: float | None = field(default=None, metadata={"help": "classifier-free guidance scale"})
    source_guidance: float | None = field(
        default=None,
        metadata={"help": "paired: classifier-free guidance scale on the source (a model trained with source dropout)"},
    )
    out: Path = field(default=Path("outputs/translate"), metadata={"help": "output folder"})
    clip: bool = clip_field()
    device: str = device_field()
    quiet: bool = quiet_field()

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.out = Path(self.checkpoint), Path(self.input), Path(self.out)
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) or not 0 < self.strength <= 1:
            raise ValueError(f"strength={self.strength!r} must be in (0, 1] (0: keep the input, 1: pure noise)")
        for name in ("jump_length", "resample", "steps"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1, MAX_STEPS)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.class_label is not None:
            check_int("class_label", self.class_label, 0)
        if self.mode == "inpaint" and self.mask is None:
            raise ValueError("mode 'inpaint' needs --mask (a region name or a mask file)")
        if self.mode == "sdedit" and self.mask is not None:
            raise ValueError("--mask is used by modes 'inpaint' and 'paired', not 'sdedit'")
        check_guidance("guidance_scale", self.guidance_scale)
        check_guidance("source_guidance", self.source_guidance)
        if self.source_guidance is not None and self.mode != "paired":
            raise ValueError(f"source_guidance is for mode 'paired' (a --task-condition model), not {self.mode!r}")


class Translate:
    """Image-to-image translation with a trained model: SDEdit, RePaint inpainting, or a paired
    (Palette-style) model trained with --task-condition."""

    name = "translate"
    Params = TranslateParams

    def run(self, params: TranslateParams) -> dict[str, Any]:
        started = time.perf_counter()
        if params.mode == "inpaint":  # the walk's size, before anything is loaded
            repaint_schedule(params.steps or 50, params.jump_length, params.resample)
        pipe = load_pipeline(params.checkpoint, params.device)
        io.check_writable(params.out / "output.npz")
        images = io.load_images(params.input)
        mask = io.load_mask(params.mask, MASK_REGIONS) if params.mask is not None else None
        common: dict[str, Any] = {
            "seed": params.seed,
            "class_labels": params.class_label,
            "guidance_scale": params.guidance_scale,
            "resize": params.resize,
        }
        with model_calls_bar(pipe.model, f"translate ({params.mode})", shown(params.quiet)):
            out = self._translate(pipe, images, mask, params, common)
        io.check_finite(out, "the translated images")
        if params.clip:
            out = out.clamp(-1, 1)
        missing = None if mask is None else check_mask(mask, out, resize=True)
        ran = {"sampler": params.sampler or "ddpm", "steps": params.steps or 50} if params.mode == "inpaint" else {}
        info = png_info(pipe, params.checkpoint, params, mode=params.mode, input=str(params.input), **ran)
        files = io.write_translation(params.out, images, missing, out.cpu(), info)
        return {
            "mode": params.mode,
            "n": int(out.shape[0]),
            "shape": list(out.shape[1:]),
            "seconds": round(time.perf_counter() - started, 2),
            **files,
            "params": as_json(params),
        }

    @staticmethod
    def _translate(
        pipe: Pipeline, images: Tensor, mask: Tensor | str | None, params: TranslateParams, common: dict[str, Any]
    ) -> Tensor:
        if params.mode == "sdedit":
            return sdedit(pipe, images, params.strength, sampler=params.sampler, steps=params.steps, **common)
        if params.mode == "inpaint":
            if mask is None:
                raise ValueError("mode 'inpaint' needs --mask (a region name or a mask file)")
            return repaint(
                pipe,
                images,
                mask,
                jump_length=params.jump_length,
                resample=params.resample,
                sampler=params.sampler or "ddpm",
                steps=params.steps or 50,
                **common,
            )
        return translate(
            pipe,
            images,
            mask=mask,
            sampler=params.sampler,
            steps=params.steps,
            source_guidance=params.source_guidance,
            **common,
        )

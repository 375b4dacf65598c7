"""Image-to-image translation with a trained diffusion model: SDEdit, RePaint inpainting and
paired (Palette-style) translation.

- :func:`sdedit` (Meng et al. 2022): noise the input to ``strength`` of the diffusion and run the
  reverse process back with :func:`diffcore.sample_from`; per-sample strengths step together.
- :func:`repaint` (Lugmayr et al. 2022): an unconditional model fills a masked region; after every
  reverse step the known region is replaced by the input noised to the same level, and every
  ``jump_length`` steps the state is noised back up and re-denoised (``resample`` times).
- :func:`translate` (Saharia et al. 2022, "Palette"): a model trained with
  ``diffcore.train(..., task_condition=...)`` sees the source image as extra input channels.

Images are (B, C, H, W) tensors in [-1, 1] (model space); masks are 1 where a pixel is missing.
Every function takes a :class:`~diffcore.pipeline.Pipeline` or a bare ``model(x, t, cond)`` with
``schedule=`` and ``prediction=``, checks its input where it enters (size, channels, NaN/inf,
range, mask, strength), calls samplers by registry name and returns images clamped to [-1, 1].
The ``translate`` task (:class:`Translate`, :class:`TranslateParams`) runs them on files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffcore import io, ops
from diffcore.io.progress import model_calls_bar, shown
from diffcore.ops.philox import INIT_NOISE_OFFSET, REPAINT_JUMP_OFFSET, REPAINT_KNOWN_OFFSET, REPAINT_START_OFFSET
from diffcore.parameterization import Parameterization
from diffcore.pipeline import Pipeline
from diffcore.sampling import resolve_sampler
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
    check_repaint_walk,
    check_strength,
    clip_field,
    device_field,
    quiet_field,
    start_time,
)
from diffcore.timesteps import Plan, make_plan

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


# --------------------------------------------------------------------------- RePaint


def repaint_schedule(steps: int, jump_length: int, resample: int) -> list[tuple[str, int]]:
    """RePaint's time travel (Lugmayr et al. 2022, Alg. 1 and sec. 4.2) over plan levels 0..steps.

    ``("down", i)``: a reverse step from level i to i+1; ``("up", i)``: forward noising from level
    i+1 back to i. Every ``jump_length`` steps (except the last stretch) the walk jumps back
    ``jump_length`` levels, ``resample - 1`` times, so those levels are denoised ``resample`` times.
    A walk past :data:`~diffcore.tasks.inputs.MAX_REPAINT_STEPS` steps is refused before it is built.
    """
    check_repaint_walk(steps, jump_length, resample)
    jumps = {t: resample - 1 for t in range(0, steps - jump_length, jump_length)}
    walk: list[tuple[str, int]] = []
    t = steps  # steps still to go; plan level = steps - t
    while t >= 1:
        t -= 1
        walk.append(("down", steps - t - 1))
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                walk.append(("up", steps - t))
    return walk


def _one_step_program(pipe: Pipeline, sampler: str, steps: int, timestep_spacing: str) -> tuple[Plan, Any]:
    """The plan and coefficient program of a sampler that takes one model call per step and
    keeps no history (RePaint interleaves its steps with pasting the known region)."""
    fn = resolve_sampler(sampler)
    if not hasattr(fn, "program"):
        raise ValueError(f"repaint needs a coefficient-program sampler (e.g. 'ddpm'); {sampler!r} is not one")
    plan = make_plan(pipe.schedule, steps, timestep_spacing, getattr(fn, "plan_style", "karras"))
    program = fn.program(plan)
    if program.slots or len(program.steps) != plan.steps:
        raise ValueError(
            f"repaint runs the sampler one step at a time; {sampler!r} keeps history or takes several "
            "model calls per step: use ddpm, ddim or euler_ancestral"
        )
    return plan, program


def _noise_table(plan: Plan, like: Tensor) -> Tensor:
    """One :func:`~diffcore.ops.forward_noise` table (columns 0-1, the state, are used): row i
    noises clean data to the level step i lands on, row n noises it to the start level, row
    n+1+i takes a state from the level step i lands on back to the level it started from
    (RePaint's jump: ``x_t = (alpha_t / alpha_s) x_s + sqrt(std_t^2 - (alpha_t / alpha_s)^2 std_s^2) z``)."""
    n = plan.steps
    rows = [[*plan.target(i), 0.0, 0.0] for i in range(n)] + [[*plan.level(0), 0.0, 0.0]]
    for i in range(n):
        (a_to, s_to), (a_from, s_from) = plan.level(i), plan.target(i)
        ratio = a_to / a_from
        rows.append([ratio, max(s_to**2 - (ratio * s_from) ** 2, 0.0) ** 0.5, 0.0, 0.0])
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


@torch.no_grad()
def repaint(
    pipe_or_model: Model,
    images: Tensor,
    mask: Tensor | str,
    *,
    jump_length: int = 10,
    resample: int = 5,
    steps: int = 50,
    sampler: str = "ddpm",
    timestep_spacing: str = "trailing",
    schedule: str | Schedule | None = None,
    prediction: str | Parameterization | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    resize: bool = False,
    sample_index: int = 0,
) -> Tensor:
    """RePaint (Lugmayr et al. 2022): fill the pixels where ``mask`` is 1 with an unconditional model.

    The sampler's own program runs one step at a time; after each reverse step the known region
    is set to the input noised to the level reached, and the resampling jumps noise the state
    forward (:func:`_noise_table`), both with the fused forward-noise op. About ``steps *
    resample`` model calls. ``sampler`` must be single-step (``ddpm``, ``ddim``, ``euler_ancestral``,
    ...). The known pixels of the result equal the input's exactly. With ``seed`` (default 0) row i's
    noise is keyed by (seed, ``sample_index`` + i): no batch dependence. Returns (B, C, H, W) in [-1, 1].
    """
    from diffcore.samplers.program import Program, run_program

    pipe = Pipeline.wrap(pipe_or_model, schedule, prediction)
    x_known = check_images(images, pipe.shape, resize=resize).to(pipe.device)
    keep = check_mask(mask, x_known, resize=resize) == 0
    steps, jump_length, resample = (
        check_int(k, v) for k, v in (("steps", steps), ("jump_length", jump_length), ("resample", resample))
    )
    if jump_length > steps:
        raise ValueError(f"jump_length={jump_length} must be <= steps={steps}")
    ops.check_noise_source(seed, generator)
    plan, program = _one_step_program(pipe, sampler, steps, timestep_spacing)
    cond, uncond = pipe.conditioning(x_known.shape[0], class_labels=class_labels, guidance_scale=guidance_scale)
    denoiser = pipe.denoiser(
        timestep_dtype=plan.timestep_dtype,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        sample_index=sample_index,
    )
    table, n, walk = _noise_table(plan, x_known), plan.steps, repaint_schedule(plan.steps, jump_length, resample)
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    seeds: list[int] = torch.randint(0, 2**62, (len(walk),), generator=g).tolist() if generator is None else []

    def noised(source: Tensor, row: int, k: int, offset: int) -> Tensor:
        if generator is not None:
            z = torch.randn(source.shape, generator=generator, dtype=source.dtype).to(source.device)
        else:
            z = ops.philox_noise_like(source, seeds[k], offset, sample_index=sample_index)
        t = torch.full((source.shape[0],), row, dtype=torch.long, device=source.device)
        return ops.forward_noise(source, z, t, table)[0]

    if generator is not None:  # torch RNG (as before keyed noise): the start from a generator seeded by ``seed``
        x = torch.randn(x_known.shape, generator=g, dtype=x_known.dtype).to(x_known.device)
    else:
        x = ops.philox_noise_like(x_known, 0 if seed is None else seed, INIT_NOISE_OFFSET, sample_index=sample_index)
    x = x * plan.init_scale
    x = torch.where(keep, noised(x_known, n, 0, REPAINT_START_OFFSET), x)
    for k, (direction, i) in enumerate(walk):
        if direction == "down":
            step = Program(steps=[program.steps[i]], slots=0)
            x = run_program(denoiser, x, step, generator=generator, seed=seeds[k] if seeds else None)
            x = torch.where(keep, x_known if i + 1 == n else noised(x_known, i, k, REPAINT_KNOWN_OFFSET), x)
        else:
            x = noised(x, n + 1 + i, k, REPAINT_JUMP_OFFSET)
    return torch.where(keep, x_known, x.clamp(-1, 1))


# --------------------------------------------------------------------------- paired translation


def _task_condition(pipe: Pipeline) -> Any:
    from diffcore.conditions import make_task_condition

    if not isinstance(pipe, Pipeline):
        raise TypeError(f"translate needs a diffcore.Pipeline trained with a task condition, got {type(pipe).__name__}")
    spec = dict(pipe.run.get("task_condition") or {})
    if not spec:
        raise ValueError(
            "this pipeline was not trained for paired translation; train it with "
            "task_condition='super_resolution' or 'inpainting'"
        )
    return make_task_condition(spec.pop("name"), **spec)


def _source_scale(source_guidance: Any, condition: Any, guidance_scale: float | None) -> float:
    """``source_guidance`` as a finite float for a model trained with source dropout."""
    try:
        scale = float(source_guidance)
    except (TypeError, ValueError, RuntimeError):
        scale = math.nan
    if isinstance(source_guidance, bool) or not math.isfinite(scale):
        raise ValueError(f"source_guidance={source_guidance!r} must be a finite number")
    if not condition.dropout:
        raise ValueError(
            "source_guidance needs a model trained with source dropout "
            "(task_condition_options={'dropout': 0.1}); this one was trained without it"
        )
    if guidance_scale is not None:
        raise ValueError("give guidance_scale (class guidance) or source_guidance, not both")
    return scale


def _source(
    pipe: Pipeline, condition: Any, source: Tensor, mask: Any, resize: bool
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(the model's extra input channels, the known image, the keep mask) of a user's source:
    a low-resolution image (super-resolution), or an image and its mask (inpainting)."""
    if pipe.shape is None:
        raise ValueError("this pipeline does not know its image shape")
    c, h, w = pipe.shape
    if condition.name == "super_resolution":
        if mask is not None:
            raise ValueError("mask is only used by inpainting models; this one does super-resolution")
        f = condition.factor
        low = check_images(source, (c, h // f, w // f), resize=resize, name="source").to(pipe.device)
        return condition.from_low_resolution(low), None, None
    if mask is None:
        raise ValueError("this inpainting model needs a mask (1 = missing pixel)")
    known = check_images(source, pipe.shape, resize=resize, name="source").to(pipe.device)
    missing = check_mask(mask, known, resize=resize)
    return condition.source(known, missing), known, missing == 0


@torch.no_grad()
def translate(
    pipe: Pipeline,
    source: Tensor,
    *,
    mask: Tensor | str | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    class_labels: Any = None,
    guidance_scale: float | None = None,
    source_guidance: float | None = None,
    timestep_spacing: str = "trailing",
    resize: bool = False,
    sample_index: int = 0,
) -> Tensor:
    """Paired translation (Palette, Saharia et al. 2022) with a model trained on a task condition.

    ``super_resolution``: ``source`` is the low-resolution input (B, C, H/f, W/f) for a model of
    output size H x W. ``inpainting``: ``source`` is the image (B, C, H, W) and ``mask`` (1 =
    missing) is required; the known pixels of the result equal the input's exactly. The model
    sees the degraded source as extra input channels (``cond["concat"]``) at every step, starting
    from pure noise at the last training timestep (``timestep_spacing="trailing"``); with
    ``sampler="ddim", steps=1`` the result is the model's posterior-mean estimate E[x0 | source].

    ``source_guidance`` w: classifier-free guidance on the source, for a model trained with
    ``task_condition_options={"dropout": p}`` (p > 0): each step uses
    ``null + w * (source - null)``, where ``null`` is the model's prediction without the source
    (with the same class labels, if any). w = 1 is plain sampling; w > 1 trades diversity for
    completions that follow the source more decisively. Not combinable with ``guidance_scale``.
    With ``seed`` (default 0) row i's noise is keyed by (seed, ``sample_index`` + i), so a row's
    result does not depend on its batch; with ``generator`` (torch RNG) it does.
    Returns (B, C, H, W) in [-1, 1].
    """
    condition = _task_condition(pipe)
    if source_guidance is not None:
        guidance_scale = _source_scale(source_guidance, condition, guidance_scale)
    concat, known, keep = _source(pipe, condition, source, mask, resize)
    n = concat.shape[0]
    labels_scale = None if source_guidance is not None else guidance_scale
    cond, uncond = pipe.conditioning(
        n, class_labels=class_labels, extra={"concat": concat}, guidance_scale=labels_scale
    )
    if source_guidance is not None:
        uncond = {**(cond or {}), "concat": condition.null(concat)}
    noise: dict[str, Any]
    if generator is not None:  # torch RNG: x_T, then the sampler's Philox seed, drawn from it
        x_T = torch.randn((n, *pipe.sample_shape), generator=generator).to(pipe.device)
        noise = {"seed": int(torch.randint(0, 2**62, (1,), generator=generator))}
    else:  # row i's x_T and step noise keyed by (seed, sample_index + i): no batch dependence
        seed = 0 if seed is None else seed
        like = torch.empty((n, *pipe.sample_shape), device=pipe.device)
        x_T = ops.philox_noise_like(like, seed, offset=INIT_NOISE_OFFSET, sample_index=sample_index)
        noise = {"seed": seed, "sample_index": sample_index}
    out = pipe.sample(
        x_T,
        sampler=sampler,
        steps=steps,
        timestep_spacing=timestep_spacing,
        cond=cond,
        uncond=uncond,
        guidance_scale=guidance_scale,
        **noise,
    )
    out = out.clamp(-1, 1)
    return out if keep is None or known is None else torch.where(keep, known, out)


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

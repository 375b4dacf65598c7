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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffcore import ops
from diffcore.denoiser import Denoiser
from diffcore.ops.philox import REPAINT_JUMP_OFFSET, REPAINT_KNOWN_OFFSET, REPAINT_START_OFFSET
from diffcore.parameterization import Parameterization, make_parameterization
from diffcore.sampling import resolve_sampler, resolve_schedule, sample, sample_from
from diffcore.schedules import EDMSchedule, Schedule
from diffcore.timesteps import make_plan

if TYPE_CHECKING:
    from diffcore.pipeline import Pipeline

__all__ = ["MASK_REGIONS", "check_images", "check_mask", "check_strength", "image_batch", "region_mask", "repaint",
           "sdedit", "start_time", "translate"]

MASK_REGIONS = ("bottom-half", "top-half", "left-half", "right-half", "center")
_RANGE_TOL = 1e-3  # model-space images may overshoot [-1, 1] by rounding only
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion


# --------------------------------------------------------------------------- the model


@dataclass
class _Model:
    """What the tasks need from a Pipeline or a bare model."""

    fn: Callable[..., Tensor]
    schedule: Schedule
    param: Parameterization
    shape: tuple[int, ...] | None  # (C, H, W) the model was trained on, when known
    num_classes: int
    sampler: str
    steps: int
    device: torch.device
    pipeline: Any = None


def _resolve(pipe_or_model: Any, schedule: str | Schedule | None, prediction: str | Parameterization | None) -> _Model:
    from diffcore.pipeline import Pipeline

    if isinstance(pipe_or_model, Pipeline):
        pipe = pipe_or_model
        shape = tuple(pipe.dataset["shape"]) if pipe.dataset.get("shape") else None
        return _Model(pipe._model_fn, pipe.schedule, pipe.param, shape, pipe.num_classes, pipe.sampler, pipe.steps,
                      pipe.device, pipe)
    if not callable(pipe_or_model):
        raise TypeError("expected a diffcore.Pipeline or a model(x, t, cond) callable, "
                        f"got {type(pipe_or_model).__name__}")
    if schedule is None:
        raise ValueError("a bare model needs schedule= (a schedule object or name) and prediction=")
    config = getattr(pipe_or_model, "config", None) or {}
    shape = None
    if isinstance(config, dict) and "in_channels" in config and "image_size" in config:
        shape = (int(config["in_channels"]), int(config["image_size"]), int(config["image_size"]))
    try:
        device = next(pipe_or_model.parameters()).device
    except (AttributeError, StopIteration):
        device = torch.device("cpu")
    num_classes = int(config.get("num_classes", 0)) if isinstance(config, dict) else 0
    return _Model(pipe_or_model, resolve_schedule(schedule), make_parameterization(prediction or "epsilon"), shape,
                  num_classes, "dpmpp_2m", 20, device)


def _conditioning(m: _Model, class_labels: Any, n: int, extra: dict[str, Tensor] | None,
                  guidance_scale: float | None) -> tuple[Any, Any]:
    """(cond, uncond) for class labels (null label = num_classes) plus extra entries in both."""
    cond: dict[str, Any] = dict(extra or {})
    uncond: dict[str, Any] | None = None
    if class_labels is not None:
        if m.num_classes == 0:
            raise ValueError("class_labels given, but this model was trained without classes")
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        labels = labels.expand(n) if labels.numel() == 1 else labels
        if labels.shape[0] != n or int(labels.min()) < 0 or int(labels.max()) >= m.num_classes:
            raise ValueError(f"class_labels must be one label or {n} labels in [0, {m.num_classes}), got "
                             f"{labels.tolist()[:8]}")
        labels = labels.to(m.device)
        cond["class_labels"] = labels
        uncond = {**(extra or {}), "class_labels": torch.full_like(labels, m.num_classes)}
    elif guidance_scale is not None:
        raise ValueError("guidance_scale needs class_labels (the conditional branch)")
    return (cond or None), (uncond if guidance_scale is not None else None)


# --------------------------------------------------------------------------- input checks


def image_batch(images: Any, name: str = "images", space: str = "in [-1, 1]") -> Tensor:
    """``images`` as a non-empty, finite, floating-point (B, C, H, W) batch (a 3-D tensor is one
    image); ``space`` describes the expected values in the error messages."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W) {space}, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be floating point {space}, got dtype {images.dtype}; "
                        "scale uint8 pixels with x / 127.5 - 1")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, C, H, W), got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(f"{name} contain {bad} NaN or inf pixel value(s)")
    return images


def check_images(images: Any, shape: tuple[int, ...] | None = None, *, resize: bool = False,
                 name: str = "images") -> Tensor:
    """``images`` as a float (B, C, H, W) batch in [-1, 1] fitting ``shape`` = (C, H, W).

    A 3-D tensor is one image. A wrong size or channel count raises, unless ``resize`` (then the
    images are resized bilinearly with antialiasing, and RGB <-> grayscale converted)."""
    images = image_batch(images, name)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(f"{name} have values in [{lo:.4g}, {hi:.4g}]; expected model space [-1, 1] "
                         "(scale uint8 pixels with x / 127.5 - 1)")
    if shape is None:
        return images
    want_c, want_h, want_w = (int(s) for s in shape[-3:])
    c, h, w = images.shape[1:]
    if c != want_c:
        if not resize or {c, want_c} != {1, 3}:
            hint = "; pass resize=True to convert grayscale <-> RGB" if {c, want_c} == {1, 3} else ""
            raise ValueError(f"{name} have {c} channel(s) but the model expects {want_c}{hint}")
        if c == 3:
            luma = images.new_tensor(_LUMA).reshape(1, 3, 1, 1)
            images = (images * luma).sum(dim=1, keepdim=True)
        else:
            images = images.expand(-1, 3, -1, -1)
    if (h, w) != (want_h, want_w):
        if not resize:
            raise ValueError(f"{name} are {h}x{w} but the model works at {want_h}x{want_w}; "
                             "resize them or pass resize=True")
        images = F.interpolate(images, size=(want_h, want_w), mode="bilinear", align_corners=False,
                               antialias=True).clamp(-1, 1)
    return images.contiguous()


def region_mask(region: str, height: int, width: int) -> Tensor:
    """A (1, 1, H, W) float mask, 1 on the named missing region (one of :data:`MASK_REGIONS`);
    ``center`` is the middle half of each side."""
    if region not in MASK_REGIONS:
        raise ValueError(f"mask region {region!r}: expected one of {MASK_REGIONS} or a mask tensor/file")
    m = torch.zeros(1, 1, height, width)
    h2, w2 = height // 2, width // 2
    if region == "bottom-half":
        m[..., h2:, :] = 1
    elif region == "top-half":
        m[..., :h2, :] = 1
    elif region == "left-half":
        m[..., :, :w2] = 1
    elif region == "right-half":
        m[..., :, w2:] = 1
    else:
        m[..., height // 4 : height // 4 + max(1, h2), width // 4 : width // 4 + max(1, w2)] = 1
    return m


def check_mask(mask: Any, images: Tensor, *, resize: bool = False) -> Tensor:
    """``mask`` (1 = missing pixel) as a float (B, 1, H, W) of 0/1 matching ``images`` (B, C, H, W).

    Accepts a region name, or a tensor (H, W), (1|B, H, W) or (1|B, 1, H, W) of 0/1 (bool, int or
    float). A mask of another size raises unless ``resize`` (nearest-neighbour); an empty mask, or
    one that marks no pixel of some image as missing, raises."""
    b, _, h, w = images.shape
    if isinstance(mask, str):
        mask = region_mask(mask, h, w)
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a region name {MASK_REGIONS} or a tensor, got {type(mask).__name__}")
    if mask.numel() == 0:
        raise ValueError(f"mask is empty (shape {tuple(mask.shape)})")
    m = mask.float() if mask.dtype == torch.bool or not mask.is_floating_point() else mask
    if not bool(torch.isfinite(m).all()):
        raise ValueError("mask contains NaN or inf")
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, b):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected (H, W), (B, H, W) or (B, 1, H, W) "
                         f"with B = 1 or {b}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must hold only 0 (known pixel) and 1 (missing pixel)")
    if m.shape[-2:] != (h, w):
        if not resize:
            raise ValueError(f"mask is {m.shape[-2]}x{m.shape[-1]} but the images are {h}x{w}; "
                             "pass resize=True to resize it")
        m = F.interpolate(m, size=(h, w), mode="nearest")
    m = m.to(images.device, images.dtype).expand(b, 1, h, w).contiguous()
    empty = (m.flatten(1).sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"mask marks no pixel as missing (all zero) for image(s) {empty[:8]}: nothing to inpaint")
    return m


def check_strength(strength: Any, n: int) -> Tensor:
    """SDEdit strength(s) as a (n,) float64 tensor, each in (0, 1]."""
    try:
        s = torch.as_tensor(strength, dtype=torch.float64).reshape(-1).cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"strength must be a number or one number per image, got {strength!r}") from exc
    if s.numel() == 1:
        s = s.expand(n)
    if s.shape[0] != n:
        raise ValueError(f"strength has {s.shape[0]} values for {n} images")
    bad = ~(torch.isfinite(s) & (s > 0) & (s <= 1))
    if bool(bad.any()):
        raise ValueError(f"strength={s[bad].tolist()[:8]} must be in (0, 1] (0: keep the input, 1: pure noise)")
    return s


def start_time(schedule: Schedule, strength: Tensor) -> Tensor:
    """Model time of each strength: ``strength * (T - 1)`` on a discrete schedule; on an EDM
    schedule the sigma at that fraction of the Karras ramp from sigma_min to sigma_max."""
    if isinstance(schedule, EDMSchedule):
        lo, hi, rho = schedule.sigma_min ** (1 / schedule.rho), schedule.sigma_max ** (1 / schedule.rho), schedule.rho
        sig = (lo + strength * (hi - lo)) ** rho
        return torch.maximum(sig, torch.full_like(sig, schedule.sigma_min * (1 + 1e-6)))
    return strength * (schedule.num_train_timesteps - 1)


# --------------------------------------------------------------------------- SDEdit


@torch.no_grad()
def sdedit(
    pipe_or_model: Pipeline | Callable[..., Tensor],
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
) -> Tensor:
    """SDEdit (Meng et al. 2022, Alg. 1): noise ``images`` to ``strength`` and denoise them.

    ``strength`` in (0, 1] is the fraction of the diffusion the input is pushed through (one
    number, or one per image: a batch may mix strengths, stepping together with per-sample
    coefficients); each image takes ``steps`` sampler steps from its start level. Small strengths
    stay faithful to the input, large ones trade faithfulness for realism. ``noise`` (like the
    images) fixes the start noise. Returns (B, C, H, W) in [-1, 1].
    """
    m = _resolve(pipe_or_model, schedule, prediction)
    x = check_images(images, m.shape, resize=resize).to(m.device)
    s = check_strength(strength, x.shape[0])
    cond, uncond = _conditioning(m, class_labels, x.shape[0], None, guidance_scale)
    if seed is None and generator is None:
        seed = 0
    out = sample_from(m.fn, x, start_time(m.schedule, s), sampler=sampler or m.sampler,
                      steps=m.steps if steps is None else steps, schedule=m.schedule, prediction=m.param,
                      noise=noise, generator=generator, seed=seed, cond=cond, uncond=uncond,
                      guidance_scale=guidance_scale)
    return out.clamp(-1, 1)


# --------------------------------------------------------------------------- RePaint


def repaint_schedule(steps: int, jump_length: int, resample: int) -> list[tuple[str, int]]:
    """RePaint's time travel (Lugmayr et al. 2022, Alg. 1 and sec. 4.2) over plan levels 0..steps.

    ``("down", i)``: a reverse step from level i to i+1; ``("up", i)``: forward noising from level
    i+1 back to i. Every ``jump_length`` steps (except the last stretch) the walk jumps back
    ``jump_length`` levels, ``resample - 1`` times, so those levels are denoised ``resample`` times.
    """
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


def _check_count(name: str, value: Any, lo: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} must be an integer >= {lo}")
    return value


@torch.no_grad()
def repaint(
    pipe_or_model: Pipeline | Callable[..., Tensor],
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
) -> Tensor:
    """RePaint (Lugmayr et al. 2022): fill the pixels where ``mask`` is 1 with an unconditional model.

    The sampler's own program runs one step at a time; after each reverse step the known region
    is set to the input noised to the level reached (``alpha * x + std * z``, one fused op), and
    the resampling jumps noise the state forward, ``x_t = (alpha_t / alpha_s) x_s +
    sqrt(std_t^2 - (alpha_t / alpha_s)^2 std_s^2) z``, with the same op. About ``steps * resample``
    model calls. ``sampler`` must be single-step (``ddpm``, ``ddim``, ``euler_ancestral``, ...).
    The known pixels of the result equal the input's exactly. Returns (B, C, H, W) in [-1, 1].
    """
    m = _resolve(pipe_or_model, schedule, prediction)
    x_known = check_images(images, m.shape, resize=resize).to(m.device)
    missing = check_mask(mask, x_known, resize=resize)
    steps = _check_count("steps", steps)
    jump_length = _check_count("jump_length", jump_length)
    resample = _check_count("resample", resample)
    if jump_length > steps:
        raise ValueError(f"jump_length={jump_length} must be <= steps={steps}")
    if seed is not None and generator is not None:
        raise ValueError("pass either generator (torch RNG noise) or seed (in-kernel Philox noise), not both")
    fn = resolve_sampler(sampler)
    if not hasattr(fn, "program"):
        raise ValueError(f"repaint needs a coefficient-program sampler (e.g. 'ddpm'); {sampler!r} is not one")
    plan = make_plan(m.schedule, steps, timestep_spacing, getattr(fn, "plan_style", "karras"))
    program = fn.program(plan)
    if program.slots or len(program.steps) != plan.steps:
        raise ValueError(f"repaint runs the sampler one step at a time; {sampler!r} keeps history or takes several "
                         "model calls per step: use ddpm, ddim or euler_ancestral")
    cond, uncond = _conditioning(m, class_labels, x_known.shape[0], None, guidance_scale)
    denoiser = Denoiser(m.fn, m.param, timestep_dtype=plan.timestep_dtype, cond=cond, uncond=uncond,
                        guidance_scale=guidance_scale)
    from diffcore.samplers.program import Program, run_program

    # One forward_noise table (only columns 0-1, the state, are used): row i noises clean data to
    # the level step i lands on, row n noises it to the start level, row n+1+i takes a state from
    # the level step i lands on back to the level it started from (RePaint's jump).
    n = plan.steps
    rows = [[*plan.target(i), 0.0, 0.0] for i in range(n)] + [[*plan.level(0), 0.0, 0.0]]
    for i in range(n):
        (a_to, s_to), (a_from, s_from) = plan.level(i), plan.target(i)
        ratio = a_to / a_from
        rows.append([ratio, max(s_to**2 - (ratio * s_from) ** 2, 0.0) ** 0.5, 0.0, 0.0])
    table = torch.tensor(rows, dtype=x_known.dtype, device=x_known.device)
    b = x_known.shape[0]
    walk = repaint_schedule(n, jump_length, resample)
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    seeds = torch.randint(0, 2**62, (len(walk),), generator=g).tolist() if generator is None else [None] * len(walk)

    def draw(k: int, offset: int) -> Tensor:
        if generator is not None:
            return torch.randn(x_known.shape, generator=generator, dtype=x_known.dtype).to(x_known.device)
        return ops.philox_noise_like(x_known, seeds[k], offset)

    def noised(source: Tensor, row: int, k: int, offset: int) -> Tensor:
        t = torch.full((b,), row, dtype=torch.long, device=source.device)
        return ops.forward_noise(source, draw(k, offset), t, table)[0]

    keep = missing == 0
    x = torch.randn(x_known.shape, generator=g, dtype=x_known.dtype).to(x_known.device) * plan.init_scale
    x = torch.where(keep, noised(x_known, n, 0, REPAINT_START_OFFSET), x)
    for k, (direction, i) in enumerate(walk):
        if direction == "down":
            x = run_program(denoiser, x, Program(steps=[program.steps[i]], slots=0), generator=generator, seed=seeds[k])
            known = x_known if i + 1 == n else noised(x_known, i, k, REPAINT_KNOWN_OFFSET)
            x = torch.where(keep, known, x)
        else:
            x = noised(x, n + 1 + i, k, REPAINT_JUMP_OFFSET)
    return torch.where(keep, x_known, x.clamp(-1, 1))


# --------------------------------------------------------------------------- paired translation


def _task_condition(pipe: Pipeline) -> Any:
    from diffcore.conditions import make_task_condition
    from diffcore.pipeline import Pipeline

    if not isinstance(pipe, Pipeline):
        raise TypeError(f"translate needs a diffcore.Pipeline trained with a task condition, got {type(pipe).__name__}")
    spec = dict(pipe.run.get("task_condition") or {})
    if not spec:
        raise ValueError("this pipeline was not trained for paired translation; train it with "
                         "task_condition='super_resolution' or 'inpainting'")
    return make_task_condition(spec.pop("name"), **spec)


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
    Returns (B, C, H, W) in [-1, 1].
    """
    condition = _task_condition(pipe)
    if source_guidance is not None:
        try:
            source_scale = float(source_guidance)
        except (TypeError, ValueError, RuntimeError):
            source_scale = math.nan
        if isinstance(source_guidance, bool) or not math.isfinite(source_scale):
            raise ValueError(f"source_guidance={source_guidance!r} must be a finite number")
        if not condition.dropout:
            raise ValueError("source_guidance needs a model trained with source dropout "
                             "(task_condition_options={'dropout': 0.1}); this one was trained without it")
        if guidance_scale is not None:
            raise ValueError("give guidance_scale (class guidance) or source_guidance, not both")
    m = _resolve(pipe, None, None)
    if m.shape is None:
        raise ValueError("this pipeline does not know its image shape")
    c, h, w = m.shape
    known = keep = None
    if condition.name == "super_resolution":
        if mask is not None:
            raise ValueError("mask is only used by inpainting models; this one does super-resolution")
        f = condition.factor
        low = check_images(source, (c, h // f, w // f), resize=resize, name="source").to(m.device)
        concat = condition.from_low_resolution(low)
    else:
        if mask is None:
            raise ValueError("this inpainting model needs a mask (1 = missing pixel)")
        known = check_images(source, m.shape, resize=resize, name="source").to(m.device)
        missing = check_mask(mask, known, resize=resize)
        keep = missing == 0
        concat = condition.source(known, missing)
    n = concat.shape[0]
    cond, uncond = _conditioning(m, class_labels, n, {"concat": concat}, guidance_scale)
    if source_guidance is not None:
        uncond = {**(cond or {}), "concat": condition.null(concat)}
        guidance_scale = source_scale
    g = generator if generator is not None else torch.Generator().manual_seed(0 if seed is None else seed)
    x_T = torch.randn((n, c, h, w), generator=g).to(m.device)
    out = sample(m.fn, x_T, sampler=sampler or m.sampler, steps=m.steps if steps is None else steps,
                 schedule=m.schedule, prediction=m.param, timestep_spacing=timestep_spacing, cond=cond,
                 uncond=uncond, guidance_scale=guidance_scale, seed=int(torch.randint(0, 2**62, (1,), generator=g))).clamp(-1, 1)
    if keep is not None:
        out = torch.where(keep, known, out)
    return out

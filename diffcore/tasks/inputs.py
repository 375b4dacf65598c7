"""What the tasks take in: image batches in model space, masks, strengths, counts and numbers,
checked where they enter, with errors that name the bad value.

Images are (B, C, H, W) tensors in [-1, 1] (model space); masks are 1 where a pixel is missing.
"""

from __future__ import annotations

import math
from dataclasses import field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffcore.schedules import Schedule
from diffcore.tasks.levels import fraction_to_time

__all__ = [
    "MASK_REGIONS",
    "MAX_BATCH",
    "MAX_GUIDANCE",
    "MAX_REPAINT_STEPS",
    "MAX_SEED",
    "MAX_STEPS",
    "check_guidance",
    "check_images",
    "check_int",
    "check_mask",
    "check_number",
    "check_repaint_walk",
    "check_sampler",
    "check_strength",
    "check_suffix",
    "clip_field",
    "device_field",
    "image_batch",
    "quiet_field",
    "region_mask",
    "start_time",
]

MASK_REGIONS = ("bottom-half", "top-half", "left-half", "right-half", "center")
_RANGE_TOL = 1e-3  # model-space images may overshoot [-1, 1] by rounding only
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's "L" conversion
MAX_STEPS = 10_000  # sampler steps a task accepts (a discrete schedule allows at most its T)
MAX_SEED = 2**63 - 1  # torch generators and Philox keys take 64-bit seeds
MAX_BATCH = 2**20  # samples (tiles, rows) per model call
MAX_GUIDANCE = 1000.0  # classifier-free guidance scales past this only leave the data range
MAX_REPAINT_STEPS = 100_000  # reverse + forward steps of one RePaint walk, about steps * (2 * resample - 1)


def check_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in [``low``, ``high``]; a bool or a non-integer raises naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}={value!r} must be an integer {bounds}")
    return value


def check_repaint_walk(steps: Any, jump_length: Any, resample: Any) -> None:
    """RePaint's ``steps``, ``jump_length`` and ``resample`` as integers >= 1 whose walk (about
    ``steps * (2 * resample - 1)`` model steps) fits :data:`MAX_REPAINT_STEPS`."""
    for name, value in (("steps", steps), ("jump_length", jump_length), ("resample", resample)):
        check_int(name, value)
    if steps * (2 * resample - 1) > MAX_REPAINT_STEPS:
        raise ValueError(
            f"steps={steps}, resample={resample}: RePaint would take about {steps * (2 * resample - 1)} model "
            f"steps; at most {MAX_REPAINT_STEPS} (diffcore.tasks.inputs.MAX_REPAINT_STEPS)"
        )


def check_guidance(name: str, value: Any) -> float | None:
    """A classifier-free guidance scale: None, or a number in [0, :data:`MAX_GUIDANCE`] (0: unconditional)."""
    return None if value is None else check_number(name, value, 0.0, MAX_GUIDANCE)


def device_field() -> Any:
    """The ``device`` field of a task's Params (``--device``): ``auto`` by default."""
    return field(default="auto", metadata={"help": "auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N or mps"})


def quiet_field() -> Any:
    """The ``quiet`` field of a task's Params (``--quiet``): no progress bar."""
    return field(
        default=False,
        metadata={"help": "no progress bar on stderr (none is shown either when stderr is not a terminal)"},
    )


def clip_field() -> Any:
    """The ``clip`` field of a task's Params (``--no-clip``): image outputs clipped to [-1, 1]."""
    return field(
        default=True,
        metadata={"help": "clip image outputs to the data range [-1, 1], as diffusers does; --no-clip keeps them raw"},
    )


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in [low, high]; anything else raises naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        bounds = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise ValueError(f"{name}={value!r} must be a finite number {bounds}")
    return float(value)


def image_batch(images: Any, name: str = "images", space: str = "in [-1, 1]") -> Tensor:
    """``images`` as a non-empty, finite, floating-point (B, C, H, W) batch (a 3-D tensor is one
    image); ``space`` describes the expected values in the error messages."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, C, H, W) {space}, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must be floating point {space}, got dtype {images.dtype}; scale uint8 pixels with x / 127.5 - 1"
        )
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4 or images.numel() == 0:
        raise ValueError(f"{name} must be a non-empty batch (B, C, H, W), got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(f"{name} contain {bad} NaN or inf pixel value(s)")
    return images


def check_images(
    images: Any, shape: tuple[int, ...] | None = None, *, resize: bool = False, name: str = "images"
) -> Tensor:
    """``images`` as a float (B, C, H, W) batch in [-1, 1] fitting ``shape`` = (C, H, W).

    A 3-D tensor is one image. A wrong size or channel count raises, unless ``resize`` (then the
    images are resized bilinearly with antialiasing, and RGB <-> grayscale converted)."""
    images = image_batch(images, name)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1 - _RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ValueError(
            f"{name} have values in [{lo:.4g}, {hi:.4g}]; expected model space [-1, 1] "
            "(scale uint8 pixels with x / 127.5 - 1)"
        )
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
            raise ValueError(
                f"{name} are {h}x{w} but the model works at {want_h}x{want_w}; resize them or pass resize=True"
            )
        images = F.interpolate(
            images, size=(want_h, want_w), mode="bilinear", align_corners=False, antialias=True
        ).clamp(-1, 1)
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
        raise ValueError(
            f"mask has shape {tuple(mask.shape)}; expected (H, W), (B, H, W) or (B, 1, H, W) with B = 1 or {b}"
        )
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask must hold only 0 (known pixel) and 1 (missing pixel)")
    if m.shape[-2:] != (h, w):
        if not resize:
            raise ValueError(
                f"mask is {m.shape[-2]}x{m.shape[-1]} but the images are {h}x{w}; pass resize=True to resize it"
            )
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
    """Model time of each strength (a fraction of the schedule, :func:`diffcore.tasks.levels.fraction_to_time`):
    ``strength * (T - 1)`` on a discrete schedule; the sigma at that fraction of the Karras ramp
    from sigma_min to sigma_max on an EDM schedule; ``shift(strength) * T`` on a flow schedule."""
    return fraction_to_time(schedule, strength)


def check_sampler(sampler: str | None) -> str | None:
    """``sampler`` (None: the model's) when it is a registered sampler name."""
    if sampler is not None:
        from diffcore.plugins import available

        known = available("samplers")
        if sampler not in known:
            raise ValueError(f"sampler={sampler!r} is not registered; known samplers: {', '.join(known)}")
    return sampler


def check_suffix(name: str, path: str | Path | None, allowed: tuple[str, ...]) -> None:
    """Raise unless ``path`` (None passes) ends in one of ``allowed`` (case-insensitive)."""
    if path is not None and Path(path).suffix.lower() not in allowed:
        raise ValueError(f"{name}={str(path)!r}: expected a path ending in {' or '.join(allowed)}")

"""Paired (Palette-style) translation (Saharia et al. 2022) with a model trained on a task condition.

A model trained with ``diffcore.train(..., task_condition=...)`` sees the degraded source (a
low-resolution image, or an image and its mask) as extra input channels at every step;
:func:`translate` samples it from pure noise, optionally with classifier-free guidance on the
source. Images are (B, C, H, W) in [-1, 1]; masks are 1 where a pixel is missing. The
``translate`` task (:mod:`diffcore.tasks.img2img`) runs it on files with ``--mode paired``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.ops.philox import INIT_NOISE_OFFSET
from diffcore.pipeline import Pipeline
from diffcore.tasks.inputs import check_images, check_mask

__all__ = ["translate"]


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

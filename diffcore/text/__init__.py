"""Text-to-image: caption sets, text encoders, the ``text_unet`` model and prompt-conditioned sampling.

    pipe = diffcore.train(dataset="digits", model="text_unet", captions="digits", steps=3000, out="runs/text2image")
    x = generate_from_prompts(pipe, ["a handwritten seven", "the number 2"], n=8, guidance_scale=3.0)

:func:`generate_from_prompts` samples through :func:`diffcore.sample`, i.e. the sampler registry
and the fused ops; classifier-free guidance batches each prompt with the null prompt ``""``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffcore.cli import UsageError
from diffcore.text.captions import CaptionSet, caption_set
from diffcore.text.encoders import TextEncoderUnavailable, check_prompts

if TYPE_CHECKING:
    from diffcore.pipeline import Pipeline

__all__ = ["CaptionSet", "PromptError", "TextEncoderUnavailable", "accepts_text", "caption_set",
           "generate_from_prompts"]


class PromptError(UsageError, ValueError):
    """Bad text-to-image input: a ValueError for Python callers, one ``diffcore: error:`` line on the CLI."""


def accepts_text(model: Any) -> bool:
    """Whether ``model`` takes ``cond={"text": [...]}`` (it sets ``accepts_text = True``)."""
    return bool(getattr(model, "accepts_text", False))


def _check_number(name: str, value: Any, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        bounds = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise PromptError(f"{name}={value!r}: expected a finite number {bounds}")
    return float(value)


def generate_from_prompts(
    pipe: Pipeline,
    prompts: Sequence[str] | str,
    *,
    n: int = 1,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    **sample_kwargs: Any,
) -> Tensor:
    """``n`` samples per prompt, prompt-major: (len(prompts) * n, *sample_shape), images in [-1, 1].

    ``guidance_scale`` w: None or 1 = the conditional model alone, 0 = unconditional, w > 1
    extrapolates away from the null prompt (``uncond + w * (cond - uncond)``); ``guidance_rescale``
    phi in [0, 1] (Lin et al. 2023) needs a scale. ``""`` is the null prompt. Same inputs and
    ``seed`` give the same samples.
    """
    try:
        prompts = check_prompts(prompts)
    except ValueError as exc:
        raise PromptError(str(exc)) from None
    if not prompts:
        raise PromptError("prompts is empty: give at least one prompt")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PromptError(f"n={n!r}: expected an integer >= 1 samples per prompt")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PromptError(f"batch_size={batch_size!r}: expected an integer >= 1")
    if not accepts_text(pipe.model):
        name = pipe.run.get("model", {}).get("name", type(pipe.model).__name__)
        raise PromptError(f"this model ({name!r}) was trained without text conditioning and cannot follow prompts; "
                          "train one with --model text_unet --captions digits")
    rescale = _check_number("guidance_rescale", guidance_rescale, 0.0, 1.0)
    if guidance_scale is not None:
        guidance_scale = _check_number("guidance_scale", guidance_scale, 0.0)
    elif rescale:
        raise PromptError(f"guidance_rescale={rescale} needs a guidance_scale")
    # w = 1 is the conditional model alone (rescaling it is the identity): skip the null branch.
    guided = guidance_scale is not None and guidance_scale != 1.0

    everything = [p for p in prompts for _ in range(n)]
    shape = pipe.sample_shape
    g = torch.Generator().manual_seed(int(seed))
    outs = []
    for start in range(0, len(everything), batch_size):
        chunk = everything[start : start + batch_size]
        x_T = torch.randn((len(chunk), *shape), generator=g).to(pipe.device)
        batch_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        outs.append(
            pipe_sample(pipe, x_T, chunk, guidance_scale if guided else None, rescale if guided else 0.0,
                        sampler, steps, batch_seed, **sample_kwargs)
        )
    return torch.cat(outs)


@torch.no_grad()
def pipe_sample(
    pipe: Pipeline,
    x_T: Tensor,
    prompts: list[str],
    guidance_scale: float | None,
    guidance_rescale: float,
    sampler: str | None,
    steps: int | None,
    seed: int,
    **sample_kwargs: Any,
) -> Tensor:
    """One batch: :func:`diffcore.sample` with ``cond={"text": prompts}`` (and the null prompt as uncond)."""
    from diffcore.sampling import sample

    uncond = {"text": [""] * len(prompts)} if guidance_scale is not None else None
    return sample(
        pipe._model_fn,
        x_T,
        sampler=sampler or pipe.sampler,
        steps=steps or pipe.steps,
        schedule=pipe.schedule,
        prediction=pipe.param,
        cond={"text": prompts},
        uncond=uncond,
        guidance_scale=guidance_scale,
        guidance_rescale=guidance_rescale,
        seed=seed,
        **sample_kwargs,
    )

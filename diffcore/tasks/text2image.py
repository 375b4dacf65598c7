"""Text-to-image: prompt-conditioned sampling of a ``text_unet`` model.

    pipe = diffcore.train(dataset="digits", model="text_unet", captions="digits", steps=3000, out="runs/text2image")
    x = generate_from_prompts(pipe, ["a handwritten seven", "the number 2"], n=8, guidance_scale=3.0)

:func:`generate_from_prompts` samples through :meth:`diffcore.pipeline.Pipeline.generate` (the
sampler registry and the fused ops); classifier-free guidance batches each prompt with the null
prompt ``""``. The ``text2image`` task (:class:`Text2ImageTask`) writes one grid row per prompt.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import Tensor

from diffcore import io
from diffcore.io.progress import progress_bar, shown, step_callback
from diffcore.pipeline import Pipeline
from diffcore.sampling import resolve_sampler
from diffcore.tasks import TaskWarning, load_pipeline
from diffcore.tasks.generation import check_output_size, png_info
from diffcore.tasks.inputs import (
    MAX_BATCH,
    MAX_SEED,
    MAX_STEPS,
    check_guidance,
    check_int,
    check_number,
    check_sampler,
    check_suffix,
    clip_field,
    device_field,
    quiet_field,
)
from diffcore.text.encoders import check_prompts

__all__ = [
    "DEFAULT_CHECKPOINT",
    "Text2ImageParams",
    "Text2ImageTask",
    "generate_from_prompts",
    "split_prompts",
    "unknown_words",
]

PROMPT_SEPARATOR = "|"
DEFAULT_CHECKPOINT = "runs/text2image"
DEFAULT_GUIDANCE = 3.0  # a diffcore text model's default classifier-free guidance scale


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
    prompts = check_prompts(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    check_int("n", n)
    check_int("batch_size", batch_size)
    rescale = check_number("guidance_rescale", guidance_rescale, 0.0, 1.0)
    if guidance_scale is not None:
        guidance_scale = check_number("guidance_scale", guidance_scale, 0.0)
    elif rescale:
        raise ValueError(f"guidance_rescale={rescale} needs a guidance_scale")
    # w = 1 is the conditional model alone (rescaling it is the identity): skip the null branch,
    # except for CFG++, which renoises with the null branch at any scale.
    cfg_pp = getattr(resolve_sampler(sampler or pipe.sampler), "uses_uncond", False)
    guided = guidance_scale is not None and (guidance_scale != 1.0 or cfg_pp)
    everything = [p for p in prompts for _ in range(n)]
    return pipe.generate(
        len(everything),
        prompts=everything,
        guidance_scale=guidance_scale if guided else None,
        guidance_rescale=rescale if guided else 0.0,
        sampler=sampler,
        steps=steps,
        seed=int(seed),
        batch_size=batch_size,
        **sample_kwargs,
    )


def split_prompts(prompts: Any) -> tuple[str, ...]:
    """A list of prompts as given, or one string of prompts separated by ``|``; never empty."""
    if isinstance(prompts, str):
        items = [p.strip() for p in prompts.split(PROMPT_SEPARATOR)] if prompts.strip() else []
    elif isinstance(prompts, (list, tuple)):
        items = list(prompts)
    else:
        raise ValueError(f"prompts={prompts!r}: expected a list of strings or one string separated by '|'")
    if not items:
        raise ValueError("prompts is empty: give at least one prompt")
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise ValueError(f"prompts must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
    return tuple(items)


def unknown_words(pipe: Pipeline, prompts: Sequence[str]) -> dict[str, list[str]]:
    """Per prompt, the words the model's encoder does not know (encoders with a fixed vocabulary)."""
    encoder = getattr(pipe.model, "text_encoder", None)
    check = getattr(encoder, "unknown_words", None)
    if check is None:
        return {}
    return {p: check(p) for p in prompts if check(p)}


@dataclass
class Text2ImageParams:
    """Parameters of the ``text2image`` task (each is a ``--option`` of ``diffcore run text2image``;
    ``diffcore text2image`` takes the prompts as positional arguments)."""

    prompts: str = field(
        metadata={
            "help": "prompts separated by '|' (a list in Python)",
            "positional": 'one or more prompts, e.g. "a handwritten seven"',
            "nargs": "*",
            "metavar": "PROMPT",
        }
    )
    checkpoint: str = field(
        default=DEFAULT_CHECKPOINT, metadata={"help": "run folder or checkpoint.safetensors of a text_unet model"}
    )
    pipeline: str | None = field(
        default=None,
        metadata={"metavar": "DIR", "help": "a diffusers SD / SDXL / SD3 / Flux folder (instead of --checkpoint)"},
    )
    n: int = field(default=8, metadata={"help": "samples per prompt"})
    guidance_scale: float | None = field(
        default=None,
        metadata={
            "help": "classifier-free guidance scale w >= 0 (0: unconditional, 1: no guidance; default 3 for a "
            "diffcore text model, the pipeline's own with --pipeline: SD 7.5, SD3 7, Flux 1)"
        },
    )
    negative_prompt: str | None = field(default=None, metadata={"help": "with --pipeline: what to steer away from"})
    height: int | None = field(default=None, metadata={"help": "with --pipeline: image height (default: the model's)"})
    width: int | None = field(default=None, metadata={"help": "with --pipeline: image width (default: the model's)"})
    guidance_rescale: float = field(default=0.0, metadata={"help": "guidance rescale phi in [0, 1] (Lin et al. 2023)"})
    sampler: str | None = field(
        default=None, metadata={"help": "sampler name (diffcore list samplers; default: the model's)"}
    )
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial noise and the sampler noise"})
    batch_size: int = field(default=256, metadata={"help": "samples per model batch"})
    out: str = field(default="text2image.png", metadata={"help": ".png grid (one row per prompt) or .npz path"})
    out_dir: str | None = field(
        default=None, metadata={"metavar": "DIR", "help": "also write one PNG per sample into this folder"}
    )
    clip: bool = clip_field()
    device: str = device_field()
    quiet: bool = quiet_field()
    prompt_list: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.prompt_list = split_prompts(self.prompts)
        check_int("n", self.n)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        check_int("seed", self.seed, 0, MAX_SEED)
        if self.steps is not None:
            check_int("steps", self.steps, 1, MAX_STEPS)
        check_guidance("guidance_scale", self.guidance_scale)
        check_number("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        check_suffix("out", self.out, (".png", ".npz"))
        check_sampler(self.sampler)
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 8, 16384)
        if self.pipeline is None:
            for name in ("negative_prompt", "height", "width"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}={getattr(self, name)!r} needs --pipeline (a diffusers folder)")


class Text2ImageTask:
    """Generate images from text prompts with a text_unet checkpoint and classifier-free guidance."""

    name = "text2image"
    Params = Text2ImageParams

    def run(self, params: Text2ImageParams) -> dict[str, Any]:
        if params.pipeline is not None:
            from diffcore.tasks.latent import run_text2image

            return run_text2image(params)
        if params.guidance_scale is None:
            params = replace(params, guidance_scale=DEFAULT_GUIDANCE)
        if params.checkpoint == DEFAULT_CHECKPOINT and not Path(params.checkpoint).exists():
            raise ValueError(
                f"no checkpoint at {params.checkpoint}: pass --checkpoint, or train a text model there "
                f"with `diffcore train --model text_unet --captions digits --out {params.checkpoint}`"
            )
        pipe = load_pipeline(params.checkpoint, params.device)
        check_output_size(params.n * len(params.prompt_list), pipe.sample_shape, "n x prompts")
        io.check_writable(params.out)
        start = time.perf_counter()
        total = math.ceil(len(params.prompt_list) * params.n / params.batch_size) * (params.steps or pipe.steps)
        with progress_bar(total, "text2image", shown(params.quiet)) as bar:
            x = generate_from_prompts(
                pipe,
                list(params.prompt_list),
                n=params.n,
                guidance_scale=params.guidance_scale,
                guidance_rescale=params.guidance_rescale,
                sampler=params.sampler,
                steps=params.steps,
                seed=params.seed,
                batch_size=params.batch_size,
                callback=step_callback(bar),
            )
        io.check_finite(x, "the samples")
        if params.clip and x.dim() == 4:
            x = x.clamp(-1, 1)
        seconds = time.perf_counter() - start
        result: dict[str, Any] = {
            "out": self._write(pipe, x, params),
            **({"out_dir": self._write_each(pipe, x, params)} if params.out_dir is not None else {}),
            "prompts": list(params.prompt_list),
            "n": params.n,
            "shape": list(x.shape[1:]),
            "guidance_scale": params.guidance_scale,
            "guidance_rescale": params.guidance_rescale,
            "sampler": params.sampler or pipe.sampler,
            "steps": params.steps or pipe.steps,
            "seed": params.seed,
            "encoder": pipe.run.get("model", {}).get("config", {}).get("encoder", {}).get("name"),
            "seconds": round(seconds, 4),
        }
        unknown = unknown_words(pipe, params.prompt_list)
        for prompt, words in unknown.items():
            warnings.warn(f"the text encoder does not know {words} in {prompt!r}", TaskWarning, stacklevel=2)
        if unknown:
            result["unknown_words"] = unknown
        return result

    @staticmethod
    def _write(pipe: Pipeline, x: Tensor, params: Text2ImageParams) -> str:
        """The grid (one row of ``n`` per prompt) or the arrays (``samples``, ``prompts``)."""
        import numpy as np

        path = Path(params.out)
        if path.suffix.lower() == ".png":
            if pipe.dataset.get("kind", "image") != "image" or x.dim() != 4:
                raise ValueError(f"out={params.out!r}: a PNG grid needs an image model; use .npz")
            info = png_info(pipe, params.checkpoint, params, prompt=" | ".join(params.prompt_list))
            io.save_grid(x.cpu(), path, nrow=params.n, info=info)
        else:
            prompts = np.array([p for p in params.prompt_list for _ in range(params.n)])
            io.write_npz(path, samples=x.detach().float().cpu().numpy(), prompts=prompts)
        return str(path)

    @staticmethod
    def _write_each(pipe: Pipeline, x: Tensor, params: Text2ImageParams) -> str:
        """One PNG per sample, each carrying its own prompt."""
        from diffcore.io.results import write_each

        folder = Path(str(params.out_dir))
        if pipe.dataset.get("kind", "image") != "image" or x.dim() != 4:
            raise ValueError(f"out_dir={params.out_dir!r}: one PNG per sample needs an image model")
        every = [p for p in params.prompt_list for _ in range(params.n)]
        write_each(x, folder, [png_info(pipe, params.checkpoint, params, prompt=p) for p in every])
        return str(folder)

"""Built-in plugin: the ``text2image`` task and the ``diffcore text2image`` command.

``diffcore text2image "a handwritten seven" "the number 2" --checkpoint runs/text2image --n 8
--guidance-scale 3 --out grid.png`` samples ``n`` images per prompt from a ``text_unet``
checkpoint with classifier-free guidance (optional rescale) and writes one grid row per prompt;
``diffcore run text2image --prompts "a handwritten seven|the number 2" ...`` is the same task.
The sampling is :func:`diffcore.text.generate_from_prompts` (the sampler registry and the fused
ops); this module checks input and writes files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffcore.plugins import hookimpl
from diffcore.text import PromptError, TextEncoderUnavailable, generate_from_prompts

if TYPE_CHECKING:
    from torch import Tensor

    from diffcore.pipeline import Pipeline

__all__ = ["Text2ImageParams", "Text2ImageTask", "split_prompts"]

PROMPT_SEPARATOR = "|"
DEFAULT_CHECKPOINT = "runs/text2image"


def split_prompts(prompts: Any) -> tuple[str, ...]:
    """A list of prompts as given, or one string of prompts separated by ``|``; never empty."""
    if isinstance(prompts, str):
        items = [p.strip() for p in prompts.split(PROMPT_SEPARATOR)] if prompts.strip() else []
    elif isinstance(prompts, (list, tuple)):
        items = list(prompts)
    else:
        raise PromptError(f"prompts={prompts!r}: expected a list of strings or one string separated by '|'")
    if not items:
        raise PromptError("prompts is empty: give at least one prompt")
    bad = [p for p in items if not isinstance(p, str)]
    if bad:
        raise PromptError(f"prompts must be strings; got {type(bad[0]).__name__} {bad[0]!r}")
    return tuple(items)


@dataclass
class Text2ImageParams:
    """Parameters of the ``text2image`` task (each is a ``--option`` of ``diffcore run text2image``)."""

    prompts: str = field(metadata={"help": "prompts separated by '|' (a list in Python)"})
    checkpoint: str = field(default=DEFAULT_CHECKPOINT,
                            metadata={"help": "run folder or checkpoint.safetensors of a text_unet model"})
    n: int = field(default=8, metadata={"help": "samples per prompt"})
    guidance_scale: float | None = field(
        default=3.0, metadata={"help": "classifier-free guidance scale w >= 0 (0: unconditional, 1: no guidance)"})
    guidance_rescale: float = field(default=0.0, metadata={"help": "guidance rescale phi in [0, 1] (Lin et al. 2023)"})
    sampler: str | None = field(default=None, metadata={"help": "sampler name (default: the model's)"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's)"})
    seed: int = field(default=0, metadata={"help": "seed of the initial noise and the sampler noise"})
    batch_size: int = field(default=256, metadata={"help": "samples per model batch"})
    out: str = field(default="text2image.png", metadata={"help": ".png grid (one row per prompt) or .npz path"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N or auto"})
    prompt_list: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.prompt_list = split_prompts(self.prompts)
        for name, low in (("n", 1), ("batch_size", 1), ("seed", 0), ("steps", 1)):
            value = getattr(self, name)
            if name == "steps" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise PromptError(f"{name}={value!r}: expected an integer >= {low}")
        if Path(self.out).suffix.lower() not in (".png", ".npz"):
            raise PromptError(f"out={self.out!r}: expected a path ending in .png or .npz")
        if self.sampler is not None:
            from diffcore.plugins import available

            if self.sampler not in available("samplers"):
                raise PromptError(f"sampler={self.sampler!r} is not registered; known: {', '.join(available('samplers'))}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise PromptError(f"device={name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PromptError(f"device={name!r}: CUDA is not available here")
    return device


def load_text_pipeline(checkpoint: str, device: str = "cpu") -> Pipeline:
    """Load a checkpoint; a missing file, bad weights or a missing optional encoder become PromptError."""
    from diffcore.pipeline import Pipeline

    if checkpoint == DEFAULT_CHECKPOINT and not Path(checkpoint).exists():
        raise PromptError(f"no checkpoint at {checkpoint}: pass --checkpoint, or train a text model there with "
                          f"`diffcore train --model text_unet --captions digits --out {checkpoint}`")
    try:
        return Pipeline.load(checkpoint, device=_device(device))
    except PromptError:
        raise
    except TextEncoderUnavailable as exc:
        raise PromptError(f"checkpoint={checkpoint!r}: {exc}") from exc
    except (ValueError, KeyError, OSError) as exc:  # CheckpointError is a ValueError
        raise PromptError(f"checkpoint={checkpoint!r}: {exc}") from exc


def unknown_words(pipe: Pipeline, prompts: tuple[str, ...]) -> dict[str, list[str]]:
    """Per prompt, the words the model's encoder does not know (encoders with a fixed vocabulary)."""
    encoder = getattr(pipe.model, "text_encoder", None)
    check = getattr(encoder, "unknown_words", None)
    if check is None:
        return {}
    return {p: check(p) for p in prompts if check(p)}


def write_output(pipe: Pipeline, x: Tensor, params: Text2ImageParams) -> str:
    """Write the grid (one row of ``n`` per prompt) or the arrays; return the path."""
    path = Path(params.out)
    if path.suffix.lower() == ".png":
        if pipe.dataset.get("kind", "image") != "image" or x.dim() != 4:
            raise PromptError(f"out={params.out!r}: a PNG grid needs an image model; use .npz")
        from diffcore.images import save_grid

        save_grid(x.cpu(), path, nrow=params.n)
    else:
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        prompts = np.array([p for p in params.prompt_list for _ in range(params.n)])
        np.savez(path, samples=x.detach().float().cpu().numpy(), prompts=prompts)
    return str(path)


class Text2ImageTask:
    """Generate images from text prompts with a text_unet checkpoint and classifier-free guidance."""

    name = "text2image"
    Params = Text2ImageParams

    def run(self, params: Text2ImageParams) -> dict[str, Any]:
        pipe = load_text_pipeline(params.checkpoint, params.device)
        start = time.perf_counter()
        x = generate_from_prompts(
            pipe, list(params.prompt_list), n=params.n, guidance_scale=params.guidance_scale,
            guidance_rescale=params.guidance_rescale, sampler=params.sampler, steps=params.steps,
            seed=params.seed, batch_size=params.batch_size,
        )
        seconds = time.perf_counter() - start
        result: dict[str, Any] = {
            "out": write_output(pipe, x, params),
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
        if unknown:
            result["unknown_words"] = unknown
        return result


# --------------------------------------------------------------------------- command line


def _cmd_text2image(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in fields(Text2ImageParams) if f.init}
    params = Text2ImageParams(**values)  # raises PromptError (a UsageError) on bad input
    result = Text2ImageTask().run(params)
    for prompt, words in result.get("unknown_words", {}).items():
        print(f"diffcore: warning: the text encoder does not know {words} in {prompt!r}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


@hookimpl
def register_tasks(register: Any) -> None:
    register(Text2ImageTask.name, Text2ImageTask())


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("text2image", "generate images from text prompts with a text_unet checkpoint")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="one or more prompts, e.g. \"a handwritten seven\"")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="run folder or checkpoint.safetensors of a text_unet model (default: %(default)s)")
    p.add_argument("--n", type=int, default=8, help="samples per prompt (default: %(default)s)")
    p.add_argument("--guidance-scale", type=float, default=3.0,
                   help="classifier-free guidance scale w >= 0; 0 unconditional, 1 no guidance (default: %(default)s)")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale phi in [0, 1]")
    p.add_argument("--sampler", default=None, help="sampler name (diffcore list samplers); default: the model's")
    p.add_argument("--steps", type=int, default=None, help="sampler steps; default: the model's")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (default: %(default)s)")
    p.add_argument("--out", default="text2image.png", help=".png grid (a row per prompt) or .npz (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.set_defaults(func=_cmd_text2image)

"""Built-in plugin: the ``generate`` task and the ``diffcore generate`` command.

Samples a trained checkpoint unconditionally or class-conditionally (one label, one per sample,
or ``all`` = balanced over the classes), with optional classifier-free guidance and guidance
rescale, through any registered sampler; writes a PNG grid and/or an ``.npz`` of arrays and
returns a JSON-able summary (paths, n, sampler, steps, seconds, images/s).

``diffcore generate --checkpoint runs/digits --class-label all --guidance-scale 3 --out grid.png``
is the same as ``diffcore run generate --checkpoint runs/digits --class-label all ...``.
The sampling itself is :meth:`diffcore.pipeline.Pipeline.generate`, i.e. the sampler registry
and the fused ops; this module only checks input, resolves labels and writes files.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffcore.cli import UsageError
from diffcore.plugins import hookimpl

if TYPE_CHECKING:
    from torch import Tensor

    from diffcore.pipeline import Pipeline

__all__ = ["GenerateError", "GenerateParams", "GenerateTask", "generate_samples", "num_classes",
           "parse_class_labels", "resolve_labels"]


SPACINGS = ("leading", "linspace", "trailing")


class GenerateError(UsageError, ValueError):
    """Bad generation input: a ValueError for Python callers, one ``diffcore: error:`` line on the CLI."""


def parse_class_labels(spec: Any) -> list[int] | str | None:
    """``None``, ``"all"``, an int, ``"3"``, ``"1,2,3"`` or a list of ints -> None, "all" or a list.

    Only the form is checked here; the range is checked against the model in :func:`generate_samples`.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return "all"
        parts = [p.strip() for p in text.replace(",", " ").split()]
        if not parts:
            raise GenerateError(f"class_label={spec!r}: expected an integer, a comma-separated list or 'all'")
        spec = parts
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise GenerateError("class_label=[]: give at least one label, 'all', or none for unconditional samples")
    labels = []
    for item in items:
        if isinstance(item, str) and item.strip().lower() == "all":
            if len(items) > 1:
                raise GenerateError(f"class_label={spec!r}: 'all' cannot be combined with other labels")
            return "all"
        if isinstance(item, bool):
            raise GenerateError(f"class_label={item!r}: expected an integer class label")
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise GenerateError(f"class_label={item!r}: expected an integer class label or 'all'") from None
        if isinstance(item, float) and item != value:
            raise GenerateError(f"class_label={item!r}: expected an integer class label")
        if value < 0:
            raise GenerateError(f"class_label={value}: class labels are >= 0")
        labels.append(value)
    return labels


def _check_suffix(name: str, path: str | None, allowed: tuple[str, ...]) -> None:
    if path is not None and Path(path).suffix.lower() not in allowed:
        raise GenerateError(f"{name}={path!r}: expected a path ending in {' or '.join(allowed)}")


def _check_sampler(sampler: str | None) -> None:
    if sampler is None:
        return
    from diffcore.plugins import available

    known = available("samplers")
    if sampler not in known:
        raise GenerateError(f"sampler={sampler!r} is not registered; known samplers: {', '.join(known)}")


@dataclass
class GenerateParams:
    """Parameters of the ``generate`` task (each is a ``--option`` of ``diffcore run generate``)."""

    checkpoint: str = field(metadata={"help": "run folder or checkpoint.safetensors"})
    n: int = field(default=64, metadata={"help": "number of samples"})
    sampler: str | None = field(default=None, metadata={"help": "sampler name (default: the model's)"})
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's)"})
    class_label: str | None = field(
        default=None,
        metadata={"help": "label for all samples, comma-separated labels (one per sample), 'all' "
                          "(balanced over classes) or none (unconditional)"},
    )
    guidance_scale: float | None = field(
        default=None, metadata={"help": "classifier-free guidance scale w >= 0 (0: unconditional, 1: conditional)"}
    )
    guidance_rescale: float = field(default=0.0, metadata={"help": "guidance rescale phi in [0, 1] (Lin et al. 2023)"})
    timestep_spacing: str | None = field(
        default=None, metadata={"help": "leading, linspace or trailing (diffusers' meaning; default: leading)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the initial noise and the sampler noise"})
    batch_size: int = field(default=256, metadata={"help": "samples per model batch"})
    out: str | None = field(default=None, metadata={"help": ".png grid or .npz path (default samples.png "
                                                            "unless --npz is given)"})
    npz: str | None = field(default=None, metadata={"help": "also write the arrays to this .npz"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ... or auto"})

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, low: int, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GenerateError(f"{name}={value!r} must be an integer >= {low}")

        whole("n", self.n, 1)
        whole("steps", self.steps, 1, optional=True)
        whole("batch_size", self.batch_size, 1)
        whole("seed", self.seed, 0)
        g = self.guidance_scale
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0):
            raise GenerateError(f"guidance_scale={g!r} must be a finite number >= 0")
        r = self.guidance_rescale
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise GenerateError(f"guidance_rescale={r!r} must be a number in [0, 1]")
        if r and g is None:
            raise GenerateError(f"guidance_rescale={r} needs a guidance_scale")
        labels = parse_class_labels(self.class_label)
        if isinstance(labels, list) and len(labels) not in (1, self.n):
            raise GenerateError(f"class_label has {len(labels)} labels for n={self.n}: give one label, n labels or 'all'")
        _check_sampler(self.sampler)
        if self.timestep_spacing is not None and self.timestep_spacing not in SPACINGS:
            raise GenerateError(f"timestep_spacing={self.timestep_spacing!r}: expected one of {', '.join(SPACINGS)}")
        if self.out is None and self.npz is None:
            self.out = "samples.png"
        _check_suffix("out", self.out, (".png", ".npz"))
        _check_suffix("npz", self.npz, (".npz",))
        try:
            torch.device("cpu" if self.device == "auto" else self.device)
        except (RuntimeError, TypeError) as exc:
            raise GenerateError(f"device={self.device!r}: {exc}") from None


def num_classes(pipe: Pipeline) -> int:
    """Classes the model is conditioned on: the model's own count when it declares one (a model
    trained unconditionally on labelled data has 0), else the training data's."""
    own = getattr(pipe.model, "num_classes", None)
    return int(own) if isinstance(own, int) else pipe.num_classes


def resolve_labels(pipe: Pipeline, spec: Any, n: int) -> Tensor | None:
    """Class labels (n,) int64 for ``spec`` (see :func:`parse_class_labels`) checked against the model."""
    labels = parse_class_labels(spec)
    if labels is None:
        return None
    k = num_classes(pipe)
    if k == 0:
        raise GenerateError(f"class_label={spec!r}: this model was trained without classes (unconditional)")
    if labels == "all":
        return torch.arange(n, dtype=torch.long) % k
    bad = [v for v in labels if v >= k]
    if bad:
        raise GenerateError(f"class_label={bad[0]} is out of range: this model has classes 0..{k - 1}")
    out = torch.tensor(labels, dtype=torch.long)
    return out.expand(n).clone() if out.numel() == 1 else out


def generate_samples(pipe: Pipeline, params: GenerateParams) -> tuple[Tensor, Tensor | None]:
    """Sample ``params.n`` items (model space, images in [-1, 1]) and their class labels (or None).

    Checks the parts of ``params`` that depend on the model (label range, a conditional model for
    labels and guidance) and raises :class:`GenerateError` naming the bad value.
    """
    labels = resolve_labels(pipe, params.class_label, params.n)
    guidance = params.guidance_scale
    if guidance is not None and num_classes(pipe) == 0:
        raise GenerateError(f"guidance_scale={guidance}: this model was trained without classes (unconditional)")
    if guidance is not None and labels is None:
        raise GenerateError(f"guidance_scale={guidance} needs class labels (class_label N or all) to guide towards")
    rescale = params.guidance_rescale
    given = labels
    # u + w (c - u) needs one model pass instead of two at w = 1 (= c; the rescale factor is 1)
    # and at w = 0 without rescale (= u: the null label, which is what no labels means).
    if guidance == 1.0:
        guidance, rescale = None, 0.0
    elif guidance == 0.0 and rescale == 0.0:
        guidance, given = None, None
    x = pipe.generate(
        params.n,
        sampler=params.sampler,
        steps=params.steps,
        class_labels=given,
        guidance_scale=guidance,
        guidance_rescale=rescale,
        seed=params.seed,
        batch_size=params.batch_size,
        **({"timestep_spacing": params.timestep_spacing} if params.timestep_spacing else {}),
    )
    return x, labels


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GenerateError(f"device={name!r}: CUDA is not available here")
    return device


def load_pipeline(checkpoint: str, device: str = "cpu") -> Pipeline:
    """Load a run folder / checkpoint file, turning a missing or bad file into a GenerateError."""
    from diffcore.pipeline import Pipeline

    try:
        return Pipeline.load(checkpoint, device=_device(device))
    except (ValueError, KeyError, OSError) as exc:  # CheckpointError is a ValueError
        if isinstance(exc, GenerateError):
            raise
        raise GenerateError(f"checkpoint={checkpoint!r}: {exc}") from exc


def _makes_images(pipe: Pipeline) -> bool:
    return pipe.dataset.get("kind", "image") == "image" and len(pipe.dataset.get("shape", (1, 1, 1))) == 3


def check_outputs(pipe: Pipeline, params: GenerateParams) -> None:
    """Refuse a PNG grid for a model that does not make images, before any sampling."""
    if not _makes_images(pipe):
        for name in ("out", "npz"):
            target = getattr(params, name)
            if target is not None and Path(target).suffix.lower() == ".png":
                raise GenerateError(f"{name}={target!r}: a PNG grid needs an image model; this one makes "
                                    f"{pipe.dataset.get('kind', '?')} samples of shape "
                                    f"{tuple(pipe.dataset.get('shape', ()))}, use .npz")


def write_outputs(pipe: Pipeline, x: Tensor, labels: Tensor | None, params: GenerateParams) -> dict[str, str]:
    """Write the PNG grid and/or the npz; returns ``{"png": path, "npz": path}`` for those written."""
    import numpy as np

    is_image = _makes_images(pipe)
    written: dict[str, str] = {}
    for target in (params.out, params.npz):
        if target is None:
            continue
        path = Path(target)
        if path.suffix.lower() == ".png":
            from diffcore.images import save_grid

            k = num_classes(pipe)
            nrow = min(k, x.shape[0]) if parse_class_labels(params.class_label) == "all" else None
            save_grid(x.cpu(), path, nrow=nrow)
            written["png"] = str(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays = {"samples": x.detach().float().cpu().numpy()}
            arrays["labels"] = (labels if labels is not None else torch.full((x.shape[0],), -1)).numpy()
            if is_image:
                from diffcore.images import to_uint8

                arrays["images"] = to_uint8(x)
            np.savez(path, **arrays)
            written["npz"] = str(path)
    return written


class GenerateTask:
    """Generate samples from a trained checkpoint: unconditional or class-conditional, with guidance."""

    name = "generate"
    Params = GenerateParams

    def run(self, params: GenerateParams) -> dict[str, Any]:
        pipe = load_pipeline(params.checkpoint, params.device)
        check_outputs(pipe, params)
        start = time.perf_counter()
        x, labels = generate_samples(pipe, params)
        seconds = time.perf_counter() - start
        written = write_outputs(pipe, x, labels, params)
        result: dict[str, Any] = {
            **written,
            "n": params.n,
            "shape": list(x.shape[1:]),
            "sampler": params.sampler or pipe.sampler,
            "steps": params.steps or pipe.steps,
            "class_label": params.class_label,
            "guidance_scale": params.guidance_scale,
            "guidance_rescale": params.guidance_rescale,
            "timestep_spacing": params.timestep_spacing or "leading",
            "seed": params.seed,
            "device": str(pipe.device),
            "seconds": round(seconds, 4),
            "images_per_s": round(params.n / max(seconds, 1e-9), 2),
        }
        if labels is not None:
            values, counts = labels.unique(return_counts=True)
            result["label_counts"] = {str(k): v for k, v in zip(values.tolist(), counts.tolist())}
        return result


# --------------------------------------------------------------------------- command line


def _cmd_generate(args: argparse.Namespace) -> int:
    import json

    values = {f.name: getattr(args, f.name) for f in fields(GenerateParams)}
    if values["class_label"] is not None:
        values["class_label"] = ",".join(values["class_label"])
    params = GenerateParams(**values)  # raises GenerateError (a UsageError) on bad input
    print(json.dumps(GenerateTask().run(params), indent=2))
    return 0


@hookimpl
def register_tasks(register: Any) -> None:
    register("generate", GenerateTask())


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("generate", "sample a trained checkpoint into a PNG grid and/or an .npz of arrays")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.safetensors")
    p.add_argument("--n", type=int, default=64, help="number of samples (default: %(default)s)")
    p.add_argument("--sampler", default=None, help="sampler name (diffcore list samplers); default: the model's")
    p.add_argument("--steps", type=int, default=None, help="sampler steps; default: the model's")
    p.add_argument("--class-label", nargs="+", default=None, metavar="LABEL",
                   help="one label for all samples, one per sample, or 'all' (balanced); omit for unconditional")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale w >= 0")
    p.add_argument("--guidance-rescale", type=float, default=0.0, help="guidance rescale phi in [0, 1]")
    p.add_argument("--timestep-spacing", default=None, metavar="SPACING",
                   help="leading, linspace or trailing (diffusers' meaning; default: leading)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (default: %(default)s)")
    p.add_argument("--out", default=None, help=".png grid or .npz path (default samples.png unless --npz)")
    p.add_argument("--npz", default=None, help="also write the arrays (samples, labels, images) to this .npz")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.set_defaults(func=_cmd_generate)

"""Generation: sample a trained checkpoint unconditionally or class-conditionally.

Class labels are one label, one per sample, or ``all`` (balanced over the classes), with optional
classifier-free guidance and guidance rescale, through any registered sampler. The sampling is
:meth:`diffcore.pipeline.Pipeline.generate`; :func:`generate_samples` resolves the labels and
takes one-pass shortcuts, and the ``generate`` task (:class:`GenerateTask`) writes a PNG grid
and/or an ``.npz`` and returns a JSON-able summary (paths, n, sampler, steps, seconds, images/s).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore import io
from diffcore.data.scaling import TableScaler
from diffcore.io.progress import progress_bar, shown, step_callback
from diffcore.io.results import check_finite
from diffcore.pipeline import Pipeline
from diffcore.sampling import resolve_sampler
from diffcore.tasks import check_device, load_pipeline
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

__all__ = [
    "MAX_OUTPUT_BYTES",
    "SPACINGS",
    "GenerateParams",
    "GenerateTask",
    "check_output_size",
    "check_outputs",
    "generate_samples",
    "png_info",
    "parse_class_labels",
    "resolve_labels",
]

SPACINGS = ("leading", "linspace", "trailing")
MAX_OUTPUT_BYTES = 2**32  # 4 GiB of float32 samples per call: a larger --n is refused before sampling


def parse_class_labels(spec: Any) -> list[int] | str | None:
    """``None``, ``"all"``, an int, ``"3"``, ``"1,2,3"`` or a list of ints -> None, "all" or a list.

    Only the form is checked here; the range is checked against the model in :func:`resolve_labels`.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return "all"
        parts = [p.strip() for p in text.replace(",", " ").split()]
        if not parts:
            raise ValueError(f"class_label={spec!r}: expected an integer, a comma-separated list or 'all'")
        spec = parts
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise ValueError("class_label=[]: give at least one label, 'all', or none for unconditional samples")
    if any(isinstance(item, str) and item.strip().lower() == "all" for item in items):
        if len(items) > 1:
            raise ValueError(f"class_label={spec!r}: 'all' cannot be combined with other labels")
        return "all"
    return [_label(item) for item in items]


def _label(item: Any) -> int:
    if isinstance(item, bool):
        raise ValueError(f"class_label={item!r}: expected an integer class label")
    try:
        value = int(item)
    except (TypeError, ValueError):
        raise ValueError(f"class_label={item!r}: expected an integer class label or 'all'") from None
    if isinstance(item, float) and item != value:
        raise ValueError(f"class_label={item!r}: expected an integer class label")
    if value < 0:
        raise ValueError(f"class_label={value}: class labels are >= 0")
    return value


@dataclass
class GenerateParams:
    """Parameters of the ``generate`` task (each is a ``--option`` of ``diffcore generate``)."""

    checkpoint: str = field(metadata={"help": "run folder or checkpoint.safetensors"})
    n: int = field(default=64, metadata={"help": "number of samples"})
    sampler: str | None = field(
        default=None, metadata={"help": "sampler name (diffcore list samplers; default: the model's)"}
    )
    steps: int | None = field(default=None, metadata={"help": "sampler steps (default: the model's)"})
    class_label: str | list[str] | None = field(
        default=None,
        metadata={
            "metavar": "LABEL",
            "help": "one label for all samples, one per sample (several, or comma-separated), 'all' "
            "(balanced over classes) or none (unconditional)",
        },
    )
    guidance_scale: float | None = field(
        default=None, metadata={"help": "classifier-free guidance scale w >= 0 (0: unconditional, 1: conditional)"}
    )
    guidance_rescale: float = field(default=0.0, metadata={"help": "guidance rescale phi in [0, 1] (Lin et al. 2023)"})
    timestep_spacing: str | None = field(
        default=None,
        metadata={"metavar": "SPACING", "help": "leading, linspace or trailing (diffusers' meaning; default: leading)"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the initial noise and the sampler noise"})
    batch_size: int = field(default=256, metadata={"help": "samples per model batch"})
    out: str | None = field(
        default=None, metadata={"help": ".png grid or .npz path (default samples.png unless --npz is given)"}
    )
    npz: str | None = field(
        default=None, metadata={"help": "also write the arrays (samples, labels, images) to this .npz"}
    )
    out_dir: str | None = field(
        default=None, metadata={"metavar": "DIR", "help": "also write one PNG per sample into this folder"}
    )
    clip: bool = clip_field()
    device: str = device_field()
    quiet: bool = quiet_field()

    def __post_init__(self) -> None:
        if isinstance(self.class_label, (list, tuple)):  # the command line's --class-label 1 2 3
            self.class_label = ",".join(str(v) for v in self.class_label)
        check_int("n", self.n)
        if self.steps is not None:
            check_int("steps", self.steps, 1, MAX_STEPS)
        check_int("batch_size", self.batch_size, 1, MAX_BATCH)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_guidance("guidance_scale", self.guidance_scale)
        check_number("guidance_rescale", self.guidance_rescale, 0.0, 1.0)
        if self.guidance_rescale and self.guidance_scale is None:
            raise ValueError(f"guidance_rescale={self.guidance_rescale} needs a guidance_scale")
        labels = parse_class_labels(self.class_label)
        if isinstance(labels, list) and len(labels) not in (1, self.n):
            raise ValueError(f"class_label has {len(labels)} labels for n={self.n}: give one label, n labels or 'all'")
        check_sampler(self.sampler)
        if self.timestep_spacing is not None and self.timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing={self.timestep_spacing!r}: expected one of {', '.join(SPACINGS)}")
        self.check_output()
        check_suffix("npz", self.npz, (".npz",))
        check_device(self.device)

    def check_output(self) -> None:
        """Default and check ``out`` as a file of a run in this process (``samples.png`` unless
        ``npz`` is given; .png or .npz); a wrapper that writes elsewhere (:mod:`diffcore.scale`: a
        folder of shards) overrides this."""
        if self.out is None and self.npz is None:
            self.out = "samples.png"
        check_suffix("out", self.out, (".png", ".npz"))


def resolve_labels(pipe: Pipeline, spec: Any, n: int) -> Tensor | None:
    """Class labels (n,) int64 for ``spec`` (see :func:`parse_class_labels`) checked against the model."""
    labels = parse_class_labels(spec)
    if labels is None:
        return None
    k = pipe.num_classes
    if k == 0:
        raise ValueError(f"class_label={spec!r}: this model was trained without classes (unconditional)")
    if isinstance(labels, str):  # "all"
        return torch.arange(n, dtype=torch.long) % k
    bad = [v for v in labels if v >= k]
    if bad:
        raise ValueError(f"class_label={bad[0]} is out of range: this model has classes 0..{k - 1}")
    out = torch.tensor(labels, dtype=torch.long)
    return out.expand(n).clone() if out.numel() == 1 else out


def generate_samples(pipe: Pipeline, params: GenerateParams, rows: slice | None = None) -> tuple[Tensor, Tensor | None]:
    """Sample ``params.n`` items (model space; images clipped to [-1, 1] unless ``params.clip``
    is False) and their class labels (or None), with a progress bar unless ``params.quiet``;
    ``rows``: only samples ``rows.start .. rows.stop - 1`` of them (a shard of a split run).

    Checks the parts of ``params`` that depend on the model (label range, a conditional model for
    labels and guidance) and raises ValueError naming the bad value, or when a sample is NaN/inf.
    """
    labels = resolve_labels(pipe, params.class_label, params.n)
    rows = rows or slice(0, params.n)
    labels = None if labels is None else labels[rows]
    guidance = params.guidance_scale
    if guidance is not None and pipe.num_classes == 0:
        raise ValueError(f"guidance_scale={guidance}: this model was trained without classes (unconditional)")
    if guidance is not None and labels is None:
        raise ValueError(f"guidance_scale={guidance} needs class labels (class_label N or all) to guide towards")
    rescale = params.guidance_rescale
    given = labels
    # u + w (c - u) needs one model pass instead of two at w = 1 (= c; the rescale factor is 1)
    # and at w = 0 without rescale (= u: the null label, which is what no labels means).
    # Not for CFG++, which renoises with the unconditional branch at any scale.
    cfg_pp = getattr(resolve_sampler(params.sampler or pipe.sampler), "uses_uncond", False)
    if guidance == 1.0 and not cfg_pp:
        guidance, rescale = None, 0.0
    elif guidance == 0.0 and rescale == 0.0:
        guidance, given = None, None
    spacing: dict[str, Any] = {"timestep_spacing": params.timestep_spacing} if params.timestep_spacing else {}
    count = rows.stop - rows.start
    steps = params.steps or getattr(pipe, "steps", None)
    total = math.ceil(count / params.batch_size) * steps if steps else None
    with progress_bar(total, "generate", shown(params.quiet)) as bar:
        x = pipe.generate(
            count,
            start=rows.start,
            sampler=params.sampler,
            steps=params.steps,
            class_labels=given,
            guidance_scale=guidance,
            guidance_rescale=rescale,
            seed=params.seed,
            batch_size=params.batch_size,
            callback=step_callback(bar),
            **spacing,
        )
    check_finite(x, "the samples")
    if params.clip and _makes_images(pipe):
        x = x.clamp(-1, 1)
    return x, labels


def table_rows(pipe: Pipeline, x: Tensor) -> np.ndarray | None:
    """A table model's samples (N, D) in the table's own units: the column scaling stored with
    the run inverted (:meth:`~diffcore.data.scaling.TableScaler.inverse_transform`); None for
    other models (and for table runs that stored no scaling)."""
    scaler = TableScaler.of_run(pipe.dataset)
    if scaler is None:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # checked below, with the sample named
        rows = scaler.inverse_transform(x.detach().double().cpu().reshape(x.shape[0], -1).numpy())
    if not np.isfinite(rows).all():  # a sample hundreds of log-units out in a column of a large scale
        bad = int(np.argwhere(~np.isfinite(rows))[0, 0])
        raise ValueError(f"sample {bad} lies so far out of the training rows that its table units overflow float64")
    return rows


def _makes_images(pipe: Pipeline) -> bool:
    dataset = getattr(pipe, "dataset", None) or {}
    return dataset.get("kind", "image") == "image" and len(dataset.get("shape", (1, 1, 1))) == 3


def check_output_size(n: int, shape: tuple[int, ...], what: str = "n") -> None:
    """Refuse ``n`` float32 samples of ``shape`` past :data:`MAX_OUTPUT_BYTES`, before sampling."""
    shape = tuple(int(s) for s in shape)
    size = n * math.prod(shape) * 4
    if size > MAX_OUTPUT_BYTES:
        most = max(1, MAX_OUTPUT_BYTES // (math.prod(shape) * 4))
        raise ValueError(
            f"{what}={n}: {n} samples of shape {shape} take {size / 2**30:.3g} GiB; one call makes at "
            f"most {most} (diffcore.tasks.generation.MAX_OUTPUT_BYTES): run several with different --seed"
        )


def check_outputs(pipe: Pipeline, params: GenerateParams) -> None:
    """Before any sampling: refuse PNGs for a model that does not make images, more samples than
    :data:`MAX_OUTPUT_BYTES` holds, and output paths that cannot be written."""
    check_output_size(params.n, pipe.sample_shape)
    for target in (params.out, params.npz):
        if target is not None:
            io.check_writable(target)
    if params.out_dir is not None and not _makes_images(pipe):
        raise ValueError(f"out_dir={params.out_dir!r}: one PNG per sample needs an image model")
    if not _makes_images(pipe):
        for name in ("out", "npz"):
            target = getattr(params, name)
            if target is not None and Path(target).suffix.lower() == ".png":
                raise ValueError(
                    f"{name}={target!r}: a PNG grid needs an image model; this one makes "
                    f"{pipe.dataset.get('kind', '?')} samples of shape "
                    f"{tuple(pipe.dataset.get('shape', ()))}, use .npz"
                )


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
        nrow = min(pipe.num_classes, x.shape[0]) if parse_class_labels(params.class_label) == "all" else None
        written = io.write_samples(
            x,
            labels,
            (params.out, params.npz),
            images=_makes_images(pipe),
            nrow=nrow,
            info=png_info(pipe, params.checkpoint, params),
            out_dir=params.out_dir,
            rows=table_rows(pipe, x),
        )
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


def png_info(pipe: Pipeline, checkpoint: str | Path, params: Any, **extra: Any) -> dict[str, Any]:
    """The text chunks of a generated PNG: checkpoint, sampler, steps, seed, guidance, the
    diffcore version, and ``extra`` (a prompt, class labels); None values are left out."""
    import diffcore

    info = {
        "diffcore_version": getattr(diffcore, "__version__", "?"),
        "checkpoint": str(checkpoint),
        "sampler": getattr(params, "sampler", None) or pipe.sampler,
        "steps": getattr(params, "steps", None) or pipe.steps,
        "seed": getattr(params, "seed", None),
        "guidance_scale": getattr(params, "guidance_scale", None),
        "guidance_rescale": getattr(params, "guidance_rescale", None) or None,
        "class_label": getattr(params, "class_label", None),
        **extra,
    }
    return {k: v for k, v in info.items() if v is not None}

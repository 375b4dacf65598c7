"""The tasks: generation, text-to-image, image-to-image, denoising and anomaly detection.

Each task module holds the library functions over a :class:`~diffcore.pipeline.Pipeline`
(e.g. :func:`diffcore.tasks.img2img.sdedit`), a ``Params`` dataclass whose fields (types,
defaults, ``metadata["help"]``) the command line turns into options, and a task class with
``name``, ``Params`` and ``run(params) -> dict`` that reads files, runs and writes the outputs.
The built-in plugins register those classes (``generate``, ``detect`` and ``denoise`` as the
subclasses of :mod:`diffcore.scale.tasks`, which add ``--engine ray``); they hold no task code.
The tasks import nothing from :mod:`diffcore.scale`, the plugins or the CLI.

=========================  ==========================================================
:mod:`.generation`         ``generate``: class-conditional samples with guidance
:mod:`.text2image`         ``text2image``: samples from prompts
:mod:`.img2img`            ``translate``: SDEdit, RePaint inpainting, paired translation
:mod:`.repaint`            RePaint inpainting (re-exported by :mod:`.img2img`)
:mod:`.paired`             paired (Palette) translation (re-exported by :mod:`.img2img`)
:mod:`.denoise`            ``denoise``: posterior mean or sample of a noisy image
:mod:`.anomaly`            ``detect``: reconstruction / diffusion-time scores, calibration
=========================  ==========================================================
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffcore.pipeline import Pipeline

__all__ = ["TaskWarning", "as_json", "check_device", "load_pipeline"]


class TaskWarning(UserWarning):
    """Something a task's user should know that does not stop it (e.g. words a text encoder does
    not know); the command line prints it as ``diffcore: warning: ...``."""


def as_json(params: Any) -> dict[str, Any]:
    """A Params dataclass as a JSON-able dict (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(params).items()}


def check_device(name: str) -> torch.device:
    """A device name (``auto``: CUDA, then MPS, then CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps``)
    as a torch.device (:func:`diffcore.devices.resolve_device`); ValueError naming it when it is
    malformed or this machine does not have it."""
    from diffcore.devices import resolve_device

    return resolve_device(name)


def load_pipeline(checkpoint: str | Path, device: str = "auto") -> Pipeline:
    """:meth:`Pipeline.load` of a run folder or checkpoint file onto ``device``; a missing or bad
    file, or a model whose optional dependencies are missing, is a ValueError naming it."""
    from diffcore.pipeline import Pipeline
    from diffcore.text.encoders import TextEncoderUnavailable

    target = check_device(device)
    try:
        return Pipeline.load(checkpoint, device=target)
    except (ValueError, KeyError, OSError, TextEncoderUnavailable) as exc:  # CheckpointError is a ValueError
        raise ValueError(f"checkpoint={str(checkpoint)!r}: {exc}") from exc

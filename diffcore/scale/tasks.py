"""``generate``, ``detect`` and ``denoise`` with ``--engine``: the library tasks plus the scale-out
options, as the command line registers them.

The tasks of :mod:`diffcore.tasks` run in this process and know nothing of Ray. Each class here
subclasses one: its ``Params`` adds the fields of :class:`~diffcore.scale.options.ScaleOptions`
(``--engine``, ``--concurrency``, ...) and, under ``engine="ray"``, replaces the task's output-file
check by the task's shard formats (the output is then a folder); its ``run`` sends a Ray run to
:func:`diffcore.scale.jobs.run_task` and runs everything else as the task itself does.

    from diffcore.scale.tasks import ScaledGenerate, ScaledGenerateParams
    ScaledGenerate().run(ScaledGenerateParams(checkpoint="runs/digits", n=10_000, engine="ray", out="gen"))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffcore.scale.jobs import run_task
from diffcore.scale.options import ScaleOptions
from diffcore.tasks.anomaly import Detect, DetectParams
from diffcore.tasks.denoise import Denoise, DenoiseParams
from diffcore.tasks.generation import GenerateParams, GenerateTask

__all__ = [
    "ScaledDenoise",
    "ScaledDenoiseParams",
    "ScaledDetect",
    "ScaledDetectParams",
    "ScaledGenerate",
    "ScaledGenerateParams",
]


@dataclass
class ScaledGenerateParams(GenerateParams, ScaleOptions):
    """:class:`~diffcore.tasks.generation.GenerateParams` and the scale-out options; under
    ``engine="ray"``, ``out`` is a folder of parquet shards or PNGs (default ``samples``)."""

    def check_output(self) -> None:
        self.check_scale(("parquet", "png"))
        if self.engine == "local":
            super().check_output()
        else:
            self.out = self.out or "samples"


@dataclass
class ScaledDetectParams(DetectParams, ScaleOptions):
    """:class:`~diffcore.tasks.anomaly.DetectParams` and the scale-out options; under
    ``engine="ray"``, ``output`` is a folder of parquet or CSV shards."""

    def check_output(self) -> None:
        self.check_scale(("parquet", "csv"))
        if self.engine == "local":
            super().check_output()


@dataclass
class ScaledDenoiseParams(DenoiseParams, ScaleOptions):
    """:class:`~diffcore.tasks.denoise.DenoiseParams` and the scale-out options; under
    ``engine="ray"``, ``input`` and ``output`` are folders (output: PNGs or parquet shards)."""

    def check_output(self) -> None:
        self.check_scale(("png", "parquet"))
        if self.engine == "local":
            super().check_output()


class _RayDispatch:
    """``run``: a Ray run (``params.engine == "ray"``) by :func:`run_task`, else the task's own."""

    name: str

    def run(self, params: Any) -> dict[str, Any]:
        if params.engine == "ray":
            return run_task(self.name, params)
        result: dict[str, Any] = super().run(params)  # type: ignore[misc]
        return result


class ScaledGenerate(_RayDispatch, GenerateTask):
    __doc__ = GenerateTask.__doc__  # the command's description
    Params = ScaledGenerateParams


class ScaledDetect(_RayDispatch, Detect):
    __doc__ = Detect.__doc__
    Params = ScaledDetectParams


class ScaledDenoise(_RayDispatch, Denoise):
    __doc__ = Denoise.__doc__
    Params = ScaledDenoiseParams

"""The scale-out options every scalable task's Params carries (``--engine ray`` and its pool).

:class:`ScaleOptions` is a keyword-only dataclass base: ``generate``, ``detect`` and ``denoise``
inherit its fields, so the command line gets the same ``--engine``, ``--concurrency``,
``--cpus-per-worker``, ``--gpus-per-worker``, ``--ray-address`` and ``--shard-format`` options for
each, declared once. Nothing here imports Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ENGINES", "SHARD_FORMATS", "ScaleOptions"]

ENGINES = ("local", "ray")
SHARD_FORMATS = ("parquet", "png", "csv")


@dataclass(kw_only=True)
class ScaleOptions:
    """Where a task runs: in this process (``local``) or on a Ray Data actor pool (``ray``)."""

    engine: Literal["local", "ray"] = field(
        default="local",
        metadata={
            "help": "local: this process | ray: a Ray Data actor pool, each actor loading the model once "
            "(pip install 'diffcore[ray]'); --out/--output is then a folder of shards"
        },
    )
    concurrency: int = field(default=2, metadata={"help": "ray: actors in the pool"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "ray: CPUs reserved per actor (its torch threads)"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "ray: GPUs per actor (0: CPU; 0.5: two per GPU)"})
    ray_address: str | None = field(
        default=None,
        metadata={
            "metavar": "ADDRESS",
            "help": "ray: join this cluster (auto, HOST:6379 or ray://HOST:10001); default: start a local Ray "
            "for the job and stop it after",
        },
    )
    shard_format: Literal["parquet", "png", "csv"] | None = field(
        default=None,
        metadata={
            "metavar": "FORMAT",
            "help": "ray: shard files: parquet, png (generate/denoise: one file per image; denoise's default) or "
            "csv (detect); default parquet",
        },
    )

    def check_scale(self, formats: tuple[str, ...] = ("parquet",)) -> None:
        """Raise ValueError naming a bad scale option; ``formats``: the shard formats of the task."""
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}: expected one of {ENGINES}")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency!r} must be an integer >= 1")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        if self.cpus_per_worker == 0 and self.gpus_per_worker == 0:
            raise ValueError("cpus_per_worker=0 and gpus_per_worker=0: an actor needs a CPU or a GPU")
        if self.shard_format is not None and self.shard_format not in formats:
            raise ValueError(f"shard_format={self.shard_format!r}: this task writes {', '.join(formats)}")
        if self.engine == "local":
            given = [n for n in ("ray_address", "shard_format") if getattr(self, n) is not None]
            if given:
                raise ValueError(f"{given[0]}={getattr(self, given[0])!r} needs --engine ray")

    @property
    def shards(self) -> str:
        """The shard format (parquet unless chosen)."""
        return self.shard_format or "parquet"

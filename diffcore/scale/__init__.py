"""Scale-out inference: ``generate``, ``detect`` and ``denoise`` over large datasets on Ray Data.

A task's rows (sample indices, table rows, image files) become a Ray dataset; an actor pool maps it,
each actor loading the pipeline once (:func:`map_pipeline` with a worker of :mod:`.workers`). Noise
is keyed by the global row index, so the output equals the single-process output bit for bit on CPU,
however the rows are split. The command line's ``--engine`` options and dispatch are :mod:`.tasks`
(the library tasks of :mod:`diffcore.tasks` with :class:`ScaleOptions`), its Ray runs :mod:`.jobs`;
Ray itself is the optional extra ``diffcore[ray]`` and is imported only when used.

    import ray, diffcore.scale as scale
    from diffcore.tasks.generation import GenerateParams
    params = GenerateParams(checkpoint="runs/digits", n=10_000, seed=0)
    options = scale.ScaleOptions(engine="ray", concurrency=2)
    with scale.ray_session(num_cpus=2):
        ds = scale.map_pipeline(scale.index_dataset(params.n, 256), scale.GenerateWorker, options,
                                batch_size=256, checkpoint=params.checkpoint, params=params)
        for batch in scale.collect(ds, params.n, desc="generate"):
            ...  # batch["id"], batch["label"], batch["sample"]
"""

from __future__ import annotations

from diffcore.scale.engine import collect, import_ray, index_dataset, map_pipeline, ray_session, table_dataset
from diffcore.scale.options import ENGINES, SHARD_FORMATS, ScaleOptions
from diffcore.scale.workers import DenoiseWorker, DetectWorker, GenerateWorker, PipelineWorker

__all__ = [
    "ENGINES",
    "SHARD_FORMATS",
    "DenoiseWorker",
    "DetectWorker",
    "GenerateWorker",
    "PipelineWorker",
    "ScaleOptions",
    "collect",
    "import_ray",
    "index_dataset",
    "map_pipeline",
    "ray_session",
    "table_dataset",
]

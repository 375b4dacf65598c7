"""Ray Data plumbing: a Ray session for the job, index datasets, the actor pool, and collection.

The pool is ``Dataset.map_batches`` with a callable class (an actor pool of ``concurrency``
actors, each constructing the worker -- loading the pipeline -- once). Inputs are in-memory blocks
of contiguous row ids, one block per batch, so no read task competes with the actors for CPUs and
a batch never straddles two blocks. Actors are restarted and their tasks retried when an actor
process dies (``max_restarts`` / ``max_task_retries``); :func:`collect` checks that every row id
comes back exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from diffcore.scale.options import ScaleOptions

__all__ = ["collect", "import_ray", "index_dataset", "map_pipeline", "ray_session", "table_dataset"]

MAX_RESTARTS = 4  # an actor process that dies is restarted this many times, its tasks retried


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or ValueError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the part the engine needs
    except ImportError as exc:
        raise ValueError(f"--engine ray needs Ray Data: pip install 'diffcore[ray]' ({exc})") from None
    return ray


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: float | None = None, num_gpus: float | None = None
) -> Iterator[Any]:
    """Ray for one job: the session already connected in this process, else the cluster at
    ``address``, else a local Ray with ``num_cpus`` / ``num_gpus`` (no dashboard, worker logs not
    forwarded), shut down afterwards. Yields the ``ray`` module."""
    ray = import_ray()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar over rows
    quiet_ray_logs()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is not None:
        ray.init(address=address, **kwargs)
    else:
        cpus = None if num_cpus is None else max(1, math.ceil(num_cpus))
        ray.init(num_cpus=cpus, num_gpus=None if not num_gpus else math.ceil(num_gpus), **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def quiet_ray_logs() -> None:
    """Ray Data's INFO/WARNING lines (execution plans, 'progress bars disabled') off the terminal."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def local_resources(options: ScaleOptions) -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray needs to run the whole pool at once."""
    return options.concurrency * options.cpus_per_worker, options.concurrency * options.gpus_per_worker


def _blocks(n: int, batch_size: int, start: int) -> list[tuple[int, int]]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    return [(s, min(s + batch_size, start + n)) for s in range(start, start + n, batch_size)]


def index_dataset(n: int, batch_size: int, *, start: int = 0) -> Any:
    """A Ray dataset of one column ``id`` = start .. start+n-1, one in-memory block per batch."""
    import pyarrow as pa

    ray = import_ray()
    tables = [pa.table({"id": np.arange(a, b, dtype=np.int64)}) for a, b in _blocks(n, batch_size, start)]
    return ray.data.from_arrow(tables)


def table_dataset(table: Any, batch_size: int) -> Any:
    """A pyarrow ``table`` with an ``id`` column 0..rows-1 prepended, as a Ray dataset of one
    in-memory block per batch of rows."""
    import pyarrow as pa

    ray = import_ray()
    table = table.add_column(0, "id", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    return ray.data.from_arrow([table.slice(a, b - a) for a, b in _blocks(table.num_rows, batch_size, 0)])


def map_pipeline(ds: Any, worker: type, options: ScaleOptions, /, *, batch_size: int, **worker_kwargs: Any) -> Any:
    """``ds`` mapped by an actor pool of ``options.concurrency`` instances of ``worker`` (a
    :class:`~diffcore.scale.workers.PipelineWorker` class built with ``worker_kwargs``), batches of
    ``batch_size`` rows; each actor reserves ``cpus_per_worker`` CPUs (its torch threads) and
    ``gpus_per_worker`` GPUs. A dead actor is restarted and its batch retried."""
    ray = import_ray()
    threads = max(1, math.floor(options.cpus_per_worker))
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    with warnings.catch_warnings():  # Ray 2.60 flags actor options passed as **ray_remote_args, its only way
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return _map_batches(ds, worker, options, batch_size, threads, device, worker_kwargs, ray)


def _map_batches(
    ds: Any, worker: type, options: ScaleOptions, batch_size: int, threads: int, device: str, kwargs: Any, ray: Any
) -> Any:
    return ds.map_batches(
        worker,
        fn_constructor_kwargs={"threads": threads, "device": device, **kwargs},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.concurrency),
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker or None,
        max_restarts=MAX_RESTARTS,
        max_task_retries=MAX_RESTARTS,
    )


def collect(ds: Any, total: int, *, desc: str, progress: bool | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The output batches of ``ds`` as they finish, with a bar over rows; ValueError when a row id
    in 0..total-1 comes back twice or not at all (checked as they arrive and at the end)."""
    from tqdm import tqdm

    quiet_ray_logs()  # Ray Data sets its loggers up on first use
    seen = np.zeros(total, dtype=bool)
    shown = None if progress is None else not progress
    with tqdm(total=total, desc=desc, unit="row", disable=shown, leave=False, dynamic_ncols=True) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ids = np.asarray(batch["id"], dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= total):
                raise ValueError(f"row ids {ids.min()}..{ids.max()} are outside 0..{total - 1}")
            if seen[ids].any() or np.unique(ids).size != ids.size:
                raise ValueError(f"row id {int(ids[seen[ids]][0]) if seen[ids].any() else ids[0]} came back twice")
            seen[ids] = True
            bar.update(ids.size)
            yield batch
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} row(s) never came back, first id {int(np.argmin(seen))}")

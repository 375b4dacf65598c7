"""The ``--engine ray`` runs of ``generate``, ``detect`` and ``denoise``: inputs to a Ray dataset,
the actor pool, results written as shards by the driver.

The driver writes every shard (named by its first row id, via a temporary file and a rename), so
workers need no shared file system; :func:`~diffcore.scale.engine.collect` checks that each row
comes back exactly once, Ray's actor restarts and task retries included. Tables are read by the
driver (pyarrow) into in-memory blocks; image folders travel as file paths read by the actors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffcore import io
from diffcore.io.files import temporary_path
from diffcore.scale.engine import collect, index_dataset, local_resources, map_pipeline, ray_session, table_dataset
from diffcore.scale.options import ScaleOptions
from diffcore.scale.workers import DenoiseWorker, DetectWorker, GenerateWorker
from diffcore.tasks import as_json, load_pipeline
from diffcore.tasks.anomaly import resolve_calibration
from diffcore.tasks.anomaly.task import scoring_options
from diffcore.tasks.generation import resolve_labels

if TYPE_CHECKING:  # the tasks of diffcore.scale.tasks, which call these runners
    from diffcore.scale.tasks import ScaledDenoiseParams, ScaledDetectParams, ScaledGenerateParams

__all__ = ["check_out_dir", "run_denoise", "run_detect", "run_generate", "run_task"]

SHARD_GLOBS = ("part-*.parquet", "part-*.csv", "*.png")


def check_out_dir(path: str | Path) -> Path:
    """``path`` as a folder for shards: created if missing; ValueError when it is a file or already
    holds shards (a second run would mix with them)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} is a file; --engine ray writes a folder of shards")
    old = [p.name for g in SHARD_GLOBS for p in out.glob(g)] if out.is_dir() else []
    if old:
        raise ValueError(f"out={str(out)!r} already holds shards ({old[0]}, ...): choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_parquet(path: Path, columns: dict[str, Any], meta: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns).replace_schema_metadata({"diffcore": json.dumps(meta)})
    with temporary_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    names = list(columns)
    lines = [",".join(names)] + [",".join(repr(v.item()) for v in row) for row in zip(*columns.values())]
    with temporary_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _arrow_column(values: np.ndarray) -> Any:
    """A numpy column as Arrow: bytes as binary, (N, ...) arrays flattened to list<float32>
    (list<float64> for float64 ones: a table model's rows in the table's units)."""
    import pyarrow as pa

    if values.dtype == object and len(values) and isinstance(values[0], bytes):
        return pa.array(list(values), type=pa.binary())
    if values.dtype == object:  # ragged arrays (images of several sizes)
        return pa.array([np.asarray(v, np.float32).reshape(-1) for v in values], type=pa.list_(pa.float32()))
    if values.ndim > 1 and values.dtype == np.float64:
        return pa.array(list(values.reshape(len(values), -1)), type=pa.list_(pa.float64()))
    if values.ndim > 1:
        return pa.array(list(values.reshape(len(values), -1).astype(np.float32)), type=pa.list_(pa.float32()))
    return pa.array(values)


def _write_shards(
    batches: Iterator[dict[str, np.ndarray]], out: Path, fmt: str, meta: dict[str, Any], name: Callable[[int], str]
) -> int:
    """Each output batch as one shard (``part-<first id>.parquet|csv``) or, for ``png``, one file per
    row named ``name(id)``; returns the number of files written."""
    files = 0
    for batch in batches:
        ids = batch["id"]
        if fmt == "png":
            for i, data in zip(ids.tolist(), batch["image"]):
                with temporary_path(out / name(int(i))) as tmp:
                    tmp.write_bytes(data)
                files += 1
            continue
        if fmt == "csv":
            _write_csv(out / f"part-{int(ids[0]):09d}.csv", batch)
        else:
            arrow = {k: _arrow_column(v) for k, v in batch.items()}
            _write_parquet(out / f"part-{int(ids[0]):09d}.parquet", arrow, meta)
        files += 1
    return files


def _session(options: ScaleOptions) -> Any:
    cpus, gpus = local_resources(options)
    return ray_session(options.ray_address, cpus, gpus)


def _finish(out: Path, result: dict[str, Any], started: float, rows: int) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    result.update({"out": str(out), "seconds": round(seconds, 3), "rows_per_s": round(rows / max(seconds, 1e-9), 2)})
    with temporary_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


# --------------------------------------------------------------------------- generate


def run_generate(params: ScaledGenerateParams) -> dict[str, Any]:
    """``diffcore generate --engine ray``: ``params.n`` samples as shards in the folder ``params.out``
    (parquet rows ``id``, ``label``, ``image`` PNG bytes or ``sample`` floats, and a table model's
    ``row`` in the table's units; or one PNG per sample)."""
    started = time.perf_counter()
    pipe = load_pipeline(params.checkpoint, "cpu")  # checks the checkpoint and labels before the pool starts
    resolve_labels(pipe, params.class_label, params.n)
    images = pipe.dataset.get("kind", "image") == "image" and len(pipe.shape or ()) == 3
    if params.shards == "png" and not images:
        raise ValueError(f"shard_format='png' needs an image model; this one makes samples of shape {pipe.shape}")
    if params.out is None:  # ScaledGenerateParams names one under engine="ray"
        raise ValueError("out=None: --engine ray writes a folder of shards; give --out FOLDER")
    out = check_out_dir(params.out)
    meta = {"task": "generate", "shape": list(pipe.shape or ()), "params": as_json(params)}
    with _session(params):
        ds = map_pipeline(
            index_dataset(params.n, params.batch_size),
            GenerateWorker,
            params,
            batch_size=params.batch_size,
            checkpoint=str(params.checkpoint),
            params=params,
            png=images,
        )
        files = _write_shards(
            collect(ds, params.n, desc="generate", progress=not getattr(params, "quiet", False)),
            out,
            params.shards,
            meta,
            lambda i: f"{i:09d}.png",
        )
    result = {"n": params.n, "files": files, "shard_format": params.shards, "seed": params.seed, "engine": "ray"}
    return _finish(out, result, started, params.n)


# --------------------------------------------------------------------------- detect


def read_table_input(path: Path, columns: list[str], label: str | None) -> Any:
    """A CSV/Parquet file, or a folder of them (sorted by name), as one pyarrow table of the
    training ``columns`` (in training order; ``label`` dropped) as float64."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".parquet")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"input {str(path)!r} holds no .csv or .parquet files")
    tables = []
    for f in files:
        table = pq.read_table(f) if f.suffix.lower() == ".parquet" else pcsv.read_csv(f)
        names = [n for n in table.column_names if n != label]
        missing, extra = [c for c in columns if c not in names], [c for c in names if c not in columns]
        if missing or extra:
            raise ValueError(
                f"input {str(f)!r}: columns differ from training: missing {missing}, unexpected {extra}; "
                f"the model was trained on {columns}"
            )
        tables.append(pa.table({c: pc.cast(table[c], pa.float64()) for c in columns}))
    return pa.concat_tables(tables)


def image_files(path: Path) -> list[Path]:
    """The PNG/JPEG/NPY files of a folder (sorted by name), or ``path`` itself."""
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES + (".npy",))
    if not files:
        raise ValueError(f"input {str(path)!r} holds no image files ({', '.join(io.IMAGE_SUFFIXES)}, .npy)")
    return files


def _paths_dataset(files: list[Path], batch_size: int) -> Any:
    import pyarrow as pa

    return table_dataset(pa.table({"path": [str(f) for f in files]}), batch_size)


def run_detect(params: ScaledDetectParams) -> dict[str, Any]:
    """``diffcore detect --engine ray``: every row's score (and label with ``--calibrate``) keyed by
    row id, as shards in the folder ``params.output``; the calibration is fitted by the driver."""
    started = time.perf_counter()
    pipe = load_pipeline(params.checkpoint, "cpu")
    options = scoring_options(params, pipe, tuple(pipe.sample_shape))  # the table default's method and rows too
    calibration, _ = resolve_calibration(params, pipe, options)  # fitted once, by the driver
    out = check_out_dir(params.output)
    tabular = pipe.dataset.get("kind") == "tabular"
    columns = list((pipe.dataset.get("meta") or {}).get("columns") or [])
    with _session(params):
        if tabular:
            label = (pipe.dataset.get("meta") or {}).get("label_column")
            ds = table_dataset(read_table_input(Path(params.input), columns, label), params.batch_size)
        else:
            ds = _paths_dataset(image_files(Path(params.input)), params.batch_size)
        total = ds.count()
        mapped = map_pipeline(
            ds,
            DetectWorker,
            params,
            batch_size=params.batch_size,
            checkpoint=str(params.checkpoint),
            method=params.method,
            options=options,
            calibration=calibration,
            columns=columns if tabular else None,
        )
        meta = {"task": "detect", "params": as_json(params)}
        batches = collect(mapped, total, desc="detect", progress=True)
        files = _write_shards(batches, out, params.shards, meta, str)
    result = {
        "method": params.method,
        "n": total,
        "files": files,
        "threshold": None if calibration is None else calibration.threshold,
        "engine": "ray",
    }
    return _finish(out, result, started, total)


# --------------------------------------------------------------------------- denoise


def run_denoise(params: ScaledDenoiseParams) -> dict[str, Any]:
    """``diffcore denoise --engine ray``: each image file of the folder ``params.input`` denoised,
    as PNGs of the same names (or parquet shards) in the folder ``params.output``."""
    started = time.perf_counter()
    load_pipeline(params.checkpoint, "cpu")
    files = image_files(Path(params.input))
    out = check_out_dir(params.output)
    options = params.options()  # denoise()'s keyword arguments, as a local run passes them
    with _session(params):
        mapped = map_pipeline(
            _paths_dataset(files, params.batch_size),
            DenoiseWorker,
            params,
            batch_size=params.batch_size,
            checkpoint=str(params.checkpoint),
            options=options,
            png=True,
        )
        meta = {"task": "denoise", "files": [str(f) for f in files], "params": as_json(params)}
        batches = collect(mapped, len(files), desc="denoise", progress=True)
        fmt = params.shard_format or "png"  # denoise: a folder of images by default
        written = _write_shards(batches, out, fmt, meta, lambda i: f"{files[i].stem}.png")
    return _finish(out, {"n": len(files), "files": written, "engine": "ray"}, started, len(files))


RUNNERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "generate": run_generate,
    "detect": run_detect,
    "denoise": run_denoise,
}


def run_task(name: str, params: Any) -> dict[str, Any]:
    """Run task ``name`` (generate, detect, denoise) with ``params`` on Ray."""
    if name not in RUNNERS:
        raise ValueError(f"task {name!r} has no Ray engine; these do: {', '.join(RUNNERS)}")
    return RUNNERS[name](params)

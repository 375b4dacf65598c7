"""Throughput of the Ray Data engine (issue #17): anomaly scores of >= 1M tabular rows and >= 10k
generated digits, in one process and on a local Ray with 1 and 2 actors.

    .venv/bin/python benchmarks/scale/throughput.py                  # full: 1M rows, 10k digits
    .venv/bin/python benchmarks/scale/throughput.py --rows 20000 --images 500   # a quick look

Models: an MLP trained briefly on the benign breast-cancer rows (the demo's split) and a tiny UNet
trained briefly on the 8x8 digits. The rows are synthetic: samples of the breast-cancer model
(``generate``) in raw units, drawn with replacement up to ``--rows``. Every configuration gets the
same rows, seed and batch size and is checked to give bitwise the same scores / samples as the
single-process run. Reported: rows/s and images/s, the scaling efficiency of 2 actors over 1
(throughput ratio / 2), Ray's start-up (``ray.init`` and the actor pool's model loads) and its
per-task overhead, measured with a worker that returns its input (so a batch costs only Ray's
scheduling, serialization and transfer). Writes benchmarks/results/scale_cpu.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import diffcore
from diffcore import scale
from diffcore.data.scaling import TableScaler
from diffcore.scale.workers import PipelineWorker
from diffcore.tasks.anomaly import detect, standardize
from diffcore.tasks.generation import GenerateParams

RESULTS = Path(__file__).resolve().parents[1] / "results"
MLP = {"hidden": 128, "depth": 2}
UNET = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "groups": 8}
RECON = {"depth": 0.2, "repeats": 2, "sampler": "ddim", "steps": 1, "error": "abs", "seed": 0}  # 2 model calls a row
GEN_STEPS = 4


class Echo(PipelineWorker):
    """A worker that loads nothing and returns the ids: what a batch costs Ray alone."""

    def __init__(self, checkpoint: str, **kwargs: Any) -> None:
        torch.set_num_threads(1)
        self.hook = None

    def process(self, batch: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        return {"id": batch["id"]}


def train_models(work: Path) -> tuple[Path, Path, list[str]]:
    from diffcore_plugins.demo.app import breast_cancer_split

    split = breast_cancer_split(work)
    table = work / "mlp"
    diffcore.train(
        "tabular", "mlp", 100, table, dataset_options={"path": str(split["path"])}, model_config=MLP, batch_size=64
    )
    digits = work / "unet"
    diffcore.train("digits", "unet", 30, digits, model_config=UNET, batch_size=32)
    return table, digits, split["columns"]


def synthetic_rows(table: Path, rows: int) -> np.ndarray:
    """``rows`` raw rows: 1024 samples of the breast-cancer model, drawn with replacement."""
    pipe = diffcore.Pipeline.load(table)
    z = pipe.generate(1024, steps=10, seed=1).double()
    raw = TableScaler.from_meta(pipe.dataset["meta"]).inverse_transform(z.numpy())  # the stored scaling, undone
    pick = np.random.default_rng(0).integers(0, 1024, rows)
    return raw[pick]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _ray_run(ds: Any, worker: type, workers: int, total: int, batch_size: int, **kwargs: Any) -> tuple[float, Any]:
    options = scale.ScaleOptions(engine="ray", concurrency=workers)
    started = time.perf_counter()
    mapped = scale.map_pipeline(ds, worker, options, batch_size=batch_size, **kwargs)
    batches = list(scale.collect(mapped, total, desc=worker.__name__, progress=False))
    return time.perf_counter() - started, batches


def bench_rows(table: Path, columns: list[str], raw: np.ndarray, batch_size: int, ray_workers: list[int]) -> dict:
    import pyarrow as pa

    pipe = diffcore.Pipeline.load(table)
    torch.set_num_threads(1)
    started = time.perf_counter()
    single = detect(pipe, standardize(pipe, raw), batch_size=batch_size, progress=False, **RECON).scores.numpy()
    out: dict[str, Any] = {"single": {"seconds": time.perf_counter() - started}}
    log(f"rows single: {out['single']['seconds']:.1f} s")
    ds = scale.table_dataset(pa.table({c: raw[:, i] for i, c in enumerate(columns)}), batch_size)
    for w in ray_workers:
        seconds, batches = _ray_run(
            ds,
            scale.DetectWorker,
            w,
            len(raw),
            batch_size,
            checkpoint=str(table),
            method="recon",
            options=RECON,
            columns=columns,
        )
        ids = np.concatenate([b["id"] for b in batches])
        scores = np.concatenate([b["score"] for b in batches])[np.argsort(ids)]
        out[f"ray{w}"] = {"seconds": seconds, "bitwise_equal": bool(np.array_equal(scores, single))}
        echo, _ = _ray_run(ds, Echo, w, len(raw), batch_size, checkpoint="")
        out[f"ray{w}"]["echo_seconds"] = echo
        log(f"rows ray{w}: {out[f'ray{w}']}")
    return out


def bench_images(digits: Path, n: int, batch_size: int, ray_workers: list[int]) -> dict:
    pipe = diffcore.Pipeline.load(digits)
    params = GenerateParams(checkpoint=str(digits), n=n, steps=GEN_STEPS, sampler="dpmpp_2m", quiet=True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    single = pipe.generate(n, steps=GEN_STEPS, sampler="dpmpp_2m", seed=0, batch_size=batch_size).clamp(-1, 1)
    out: dict[str, Any] = {"single": {"seconds": time.perf_counter() - started}}
    log(f"images single: {out['single']['seconds']:.1f} s")
    ds = scale.index_dataset(n, batch_size)
    for w in ray_workers:
        seconds, batches = _ray_run(ds, scale.GenerateWorker, w, n, batch_size, checkpoint=str(digits), params=params)
        ids = np.concatenate([b["id"] for b in batches])
        samples = torch.from_numpy(np.concatenate([b["sample"] for b in batches])[np.argsort(ids)])
        out[f"ray{w}"] = {"seconds": seconds, "bitwise_equal": bool(torch.equal(samples, single))}
        log(f"images ray{w}: {out[f'ray{w}']}")
    return out


def _rates(result: dict, total: int, batches: int) -> list[list[str]]:
    base = total / result["single"]["seconds"]
    rows = [["single process (1 thread)", f"{base:,.0f}", "-", "-"]]
    for key in [k for k in result if k.startswith("ray")]:
        r = result[key]
        rate = total / r["seconds"]
        eff = f"{rate / (int(key[3:]) * total / result['ray1']['seconds']):.2f}" if "ray1" in result else "-"
        overhead = f"{1000 * r['echo_seconds'] / batches:.1f}" if "echo_seconds" in r else "-"
        rows.append(
            [
                f"Ray, {key[3:]} actor(s)",
                f"{rate:,.0f}",
                eff,
                overhead + (" (bitwise equal)" if r["bitwise_equal"] else " (DIFFERS)"),
            ]
        )
    return rows


def report(res: dict, args: argparse.Namespace, startup: float) -> str:
    head = ["configuration", "rate", "efficiency vs 1 actor", "Ray ms per batch (echo worker)"]

    def table(rows: list[list[str]]) -> str:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])

    rb, ib = -(-args.rows // args.row_batch), -(-args.images // args.image_batch)
    return "\n".join(
        [
            "# Scale-out throughput on CPU (benchmarks/scale/throughput.py)",
            "",
            f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f} at the end of the run (about 0 means no other jobs). "
            "Each actor and the single process use 1 torch thread.",
            f"Ray start-up (ray.init of a local cluster): {startup:.1f} s, not included in the rates below "
            "(the pool's actor start-up and model loads are).",
            "",
            f"## Anomaly scores: {args.rows:,} synthetic breast-cancer rows (rows/s), batch {args.row_batch}, "
            f"{rb} batches; recon recipe {RECON}",
            "",
            table(_rates(res["rows"], args.rows, rb)),
            "",
            f"## Generation: {args.images:,} 8x8 digits (images/s), {GEN_STEPS} dpmpp_2m steps, "
            f"batch {args.image_batch}, {ib} batches",
            "",
            table(_rates(res["images"], args.images, ib)),
            "",
            "Efficiency: throughput with k actors / (k x throughput with 1 actor). Ray ms per batch: the wall time of "
            "the same job with a worker that returns its ids, divided by the batches (scheduling, serialization, "
            "transfer and the driver's collection).",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--row-batch", type=int, default=16384)
    parser.add_argument("--image-batch", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_cpu.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table, digits, columns = train_models(Path(tmp))
        log("models trained")
        raw = synthetic_rows(table, args.rows)
        log("rows drawn")
        started = time.perf_counter()
        with scale.ray_session(num_cpus=2):
            startup = time.perf_counter() - started
            res = {
                "rows": bench_rows(table, columns, raw, args.row_batch, [1, 2]),
                "images": bench_images(digits, args.images, args.image_batch, [1, 2]),
            }
    text = report(res, args, startup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, **res}, indent=2))
    print(text)


if __name__ == "__main__":
    main()

"""The quality benchmarks' evaluators and harness: which data and classifier recipe each dataset
uses, the real-vs-real and Gaussian-mixture baselines, and the machine/timing/report helpers
shared by digits.py, mnist.py and the task benchmarks.

The evaluator itself (a small CNN whose penultimate features define a Frechet distance (FD),
trained deterministically on the TRAIN split and cached by recipe) lives in the library,
:mod:`diffcore.evaluation`, which the demo uses too; its cache here is ``outputs/quality/``.

    .venv/bin/python -m benchmarks.quality.evaluator            # both evaluators + baselines
    .venv/bin/python -m benchmarks.quality.evaluator --dataset digits

writes ``benchmarks/results/quality/evaluator.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import diffcore
from diffcore import evaluation
from diffcore.evaluation import Evaluator
from diffcore.evaluation.recipes import DIGITS_DATA, DIGITS_EVALUATOR
from diffcore.metrics import frechet_distance

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "outputs" / "quality"
RESULTS_DIR = ROOT / "benchmarks" / "results" / "quality"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"
MIN_ACCURACY = 0.97

# name -> (dataset plugin, its options, classifier recipe). The split seed is the one the
# diffusion benchmarks train on, so "train" and "held-out" mean the same images everywhere.
DATASETS: dict[str, dict[str, Any]] = {
    "digits": DIGITS_DATA,
    "mnist": {
        "dataset": "mnist-idx",
        "options": {
            "images": str(MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
            "labels": str(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"),
            "seed": 0,
            "holdout": 0.2,
        },
    },
}
RECIPES: dict[str, dict[str, Any]] = {
    "digits": DIGITS_EVALUATOR,
    "mnist": {
        "channels": [16, 32],
        "pools": 2,
        "feature_dim": 64,
        "dropout": 0.3,
        "epochs": 8,
        "batch_size": 128,
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "seed": 0,
    },
}


def load_data(name: str) -> Any:
    """The DiffusionDataset of ``name`` ("digits" or "mnist") with the benchmark split."""
    spec = DATASETS[name]
    return diffcore.get("datasets", spec["dataset"])(**spec["options"])


def load_evaluator(name: str, data: Any | None = None, cache_dir: Path = CACHE_DIR, verbose: bool = True) -> Evaluator:
    """The evaluator for ``name``: from the cache when its recipe matches, else trained and cached.

    Raises RuntimeError when its held-out accuracy is below 0.97.
    """
    if name not in RECIPES:
        raise ValueError(f"evaluator {name!r}: expected one of {sorted(RECIPES)}")
    data = data if data is not None else load_data(name)
    ev = evaluation.load_evaluator(
        name, data, RECIPES[name], DATASETS[name], Path(cache_dir) / f"evaluator-{name}.safetensors", verbose
    )
    if ev.accuracy < MIN_ACCURACY:
        raise RuntimeError(f"the {name} evaluator reaches {ev.accuracy:.4f} < {MIN_ACCURACY} held-out accuracy")
    return ev


def split_check(pipe: Any, name: str = "digits") -> dict[str, Any]:
    """Whether the model was trained on the evaluator's train split (else FD / NN vs held-out mislead)."""
    got = dict(pipe.dataset.get("meta", {}).get("options", {}))
    want = DATASETS[name]["options"]
    same = (
        pipe.dataset.get("name") == DATASETS[name]["dataset"]
        and got.get("limit") is None
        and all(got.get(k) == v for k, v in want.items())
    )
    return {"model_split": got, "evaluator_split": want, "matches": same}


# --------------------------------------------------------------------------- baselines


def baselines(ev: Evaluator, data: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """Real-vs-real FD (train split vs held-out split; also a random n-image train subset, the
    sample count the models are scored with) and the class-conditional Gaussian mixture."""
    labels = evaluation.balanced_labels(data.num_classes, n)
    gmm = ev.score(evaluation.class_gaussian_samples(data, labels, seed), labels, data)
    subset = evaluation.real_fd(ev, data, n, seed)
    return {
        "real_vs_real": {
            "fd_train_vs_heldout": frechet_distance(ev.features(data.train), ev.features(data.test)),
            "n_train": len(data.train),
            **subset,
            "heldout_accuracy": ev.accuracy,
        },
        "gaussian_mixture": gmm,
    }


# --------------------------------------------------------------------------- harness shared by digits.py / mnist.py


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (other jobs on the cores slow every timing)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "kernels": diffcore.ops.backend(),
        "loadavg_at_start": loadavg(),
    }


def write_report(
    out: Path, report: dict[str, Any], only: list[str] | None = None, label: str = "parts", keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Write a results JSON. With ``only`` (a partial run's entries) and an existing file, update
    those entries (and ``keep``: e.g. the recipes) in it and record the partial run under
    ``updated``; the other entries stay those of the last full run."""
    if only and out.exists():
        previous = json.loads(out.read_text())
        kept = {k: v for k, v in report.items() if k in only or k in keep}
        report = {
            **previous,
            **kept,
            "updated": {label: only, "machine": report["machine"], "seconds": report["seconds"]},
        }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out} ({report.get('updated', report)['seconds']} s)")
    return report


def rss_mb() -> dict[str, float]:
    """Current and peak resident memory of this process in MiB (/proc, else ru_maxrss).

    torch's CPU allocations are invisible to tracemalloc; RSS sees them (and the libraries).
    """
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    if "peak_rss_mib" not in out:
        out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0: write 5 to /proc/self/clear_refs) so the next peak is a phase's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def train_timed(recipe: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any]]:
    """``diffcore.train(**recipe)`` with its wall time, images/s and peak memory."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # a fresh run: never resume a stale checkpoint
    gc.collect()
    before = rss_mb()
    reset = reset_peak_rss()
    load0 = loadavg()
    t0 = time.perf_counter()
    pipe = diffcore.train(out=str(out), **recipe)
    wall = time.perf_counter() - t0
    mem = rss_mb()
    steps, batch = recipe["steps"], recipe["batch_size"]
    windows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = sorted(w["images_per_s"] for w in windows if w.get("images_per_s"))
    losses = [w["loss"] for w in windows if "loss" in w]
    return pipe, {
        "wall_s": round(wall, 1),
        "images_per_s": round(steps * batch / wall, 1),
        "images_per_s_median_window": round(rates[len(rates) // 2], 1) if rates else None,
        "steps": steps,
        "batch_size": batch,
        "images_seen": steps * batch,
        "final_loss": round(sum(losses[-4:]) / len(losses[-4:]), 5) if losses else None,
        "rss_before_mib": before.get("rss_mib"),
        "peak_rss_mib": mem["peak_rss_mib"],
        "peak_rss_is_training_only": reset,
        "loadavg_before": load0,
        "loadavg_after": loadavg(),
    }


EVALUATOR_FACTS = ("recipe", "heldout_accuracy", "feature_scale", "n_train", "n_heldout")


def class_run_parser(doc: str, steps: int, run_dir: Path, threads: int) -> argparse.ArgumentParser:
    """The options digits.py and mnist.py share: --steps, --out, --run-dir, --quick, --threads."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--steps", type=int, help=f"training iterations (default {steps})")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    ap.add_argument("--run-dir", type=Path, default=run_dir)
    ap.add_argument("--quick", action="store_true", help="smoke mode: a few steps, few samples")
    ap.add_argument(
        "--threads",
        type=int,
        default=threads,
        help=f"torch intra-op threads (default {threads}: as fast as 2 for these models, and "
        "robust when another job shares the cores)",
    )
    return ap


def task_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """The options the task benchmarks share: --quick, --threads, --out (default: the results folder,
    or the benchmark's quick folder with --quick)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=quick_help)
    threads = "torch intra-op threads (default 1: on a shared 2-core machine 2 threads oversubscribe)"
    ap.add_argument("--threads", type=int, default=1, help=threads)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/quality)")
    return ap


def score_setup(name: str, report: dict[str, Any], n: int) -> tuple[Any, Evaluator]:
    """The data and evaluator of ``name``; records the evaluator's facts and the baselines at ``n``
    samples in ``report``."""
    data = load_data(name)
    ev = load_evaluator(name, data)
    report["evaluator"] = {k: ev.meta[k] for k in EVALUATOR_FACTS}
    report["baselines"] = baselines(ev, data, n)
    return data, ev


def write_class_run(
    out: Path, name: str, report: dict[str, Any], samples: Tensor, per_class: int, scale: int
) -> dict[str, Any]:
    """Write ``name.json`` and ``name_samples.png`` (``per_class`` samples per row, one row per class,
    from ``samples`` generated for :func:`diffcore.evaluation.balanced_labels` over 10 classes)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = evaluation.balanced_labels(10, len(samples))
    order = torch.cat([torch.nonzero(labels == c).squeeze(1)[:per_class] for c in range(10)])
    labeled_grid(samples[order], [str(c) for c in range(10)], out / f"{name}_samples.png", scale=scale)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out / (name + '.json')} and {out / (name + '_samples.png')}")
    return report


def labeled_grid(x: Tensor, row_labels: list[str], path: Path, scale: int | None = None) -> Path:
    """``diffcore.io.save_grid`` of (rows*cols, C, H, W) images, one row per label, with the
    label written left of each row."""
    from PIL import Image, ImageDraw

    from diffcore.io import save_grid

    rows = len(row_labels)
    cols = len(x) // rows
    save_grid(x, path, nrow=cols, scale=scale)
    img = Image.open(path)
    row_h = img.height / rows
    margin = 24
    canvas = Image.new(img.mode, (img.width + margin, img.height), 0)
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for r, text in enumerate(row_labels):
        draw.text((4, int(r * row_h + row_h / 2 - 5)), text, fill=255)
    canvas.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=sorted(RECIPES), action="append", help="evaluator(s) to build (default: all)")
    ap.add_argument("--n", type=int, default=1000, help="Gaussian-mixture samples (default 1000)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR / "evaluator.json")
    args = ap.parse_args(argv)
    report: dict[str, Any] = {"machine": machine()}
    for name in args.dataset or sorted(RECIPES):
        data = load_data(name)
        ev = load_evaluator(name, data)
        report[name] = {"evaluator": ev.meta, **baselines(ev, data, args.n)}
        print(json.dumps({name: report[name]}, indent=1, default=str))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

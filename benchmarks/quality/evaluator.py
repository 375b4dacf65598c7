"""The quality evaluator: a small CNN classifier whose penultimate features define a Frechet
distance (FD), plus the real-vs-real and Gaussian-mixture baselines.

Feature scale: the features are multiplied by one constant, fixed when the classifier is
trained, that gives the train split's features a mean per-dimension variance of 1 (trace of
their covariance = feature_dim). FD then does not depend on the arbitrary scale of a ReLU
layer, and FDs of evaluators with the same feature_dim are on one scale.

The classifier is trained deterministically on the TRAIN split of the dataset (never on the
held-out split) and cached under ``outputs/quality/`` as a safetensors checkpoint whose JSON
metadata holds its recipe; a cached file whose recipe differs is retrained.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import diffcore
from diffcore.metrics import frechet_distance, nearest_neighbour_ratio
from diffcore.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "outputs" / "quality"
RESULTS_DIR = ROOT / "benchmarks" / "results" / "quality"
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist-t10k"
MIN_ACCURACY = 0.97

# name -> (dataset plugin, its options, classifier recipe). The split seed is the one the
# diffusion benchmarks train on, so "train" and "held-out" mean the same images everywhere.
DATASETS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "options": {"seed": 0, "holdout": 0.2}},
    "mnist": {
        "dataset": "mnist-idx",
        "options": {"images": str(MNIST_DIR / "t10k-images-idx3-ubyte.gz"),
                    "labels": str(MNIST_DIR / "t10k-labels-idx1-ubyte.gz"), "seed": 0, "holdout": 0.2},
    },
}
RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"channels": [16, 32], "pools": 1, "feature_dim": 64, "dropout": 0.3, "epochs": 30,
               "batch_size": 64, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0},
    "mnist": {"channels": [16, 32], "pools": 2, "feature_dim": 64, "dropout": 0.3, "epochs": 8,
              "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0},
}


def load_data(name: str) -> Any:
    """The DiffusionDataset of ``name`` ("digits" or "mnist") with the benchmark split."""
    spec = DATASETS[name]
    return diffcore.get("datasets", spec["dataset"])(**spec["options"])


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (the last ``pools`` followed by 2x2 max-pooling), a ``feature_dim``
    ReLU layer (the FD features) and a linear head. Input (B, 1, H, W) in [-1, 1]."""

    def __init__(self, image_size: int, num_classes: int, channels: list[int], pools: int, feature_dim: int,
                 dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, size = 1, image_size
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU()]
            if i >= len(channels) - pools:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            cin = c
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(cin * size * size, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: Tensor) -> Tensor:
        return self.hidden(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@dataclass
class Evaluator:
    """A trained classifier: ``features`` for FD, ``predict`` for class accuracy."""

    name: str
    net: SmallCNN
    meta: dict[str, Any]

    @property
    def accuracy(self) -> float:
        return float(self.meta["heldout_accuracy"])

    @torch.no_grad()
    def features(self, x: Tensor, batch: int = 1000) -> Tensor:
        """(N, feature_dim) float64 penultimate features of images in [-1, 1] (clamped), scaled."""
        return _raw_features(self.net, x, batch) * float(self.meta["feature_scale"])

    @torch.no_grad()
    def predict(self, x: Tensor, batch: int = 1000) -> Tensor:
        self.net.eval()
        x = x.float().clamp(-1, 1)
        return torch.cat([self.net(x[i : i + batch]).argmax(dim=1) for i in range(0, len(x), batch)])

    def score(self, samples: Tensor, labels: Tensor | None, data: Any) -> dict[str, float]:
        """FD vs the held-out split, accuracy on ``labels`` (the prompted classes) and the
        nearest-neighbour ratio vs the train split, for samples in [-1, 1] (clamped)."""
        samples = samples.float().clamp(-1, 1)
        out = {
            "fd": frechet_distance(self.features(samples), self.features(data.test)),
            "nn_ratio": nearest_neighbour_ratio(samples, data.train, data.test),
            "n": len(samples),
        }
        if labels is not None:
            out["class_accuracy"] = float((self.predict(samples) == labels).float().mean())
        return out


@torch.no_grad()
def _raw_features(net: SmallCNN, x: Tensor, batch: int = 1000) -> Tensor:
    net.eval()
    x = x.float().clamp(-1, 1)
    return torch.cat([net.features(x[i : i + batch]) for i in range(0, len(x), batch)]).double()


def _train_classifier(name: str, data: Any, recipe: dict[str, Any]) -> tuple[SmallCNN, dict[str, Any]]:
    torch.manual_seed(recipe["seed"])
    g = torch.Generator().manual_seed(recipe["seed"])
    net = SmallCNN(data.train.shape[-1], data.num_classes, recipe["channels"], recipe["pools"],
                   recipe["feature_dim"], recipe["dropout"])
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    x, y = data.train, data.train_labels
    steps = recipe["epochs"] * -(-len(x) // recipe["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps)
    t0 = time.perf_counter()
    net.train()
    for _ in range(recipe["epochs"]):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), recipe["batch_size"]):
            idx = order[i : i + recipe["batch_size"]]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        acc = float((torch.cat([net(data.test[i : i + 1000]).argmax(1) for i in range(0, len(data.test), 1000)])
                     == data.test_labels).float().mean())
    raw = _raw_features(net, x)
    scale = (raw.shape[1] / float(torch.cov(raw.T).trace())) ** 0.5
    meta = {"name": name, "dataset": DATASETS[name], "recipe": recipe, "heldout_accuracy": acc, "feature_scale": scale,
            "train_seconds": round(time.perf_counter() - t0, 1), "n_train": len(x), "n_heldout": len(data.test)}
    return net, meta


def load_evaluator(name: str, data: Any | None = None, cache_dir: Path = CACHE_DIR, verbose: bool = True) -> Evaluator:
    """The evaluator for ``name``: from the cache when its recipe matches, else trained and cached.

    Raises RuntimeError when its held-out accuracy is below 0.97.
    """
    if name not in RECIPES:
        raise ValueError(f"evaluator {name!r}: expected one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    data = data if data is not None else load_data(name)
    file = Path(cache_dir) / f"evaluator-{name}.safetensors"
    net = SmallCNN(data.train.shape[-1], data.num_classes, recipe["channels"], recipe["pools"],
                   recipe["feature_dim"], recipe["dropout"])
    meta = None
    if file.exists():
        try:
            tensors, cached = load_checkpoint(file)
            same = cached.get("recipe") == recipe and cached.get("dataset") == json.loads(json.dumps(DATASETS[name]))
            if same and "feature_scale" in cached:
                net.load_state_dict(tensors)
                meta = cached
        except (CheckpointError, RuntimeError) as exc:
            print(f"[evaluator] ignoring cache {file}: {exc}")
    if meta is None:
        if verbose:
            print(f"[evaluator] training the {name} classifier ({recipe['epochs']} epochs)...", flush=True)
        net, meta = _train_classifier(name, data, recipe)
        save_checkpoint(file, net.state_dict(), meta)
    net.eval().requires_grad_(False)
    if verbose:
        print(f"[evaluator] {name}: held-out accuracy {meta['heldout_accuracy']:.4f} ({file})", flush=True)
    if meta["heldout_accuracy"] < MIN_ACCURACY:
        raise RuntimeError(f"the {name} evaluator reaches {meta['heldout_accuracy']:.4f} < {MIN_ACCURACY} held-out accuracy")
    return Evaluator(name, net, meta)


# --------------------------------------------------------------------------- baselines


def gaussian_mixture_samples(data: Any, labels: Tensor, seed: int = 0, jitter: float = 1e-4) -> Tensor:
    """Samples of a class-conditional Gaussian: per class the mean and covariance of the train
    split's flattened images (+ ``jitter`` * I, since constant border pixels have zero variance),
    clamped to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = data.train.flatten(1).double()
    out = torch.empty(len(labels), x.shape[1], dtype=torch.float64)
    for c in range(data.num_classes):
        rows = x[data.train_labels == c]
        mu = rows.mean(0)
        cov = torch.cov(rows.T) + jitter * torch.eye(x.shape[1], dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        pick = (labels == c).nonzero().squeeze(1)
        z = torch.randn(len(pick), x.shape[1], generator=g, dtype=torch.float64)
        out[pick] = mu + z @ chol.T
    return out.float().reshape(len(labels), *data.shape).clamp(-1, 1)


def balanced_labels(num_classes: int, n: int) -> Tensor:
    """``n`` labels cycling 0..K-1 (equal counts when K divides n)."""
    return torch.arange(n) % num_classes


def baselines(ev: Evaluator, data: Any, n: int, seed: int = 0) -> dict[str, Any]:
    """Real-vs-real FD (train split vs held-out split; also a random n-image train subset, the
    sample count the models are scored with) and the class-conditional Gaussian mixture."""
    feats_test = ev.features(data.test)
    g = torch.Generator().manual_seed(seed)
    subset = data.train[torch.randperm(len(data.train), generator=g)[: min(n, len(data.train))]]
    labels = balanced_labels(data.num_classes, n)
    gmm = ev.score(gaussian_mixture_samples(data, labels, seed), labels, data)
    return {
        "real_vs_real": {"fd_train_vs_heldout": frechet_distance(ev.features(data.train), feats_test),
                         "n_train": len(data.train),
                         "fd_train_subset_vs_heldout": frechet_distance(ev.features(subset), feats_test),
                         "n_subset": len(subset), "n_heldout": len(data.test),
                         "heldout_accuracy": ev.accuracy},
        "gaussian_mixture": gmm,
    }


# --------------------------------------------------------------------------- harness shared by digits.py / mnist.py


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages (other jobs on the cores slow every timing)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "kernels": diffcore.ops.backend(), "loadavg_at_start": loadavg()}


def write_report(out: Path, report: dict[str, Any], only: list[str] | None = None, label: str = "parts",
                 keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write a results JSON. With ``only`` (a partial run's entries) and an existing file, update
    those entries (and ``keep``: e.g. the recipes) in it and record the partial run under
    ``updated``; the other entries stay those of the last full run."""
    if only and out.exists():
        previous = json.loads(out.read_text())
        kept = {k: v for k, v in report.items() if k in only or k in keep}
        report = {**previous, **kept,
                  "updated": {label: only, "machine": report["machine"], "seconds": report["seconds"]}}
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
        "steps": steps, "batch_size": batch, "images_seen": steps * batch,
        "final_loss": round(sum(losses[-4:]) / len(losses[-4:]), 5) if losses else None,
        "rss_before_mib": before.get("rss_mib"),
        "peak_rss_mib": mem["peak_rss_mib"],
        "peak_rss_is_training_only": reset,
        "loadavg_before": load0, "loadavg_after": loadavg(),
    }


def labeled_grid(x: Tensor, row_labels: list[str], path: Path, scale: int | None = None) -> Path:
    """``diffcore.images.save_grid`` of (rows*cols, C, H, W) images, one row per label, with the
    label written left of each row."""
    from PIL import Image, ImageDraw

    from diffcore.images import save_grid

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
    ap.add_argument("--dataset", choices=sorted(RECIPES), action="append",
                    help="evaluator(s) to build (default: all)")
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

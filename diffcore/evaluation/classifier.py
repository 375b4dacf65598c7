"""Label judges for generated images: a small CNN evaluator (features for FD, class predictions)
and a logistic-regression pixel classifier.

The CNN's features are multiplied by one constant, fixed when it is trained, that gives the train
split's features a mean per-dimension variance of 1 (trace of their covariance = feature_dim). FD
then does not depend on the arbitrary scale of a ReLU layer, and FDs of evaluators with the same
feature_dim are on one scale. It trains deterministically on the TRAIN split only and is cached as
a safetensors checkpoint whose JSON metadata holds its recipe; a cache of another recipe retrains.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffcore.metrics import frechet_distance, nearest_neighbour_ratio
from diffcore.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["Evaluator", "SmallCNN", "label_accuracy", "load_evaluator", "pixel_classifier", "train_evaluator"]

RECIPE_KEYS = ("channels", "pools", "feature_dim", "dropout", "epochs", "batch_size", "lr", "weight_decay", "seed")


class SmallCNN(nn.Module):
    """Two 3x3 conv layers (the last ``pools`` followed by 2x2 max-pooling), a ``feature_dim``
    ReLU layer (the FD features) and a linear head. Input (B, 1, H, W) in [-1, 1]."""

    def __init__(
        self, image_size: int, num_classes: int, channels: list[int], pools: int, feature_dim: int, dropout: float
    ) -> None:
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

    @classmethod
    def for_data(cls, data: Any, recipe: dict[str, Any]) -> SmallCNN:
        """The network ``recipe`` describes for the images and classes of ``data``."""
        return cls(
            data.train.shape[-1],
            data.num_classes,
            recipe["channels"],
            recipe["pools"],
            recipe["feature_dim"],
            recipe["dropout"],
        )

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
        """Held-out accuracy measured when it was trained."""
        return float(self.meta["heldout_accuracy"])

    @torch.no_grad()
    def features(self, x: Tensor, batch: int = 1000) -> Tensor:
        """(N, feature_dim) float64 penultimate features of images in [-1, 1] (clamped), scaled."""
        return _raw_features(self.net, x, batch) * float(self.meta["feature_scale"])

    @torch.no_grad()
    def predict(self, x: Tensor, batch: int = 1000) -> Tensor:
        """(N,) predicted classes of images in [-1, 1] (clamped)."""
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


def train_evaluator(data: Any, recipe: dict[str, Any]) -> tuple[SmallCNN, dict[str, Any]]:
    """Train the CNN of ``recipe`` (keys :data:`RECIPE_KEYS`) on ``data.train``; returns the net and
    its facts (held-out accuracy, feature scale, seconds, split sizes)."""
    missing = [k for k in RECIPE_KEYS if k not in recipe]
    if missing:
        raise ValueError(f"evaluator recipe lacks {missing}; expected the keys {list(RECIPE_KEYS)}")
    torch.manual_seed(recipe["seed"])
    g = torch.Generator().manual_seed(recipe["seed"])
    net = SmallCNN.for_data(data, recipe)
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
        acc = float(
            (
                torch.cat([net(data.test[i : i + 1000]).argmax(1) for i in range(0, len(data.test), 1000)])
                == data.test_labels
            )
            .float()
            .mean()
        )
    raw = _raw_features(net, x)
    scale = (raw.shape[1] / float(torch.cov(raw.T).trace())) ** 0.5
    return net, {
        "heldout_accuracy": acc,
        "feature_scale": scale,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "n_train": len(x),
        "n_heldout": len(data.test),
    }


def load_evaluator(
    name: str, data: Any, recipe: dict[str, Any], dataset: dict[str, Any], file: str | Path, verbose: bool = True
) -> Evaluator:
    """The evaluator ``name`` for ``data``: from ``file`` when it holds the same ``recipe`` and
    ``dataset`` (a JSON description of the data and its split), else trained and saved there."""
    file = Path(file)
    net = SmallCNN.for_data(data, recipe)
    meta = None
    if file.exists():
        try:
            tensors, cached = load_checkpoint(file)
            same = cached.get("recipe") == recipe and cached.get("dataset") == json.loads(json.dumps(dataset))
            if same and "feature_scale" in cached:
                net.load_state_dict(tensors)
                meta = cached
        except (CheckpointError, RuntimeError) as exc:
            print(f"[evaluator] ignoring cache {file}: {exc}")
    if meta is None:
        if verbose:
            print(f"[evaluator] training the {name} classifier ({recipe['epochs']} epochs)...", flush=True)
        net, facts = train_evaluator(data, recipe)
        meta = {"name": name, "dataset": dataset, "recipe": recipe, **facts}
        save_checkpoint(file, net.state_dict(), meta)
    net.eval().requires_grad_(False)
    if verbose:
        print(f"[evaluator] {name}: held-out accuracy {meta['heldout_accuracy']:.4f} ({file})", flush=True)
    return Evaluator(name, net, meta)


def pixel_classifier(train: Tensor, labels: Tensor) -> Any:
    """A logistic-regression classifier (scikit-learn, C 0.5) on the flattened pixels of (N, ...) images."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=3000, C=0.5)
    clf.fit(train.reshape(len(train), -1).numpy(), labels.numpy())
    return clf


def label_accuracy(clf: Any, x: Tensor, labels: Tensor | list[int]) -> float:
    """Fraction of the images ``x`` (clamped to [-1, 1]) that ``clf.predict`` labels as ``labels``."""
    pred = clf.predict(x.clamp(-1, 1).reshape(len(x), -1).numpy())
    return float((pred == np.asarray(labels)).mean())

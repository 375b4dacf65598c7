"""Generation: a class grid, a guidance sweep scored by prompted-class accuracy and the
nearest-neighbour ratio, and the per-class Gaussian baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffcore.evaluation import class_gaussian_samples, label_accuracy
from diffcore.metrics import nearest_neighbour_ratio
from diffcore.pipeline import Pipeline
from diffcore.tasks.generation import GenerateParams, generate_samples
from diffcore_plugins.demo.figures import strip_figure
from diffcore_plugins.demo.recipes import GUIDANCE
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import log

__all__ = ["run"]


def _nn_ratio(x: torch.Tensor, data: Any) -> float:
    """Nearest-neighbour ratio of the flattened samples ``x`` against the train and held-out splits."""
    return nearest_neighbour_ratio(*(t.reshape(len(t), -1) for t in (x, data.train, data.test)))


def run(pipe: Pipeline, data: Any, clf: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    per = cfg["grid_per_class"]
    log("generation: class grid and guidance sweep")
    labels = [str(k) for k in range(10) for _ in range(per)]
    grid, _ = generate_samples(
        pipe, GenerateParams(checkpoint="-", n=10 * per, class_label=labels, guidance_scale=3.0, seed=0)
    )
    rows = [(f"class {k}", grid[k * per : (k + 1) * per]) for k in range(10)]
    strip_figure(rows, out / "generation_grid.png", "class-conditional samples (dpmpp_2m, 20 steps, guidance 3)")
    sweep, results = [], {}
    n_eval = 10 * cfg["eval_per_class"]
    eval_labels = [k for k in range(10) for _ in range(cfg["eval_per_class"])]
    for w in GUIDANCE:
        x, _ = generate_samples(
            pipe,
            GenerateParams(checkpoint="-", n=n_eval, class_label=list(map(str, eval_labels)), guidance_scale=w, seed=1),
        )
        results[w] = {"accuracy": label_accuracy(clf, x, eval_labels), "nn_ratio": _nn_ratio(x, data)}
        sweep.append((f"w = {w:g}", x[:: cfg["eval_per_class"]][:10]))
    strip_figure(sweep, out / "generation_guidance.png", "guidance sweep: classes 0..9 (w = 0 is unconditional)")
    # classical baseline: a Gaussian per class with the train split's mean and covariance
    gmx = class_gaussian_samples(data, torch.tensor(eval_labels), seed=0)
    gm_acc, gm_nn = label_accuracy(clf, gmx, eval_labels), _nn_ratio(gmx, data)
    s = rep.section("Generation", "generation")
    s.figure("generation_grid.png", "Class-conditional samples, one row per class (dpmpp_2m, 20 steps, guidance 3).")
    s.figure("generation_guidance.png", "Guidance sweep: the same seeds at w = 0 (unconditional), 1, 3, 5.")
    s.table(
        ["samples", "prompted-class accuracy", "nearest-neighbour ratio"],
        [[f"diffcore, guidance {w:g}", r["accuracy"], r["nn_ratio"]] for w, r in results.items()]
        + [["per-class Gaussian (baseline)", gm_acc, gm_nn]],
        f"{n_eval} samples per row; accuracy by a logistic-regression classifier trained on the train split; "
        "NN ratio = distance to the nearest train image / the same for held-out images (1 = as novel as real data)",
    )
    return {
        "guidance": {str(k): v for k, v in results.items()},
        "gaussian_baseline": {"accuracy": gm_acc, "nn_ratio": gm_nn},
    }

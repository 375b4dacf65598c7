"""The main job behind ``make demo`` / ``diffcore demo --out DIR``.

On the embedded digits data (scikit-learn's 8x8 handwritten digits, 20% held out, seed 0) the
demo trains, with fixed iteration budgets (:mod:`diffcore_plugins.demo.recipes`), a
class-conditional UNet (label dropout: also the unconditional model), a text-conditioned UNet (the
built-in tokenizer + embedding encoder, trained with it) and, for tabular anomaly detection, an
MLP on the benign rows of scikit-learn's breast cancer table. It then runs every task
(:mod:`diffcore_plugins.demo.stages`): generation (class grid and guidance sweep), text-to-image
on held-out paraphrases, image-to-image (SDEdit strength strip, RePaint inpainting), denoising at
sigma 25/50/75 and anomaly detection (synthetic defects on held-out digits; malignant tumours),
scores each against a classical baseline run side by side (:mod:`diffcore.evaluation`), and
writes ``report.html`` and ``report.md`` with the figures beside them. Then it compares a
flow-matching model of the digits network (same data and budget) with the diffusion model at
1-10 Euler steps, and every sampler and sigma schedule on the digits model by FD and model
evaluations, both scored with the CNN evaluator of ``benchmarks/quality`` (trained on the train
split, cached with the runs).

Runs are cached in ``DIR/runs/<name>`` with the recipe that made them: a rerun with the same
recipe reuses the checkpoint (``retrain=True`` trains again). ``quick=True`` shrinks every budget
(a smoke run for tests; its numbers mean nothing). The closed-form sampler study
(:mod:`diffcore_plugins.demo.study`) is included as the report's last section.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffcore import ops
from diffcore.evaluation import Evaluator, load_evaluator, normal_split, pixel_classifier
from diffcore.evaluation.recipes import DIGITS_DATA
from diffcore_plugins.demo import study
from diffcore_plugins.demo.figures import plot_losses
from diffcore_plugins.demo.recipes import FULL, QUICK
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import jsonable, log, prepare_out, train_or_reuse
from diffcore_plugins.demo.stages import anomaly, denoising, flow, generation, img2img, sampler_sweep, text2image

__all__ = ["breast_cancer_split", "main"]

MODELS = {
    "digits": "class-conditional UNet (unconditional via the null label)",
    "text": "text_unet + built-in encoder",
    "tabular": "MLP on benign breast-cancer rows",
    "flow": "the digits UNet trained by flow matching",
}


def breast_cancer_split(out: Path, seed: int = 0) -> dict[str, Any]:
    """80% of the benign rows for training (written as CSV for ``diffcore.train``) and a test set
    of the other benign rows + all malignant rows (label 1), as raw values."""
    from sklearn.datasets import load_breast_cancer

    bc = load_breast_cancer()
    values, target = bc.data.astype(np.float64), bc.target  # target 1 = benign
    train, test, labels = normal_split(values, target == 0, 0.8, seed)
    cols = [c.replace(" ", "_") for c in bc.feature_names]
    path = out / "data" / "breast_cancer_benign_train.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, train, delimiter=",", header=",".join(cols), comments="", fmt="%.10g")
    return {"path": path, "columns": cols, "raw_train": train, "raw_test": test, "test_labels": labels}


def _report(data: Any, backend: str, quick: bool, recipes: dict[str, Any], training: dict[str, Any]) -> Report:
    """The report's title, intro and training section."""
    cpu, threads = platform.processor() or platform.machine(), torch.get_num_threads()
    machine_line = f"Kernel backend: {backend}. torch {torch.__version__}, {cpu}, {threads} torch thread(s)."
    quick_note = " QUICK MODE: tiny models and budgets, the numbers mean nothing." if quick else ""
    rep = Report(
        "diffcore demo",
        [
            machine_line,
            f"Data: scikit-learn's 8x8 handwritten digits ({len(data.train)} train / {len(data.test)} held-out) and "
            "breast cancer table; every score below is on held-out data." + quick_note,
        ],
    )
    s = rep.section("Training", "training")
    s.table(
        ["model", "what", "iterations", "train seconds"],
        [
            [name, what, recipes[name]["steps"], "reused" if training[name]["reused"] else training[name]["seconds"]]
            for name, what in MODELS.items()
        ],
    )
    s.figure("training_loss.png", "Training loss (metrics.jsonl of each run).", width=900)
    return rep


def _samplers(path: Path, rep: Report, quick: bool) -> dict[str, Any]:
    """The closed-form sampler study, copied in as the report's last section."""
    log("sampler study on closed-form data")
    st = study.main(path / "study", quick=quick)
    for name in ("samplers.png", "samples.png"):
        shutil.copyfile(path / "study" / name, path / f"study_{name}")
    s = rep.section("Samplers", "samplers")
    s.text(
        "Every deterministic sampler on a Gaussian mixture whose exact denoiser is known, against an RK4 solution "
        "of the probability-flow ODE: error vs steps and the estimated order of convergence, and error vs model "
        "evaluations next to dpm_adaptive, which picks its own steps for a tolerance. The CFG++ samplers are left "
        "out (without guidance they are euler and dpmpp_2m)."
    )
    s.table(
        ["sampler", "estimated order", "model evaluations at the most steps"],
        [[k, v, st["model_evaluations"][k][-1]] for k, v in st["orders"].items()],
    )
    ad = st["adaptive"]
    s.table(
        ["dpm_adaptive rtol", "model evaluations", "RMS error"],
        [[f"{r:g}", n, f"{e:.2e}"] for r, n, e in zip(ad["rtol"], ad["model_evaluations"], ad["errors"])],
        f"atol {ad['atol']:g}, order 3",
    )
    s.figure("study_samplers.png", "Error vs steps and vs model evaluations per sampler.", width=1000)
    s.figure("study_samples.png", "Samples of the stochastic samplers vs data.", width=900)
    return {"orders": st["orders"], "adaptive": ad}


def main(out: str | Path = "outputs/demo", *, quick: bool = False, retrain: bool = False) -> dict[str, Any]:
    """Train (or reuse) the demo models, run every task, write ``report.html`` / ``report.md`` to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import diffcore
    from diffcore.tasks.anomaly import standardize

    path = prepare_out(out)
    cfg = QUICK if quick else FULL
    start = time.perf_counter()
    # These models are small: a second intra-op thread buys little on 2 cores, and when another job
    # holds a core a 2-thread step waits for it (benchmarks/quality/README.md). DIFFCORE_THREADS overrides.
    torch.set_num_threads(int(os.environ.get("DIFFCORE_THREADS", "1")))
    backend = ops.backend()
    log(f"kernel backend: {backend}; torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    runs = path / "runs"
    bc = breast_cancer_split(path)
    recipes = {
        "digits": cfg["digits"],
        "text": cfg["text"],
        "tabular": {
            **cfg["tabular"],
            "dataset": "tabular",
            "dataset_options": {"path": str(bc["path"]), "holdout": 0.1, "seed": 0},
        },
    }
    pipes, training = {}, {}
    for name, recipe in recipes.items():
        pipes[name], training[name] = train_or_reuse(name, recipe, runs, retrain)
    with torch.random.fork_rng(devices=[]):  # trained last, without touching the global RNG the stages see
        pipes["flow"], training["flow"] = train_or_reuse("flow", cfg["flow"], runs, retrain)
    recipes["flow"] = cfg["flow"]
    plot_losses(runs, list(recipes), path / "training_loss.png")
    data = diffcore.get("datasets", "digits")(seed=0, holdout=0.2)
    clf = pixel_classifier(data.train, data.train_labels)
    tab = {
        "train": standardize(pipes["tabular"], bc["raw_train"]),
        "test": standardize(pipes["tabular"], bc["raw_test"]),
        "test_labels": bc["test_labels"],
        # the sklearn-style detector with its defaults, on raw rows (quick: the tabular recipe's steps)
        "raw_train": bc["raw_train"],
        "raw_test": bc["raw_test"],
        "detector_steps": cfg["tabular"]["steps"] if quick else None,
    }
    rep = _report(data, backend, quick, recipes, training)
    results: dict[str, Any] = {"kernel_backend": backend, "quick": quick, "training": training, "stage_seconds": {}}
    samples = cfg["samples"]
    evaluator: Callable[[], Evaluator] = functools.cache(
        lambda: load_evaluator("digits", data, cfg["evaluator"], DIGITS_DATA, runs / "evaluator-digits.safetensors")
    )
    models = {"diffusion": pipes["digits"], "flow": pipes["flow"]}
    stages: dict[str, Callable[[], dict[str, Any]]] = {
        "generation": lambda: generation.run(pipes["digits"], data, clf, samples, path, rep),
        "text2image": lambda: text2image.run(pipes["text"], clf, samples, path, rep),
        "img2img": lambda: img2img.run(pipes["digits"], data, clf, samples, path, rep),
        "denoising": lambda: denoising.run(pipes["digits"], data, samples, path, rep),
        "anomaly": lambda: anomaly.run(pipes["digits"], pipes["tabular"], data, tab, path, rep),
        "flow": lambda: flow.run(models, data, evaluator(), samples, path, rep),
        "sampler_sweep": lambda: sampler_sweep.run(pipes["digits"], data, evaluator(), cfg, path, rep),
    }
    for name, run in stages.items():
        t0 = time.perf_counter()
        results[name] = run()
        results["stage_seconds"][name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {results['stage_seconds'][name]:.0f} s")
    results["samplers"] = _samplers(path, rep, quick)
    results["seconds"] = round(time.perf_counter() - start, 1)
    rep.intro.append(f"Total demo time {results['seconds']:.0f} s (training included unless reused).")
    md, page = rep.write(path)
    (path / "results.json").write_text(json.dumps(results, indent=2, default=jsonable) + "\n")
    log(f"wrote {page}, {md} and results.json in {results['seconds']:.0f} s")
    return results

"""How diffcore's tasks are evaluated: one home for the judges and baselines that the demo
(``diffcore demo``) and the quality benchmarks (``benchmarks/quality``) both use.

- :mod:`~diffcore.evaluation.classifier`: the small-CNN evaluator (FD features, class
  predictions, cached by recipe) and the logistic-regression pixel classifier.
- :mod:`~diffcore.evaluation.generation`: balanced labels, the per-class Gaussian baseline and
  the real-vs-real FD floor.
- :mod:`~diffcore.evaluation.anomaly`: AUROC, the semi-supervised split, classical detectors and
  reconstruction maps.
- :mod:`~diffcore.evaluation.images`: PSNR of restored images.
- :mod:`~diffcore.evaluation.recipes`: the training recipes the benchmarks chose, which the demo
  trains with too.
- :mod:`~diffcore.evaluation.convergence`: sampler errors against the exact ODE solution on a
  Gaussian mixture (fixed steps, and dpm_adaptive by tolerance) and the estimated order of convergence.
- :mod:`~diffcore.evaluation.sweep`: samplers and sigma schedules compared on a trained model, by
  model evaluations, and the configurations that reach a target FD in the fewest.

The classical denoising and inpainting baselines (Wiener, kNN fill) and the synthetic defects
are in :mod:`diffcore.baselines`; the metrics themselves (FD, NN ratio, PSNR, SSIM) in
:mod:`diffcore.metrics`.
"""

from __future__ import annotations

from diffcore.evaluation.anomaly import (
    DETECTORS,
    KNNDistance,
    PyODDetector,
    auprc,
    auroc,
    baseline_estimators,
    classical_maps,
    classical_scores,
    nearest_train,
    normal_split,
)
from diffcore.evaluation.classifier import (
    Evaluator,
    SmallCNN,
    label_accuracy,
    load_evaluator,
    pixel_classifier,
    train_evaluator,
)
from diffcore.evaluation.convergence import (
    adaptive_errors,
    estimated_order,
    mixture_log_density,
    rms_error,
    sampler_errors,
)
from diffcore.evaluation.generation import balanced_labels, class_gaussian_samples, real_fd, train_subset
from diffcore.evaluation.images import psnr_db
from diffcore.evaluation.sweep import (
    ADAPTIVE,
    TIMESTEPS,
    EvaluationCounter,
    fd_target,
    fewest_evaluations,
    generate_run,
    is_cfg_pp,
    model_calls,
    run_cost,
    run_sweep,
    sigma_schedules,
    stepped_samplers,
    uniform_flow_sigmas,
    with_schedule,
)

__all__ = [
    "ADAPTIVE",
    "DETECTORS",
    "TIMESTEPS",
    "EvaluationCounter",
    "Evaluator",
    "KNNDistance",
    "PyODDetector",
    "SmallCNN",
    "adaptive_errors",
    "auprc",
    "auroc",
    "balanced_labels",
    "baseline_estimators",
    "class_gaussian_samples",
    "classical_maps",
    "classical_scores",
    "estimated_order",
    "fd_target",
    "fewest_evaluations",
    "generate_run",
    "is_cfg_pp",
    "label_accuracy",
    "load_evaluator",
    "mixture_log_density",
    "model_calls",
    "nearest_train",
    "normal_split",
    "pixel_classifier",
    "psnr_db",
    "real_fd",
    "rms_error",
    "run_cost",
    "run_sweep",
    "sampler_errors",
    "sigma_schedules",
    "stepped_samplers",
    "train_evaluator",
    "train_subset",
    "uniform_flow_sigmas",
    "with_schedule",
]

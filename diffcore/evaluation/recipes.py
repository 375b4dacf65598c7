"""The training recipes the quality benchmarks chose (``benchmarks/quality``), which ``diffcore demo``
trains with too (on its own, smaller budgets): one place for each, so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

__all__ = [
    "DIGITS_DATA",
    "DIGITS_EVALUATOR",
    "DIGITS_FLOW",
    "DIGITS_TRAINING",
    "DIGITS_UNET",
    "TABLE_MLP",
    "TABLE_PREDICTION",
    "TABLE_SCHEDULE",
    "TABLE_TRAIN",
]

# The class-conditional digits UNet of benchmarks/quality/digits.py.
DIGITS_UNET: dict[str, Any] = {
    "base_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": 2,
    "attention_resolutions": [],
    "num_heads": 4,
    "dropout": 0.0,
    "groups": 8,
}
# How digits models train and sample: cosine alpha_bar (Nichol & Dhariwal 2021), v-prediction with
# min-SNR weighting (Hang et al. 2023, gamma 5), dpmpp_2m at 20 steps.
DIGITS_TRAINING: dict[str, Any] = {
    "schedule": "squaredcos_cap_v2",
    "schedule_options": {"num_train_timesteps": 1000},
    "prediction": "v_prediction",
    "sampler": "dpmpp_2m",
    "sample_steps": 20,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "grad_clip": 1.0,
    "loss_weighting": "min_snr",
    "min_snr_gamma": 5.0,
    "seed": 0,
}
# The flow-matching version of the digits recipe (benchmarks/quality/flow.py; issue #14): the same
# network, data and optimizer on the velocity of the straight path x_t = (1 - t) x0 + t eps, SD3's
# logit-normal training times (Esser et al. 2024), uniform loss weights, sampled with Euler. Applied
# on top of DIGITS_TRAINING.
DIGITS_FLOW: dict[str, Any] = {
    "schedule": "flow",
    "schedule_options": {},
    "prediction": "flow",
    "timestep_sampling": "logit_normal",
    "loss_weighting": "uniform",
    "sampler": "euler",
}
# The digits split every benchmark trains and scores on, and the CNN evaluator's recipe on it
# (benchmarks/quality/evaluator.py; diffcore.evaluation.load_evaluator's arguments): held-out
# accuracy 0.994, trains in ~8 s.
DIGITS_DATA: dict[str, Any] = {"dataset": "digits", "options": {"seed": 0, "holdout": 0.2}}
DIGITS_EVALUATOR: dict[str, Any] = {
    "channels": [16, 32],
    "pools": 1,
    "feature_dim": 64,
    "dropout": 0.3,
    "epochs": 30,
    "batch_size": 64,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "seed": 0,
}
# Tabular anomaly detection (benchmarks/quality/anomaly.py, chosen on development seeds 10 and 11 of
# breast cancer): an MLP on the normal rows, epsilon-prediction on the cosine schedule.
TABLE_MLP: dict[str, Any] = {"hidden": 128, "depth": 3}
TABLE_SCHEDULE, TABLE_PREDICTION = "squaredcos_cap_v2", "epsilon"
TABLE_TRAIN: dict[str, Any] = {
    "steps": 1500,
    "batch_size": 64,
    "lr": 1e-3,
    "warmup_steps": 50,
    "lr_schedule": "cosine",
    "ema_decay": 0.99,
}

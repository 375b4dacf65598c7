"""The demo's fixed recipes: what each model trains with and how many samples each stage draws.

``FULL`` is ``make demo`` (~15 min on 2 cores, most of it training); ``QUICK`` shrinks every budget
(a smoke run for tests; its numbers mean nothing). The flow-matching model is the digits model's
network, data and budget with the flow recipe of ``benchmarks/quality/flow.py``.
"""

from __future__ import annotations

from typing import Any

from diffcore.evaluation.recipes import (
    DIGITS_EVALUATOR,
    DIGITS_FLOW,
    DIGITS_TRAINING,
    DIGITS_UNET,
    TABLE_MLP,
    TABLE_PREDICTION,
    TABLE_SCHEDULE,
    TABLE_TRAIN,
)

__all__ = ["FLOW_STEPS", "FULL", "GUIDANCE", "QUICK", "SIGMAS", "STRENGTHS"]

# The fixed budgets of the full demo (~15 min on 2 cores, most of it training). The models and how
# they train are the ones benchmarks/quality chose (diffcore.evaluation.recipes), on smaller budgets.
FULL: dict[str, Any] = {
    "digits": {
        **DIGITS_TRAINING,
        "dataset": "digits",
        "dataset_options": {"seed": 0, "holdout": 0.2},
        "model": "unet",
        "model_config": DIGITS_UNET,
        "steps": 600,
        "batch_size": 128,
        "warmup_steps": 50,
        "ema_decay": 0.995,
        "label_dropout": 0.2,
    },
    "text": {
        **DIGITS_TRAINING,
        "dataset": "digits",
        "dataset_options": {"seed": 0, "holdout": 0.2},
        "model": "text_unet",
        "model_config": {
            "unet": {
                "in_channels": 1,
                "image_size": 8,
                "base_channels": 32,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attention_resolutions": [4],
                "groups": 8,
                "num_heads": 4,
            },
            "encoder": {"name": "builtin", "config": {"dim": 64, "layers": 1, "heads": 4, "max_length": 16}},
        },
        "captions": "digits",
        "text_dropout": 0.1,
        "steps": 700,
        "batch_size": 64,
        "warmup_steps": 50,
        "ema_decay": 0.995,
    },
    "tabular": {
        "schedule": TABLE_SCHEDULE,
        "prediction": TABLE_PREDICTION,
        "sampler": "ddim",
        "sample_steps": 20,
        "model": "mlp",
        "model_config": TABLE_MLP,
        **TABLE_TRAIN,
        "seed": 0,
    },
    "samples": {
        "grid_per_class": 10,
        "eval_per_class": 30,
        "prompts_n": 8,
        "images": 40,
        "repaint_steps": 25,
        "repaint_jump": 5,
        "repaint_resample": 3,
        "repaint_draws": 4,
        "flow_per_class": 50,
        "sweep_per_class": 10,
    },
    "evaluator": DIGITS_EVALUATOR,
}
FULL["flow"] = {**FULL["digits"], **DIGITS_FLOW}  # same network, data and iterations
QUICK: dict[str, Any] = {
    "digits": {
        **FULL["digits"],
        "model_config": {**DIGITS_UNET, "base_channels": 8, "num_res_blocks": 1},
        "steps": 12,
        "batch_size": 32,
        "warmup_steps": 2,
        "sample_steps": 4,
    },
    "text": {
        **FULL["text"],
        "model_config": {
            "unet": {**FULL["text"]["model_config"]["unet"], "base_channels": 8},
            "encoder": {"name": "builtin", "config": {"dim": 16, "layers": 1, "heads": 2, "max_length": 16}},
        },
        "steps": 12,
        "batch_size": 16,
        "warmup_steps": 2,
        "sample_steps": 4,
    },
    "tabular": {**FULL["tabular"], "steps": 30, "batch_size": 32, "warmup_steps": 2, "sample_steps": 4},
    "samples": {
        "grid_per_class": 2,
        "eval_per_class": 2,
        "prompts_n": 2,
        "images": 8,
        "repaint_steps": 4,
        "repaint_jump": 2,
        "repaint_resample": 2,
        "repaint_draws": 2,
        "flow_per_class": 2,
        "sweep_per_class": 1,
    },
    "evaluator": {**DIGITS_EVALUATOR, "epochs": 2},
}
QUICK["flow"] = {**QUICK["digits"], **DIGITS_FLOW}
SIGMAS = (25, 50, 75)  # denoising, on the 0..255 scale
STRENGTHS = (0.2, 0.4, 0.6, 0.8)
GUIDANCE = (0.0, 1.0, 3.0, 5.0)
FLOW_STEPS = (1, 2, 4, 10)  # the few-step comparison of the flow and diffusion models (Euler)
# The digits sampler sweep: every sampler at these (few) steps, the sigma schedules for a few
# samplers, dpm_adaptive by tolerance; the FD target is 1.1 x that of the model's default sampling
# (dpmpp_2m at ``reference_steps``), whose plan also bounds dpm_adaptive's integration.
FULL["sweep"] = {
    "steps": (2, 4, 8),
    "reference_steps": 20,
    "schedule_samplers": ("euler", "dpmpp_2m"),
    "rtols": (0.1, 0.05, 0.02),
}
QUICK["sweep"] = {"steps": (2, 4), "reference_steps": 4, "schedule_samplers": ("euler", "dpmpp_2m"), "rtols": (0.1,)}

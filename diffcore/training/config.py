"""Training hyper-parameters, validated where they enter."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from diffcore.training.objective import WEIGHTINGS, check_timestep_sampling

LR_SCHEDULES = ("constant", "cosine")
MAX_STEPS = 10**9  # optimizer steps one run may ask for
MAX_BATCH = 2**20  # samples per step


@dataclass
class TrainConfig:
    """Optimizer, schedule and bookkeeping of one training run (JSON-serializable)."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    timestep_sampling: str = "uniform"  # uniform | logit_normal | mode (SD3); discrete and flow schedules
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    label_dropout: float = 0.1
    bf16: bool = False
    checkpoint_every: int = 500
    log_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: {what}")

        need(isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS, "steps", f"must be in [1, {MAX_STEPS}]")
        need(
            isinstance(self.batch_size, int) and 1 <= self.batch_size <= MAX_BATCH,
            "batch_size",
            f"must be an integer in [1, {MAX_BATCH}]",
        )
        need(0 < self.lr <= 1, "lr", "must be in (0, 1] (AdamW moves each weight by about lr per step)")
        need(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, "warmup_steps", "must be an integer >= 0")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"expected one of {LR_SCHEDULES}")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "beta1 and beta2 must be in [0, 1)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1)")
        need(0 <= self.grad_clip < float("inf"), "grad_clip", "must be a finite number >= 0 (0 disables clipping)")
        need(self.loss_weighting in WEIGHTINGS, "loss_weighting", f"expected one of {WEIGHTINGS}")
        need(self.min_snr_gamma > 0, "min_snr_gamma", "must be > 0")
        need(self.sigma_data > 0, "sigma_data", "must be > 0")
        check_timestep_sampling(self.timestep_sampling, self.logit_std, self.mode_scale)
        need(0 <= self.label_dropout < 1, "label_dropout", "must be in [0, 1)")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        need(isinstance(self.log_every, int) and self.log_every >= 1, "log_every", "must be >= 1")
        need(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "must be an integer in [0, 2**63)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

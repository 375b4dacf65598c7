"""The training objective: where noise levels are drawn, how a batch is noised, how it is weighted.

A batch is noised by ONE fused op, :func:`diffcore.ops.forward_noise`, from a table of per-level
rows ``[c_x0, c_eps, t_x0, t_eps]``: ``x_t = c_x0*x0 + c_eps*eps`` and the target
``t_x0*x0 + t_eps*eps`` of the parameterization. The loss on the target is weighted so that it
equals a chosen weighting of the x0 error: with ``x0 = a*x + b*out`` an error ``e`` in the model
output is an error ``b*e`` in x0, so an x0-space weight ``lambda`` becomes ``lambda * b**2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcore.parameterization import Parameterization
from diffcore.schedules import DiscreteSchedule, EDMSchedule, Schedule

WEIGHTINGS = ("uniform", "min_snr", "edm")


def x0_weight(weighting: str, alpha: Tensor, std: Tensor, *, gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor:
    """x0-space loss weight: ``min_snr`` = min(SNR, gamma) (Hang et al. 2023, "Efficient Diffusion
    Training via Min-SNR Weighting"), ``edm`` = (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022,
    eq. 8 with lambda = 1/c_out^2), VE sigma = std / alpha."""
    snr = (alpha / std) ** 2
    if weighting == "min_snr":
        return snr.clamp(max=gamma)
    if weighting == "edm":
        sigma2 = 1.0 / snr
        return (sigma2 + sigma_data**2) / (sigma2 * sigma_data**2)
    raise ValueError(f"loss weighting {weighting!r} has no x0-space form; expected one of {WEIGHTINGS}")


@dataclass
class Objective:
    """Noise-level sampling + forward table + loss weights for one schedule and parameterization."""

    schedule: Schedule
    param: Parameterization
    weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    sigma_data: float = 0.5
    p_mean: float = -1.2  # EDM's log-normal sigma distribution (Karras et al. 2022, Table 1)
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"loss_weighting={self.weighting!r}: expected one of {WEIGHTINGS}")
        if self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma={self.min_snr_gamma} must be > 0")
        if isinstance(self.schedule, DiscreteSchedule):
            abar = self.schedule.alphas_cumprod_clamped()
            self._alpha, self._std = abar.sqrt(), (1 - abar).sqrt()
            self._table = self._rows(self._alpha, self._std)

    def _rows(self, alpha: Tensor, std: Tensor) -> Tensor:
        rows = torch.empty(alpha.shape[0], 4, dtype=torch.float64)
        for i, (a, s) in enumerate(zip(alpha.tolist(), std.tolist())):
            t_x0, t_eps = self.param.target_coeffs(a, s)
            rows[i] = torch.tensor([a, s, t_x0, t_eps], dtype=torch.float64)
        return rows

    def _weights(self, alpha: Tensor, std: Tensor) -> Tensor:
        if self.weighting == "uniform":
            return torch.ones_like(alpha)
        b = torch.tensor([self.param.x0_coeffs(a, s)[1] for a, s in zip(alpha.tolist(), std.tolist())],
                         dtype=torch.float64)
        return x0_weight(self.weighting, alpha, std, gamma=self.min_snr_gamma, sigma_data=self.sigma_data) * b**2

    def draw(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(index, table, model_time, weight)`` for a batch: ``forward_noise(x0, eps, index, table)``
        noises it, the model sees ``model_time``, and ``weight`` scales each sample's loss."""
        if isinstance(self.schedule, DiscreteSchedule):
            t = torch.randint(0, self.schedule.num_train_timesteps, (batch,), generator=generator)
            alpha, std = self._alpha[t], self._std[t]
            return t, self._table, t.to(torch.float32), self._weights(alpha, std).float()
        assert isinstance(self.schedule, EDMSchedule)
        sigma = (torch.randn(batch, generator=generator, dtype=torch.float64) * self.p_std + self.p_mean).exp()
        alpha, std = torch.ones_like(sigma), sigma
        return torch.arange(batch), self._rows(alpha, std), sigma.float(), self._weights(alpha, std).float()

    def input_scale(self, model_time: Tensor) -> Tensor | None:
        """Per-sample c_in (None when it is 1 everywhere, as for VP states)."""
        if isinstance(self.schedule, EDMSchedule):
            return torch.tensor([self.param.input_scale(1.0, float(s)) for s in model_time], dtype=torch.float32)
        scales = {self.param.input_scale(1.0, 1.0), self.param.input_scale(0.5, math.sqrt(0.75))}
        if scales == {1.0}:
            return None
        abar = self.schedule.alphas_cumprod_clamped()  # type: ignore[union-attr]
        idx = model_time.long()
        return torch.tensor([self.param.input_scale(float(abar[i].sqrt()), float((1 - abar[i]).sqrt())) for i in idx],
                            dtype=torch.float32)

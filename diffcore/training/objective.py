"""The training objective: where noise levels are drawn, how a batch is noised, how it is weighted.

A batch is noised by ONE fused op, :func:`diffcore.ops.forward_noise`, from a table of per-level
rows ``[c_x0, c_eps, t_x0, t_eps]``: ``x_t = c_x0*x0 + c_eps*eps`` and the target
``t_x0*x0 + t_eps*eps`` of the parameterization. The loss on the target is weighted so that it
equals a chosen weighting of the x0 error: with ``x0 = a*x + b*out`` an error ``e`` in the model
output is an error ``b*e`` in x0, so an x0-space weight ``lambda`` becomes ``lambda * b**2``.

Noise levels are drawn uniformly over the training timesteps (discrete), log-normally in sigma
(EDM), or for flow schedules as a time u in [0, 1] from :data:`TIMESTEP_SAMPLINGS` (uniform,
SD3's logit-normal or mode sampling), shifted like the schedule's sampling times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcore.parameterization import Parameterization
from diffcore.schedules import DiscreteSchedule, EDMSchedule, FlowSchedule, Schedule

WEIGHTINGS = ("uniform", "min_snr", "edm")
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "mode")


def draw_times(
    sampling: str,
    batch: int,
    generator: torch.Generator,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> Tensor:
    """(batch,) float64 times in [0, 1] (1 = noise): ``uniform``; ``logit_normal``, the sigmoid of
    N(logit_mean, logit_std^2); ``mode``, ``1 - u - s (cos^2(pi u / 2) - 1 + u)`` of a uniform u
    (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 19 and 20)."""
    if sampling == "uniform":
        return torch.rand(batch, generator=generator, dtype=torch.float64)
    if sampling == "logit_normal":
        return torch.sigmoid(torch.randn(batch, generator=generator, dtype=torch.float64) * logit_std + logit_mean)
    if sampling == "mode":
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    raise ValueError(f"timestep_sampling={sampling!r}: expected one of {TIMESTEP_SAMPLINGS}")


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
    timestep_sampling: str = "uniform"  # see draw_times; discrete and flow schedules
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"loss_weighting={self.weighting!r}: expected one of {WEIGHTINGS}")
        if self.min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma={self.min_snr_gamma} must be > 0")
        check_timestep_sampling(self.timestep_sampling, self.logit_std, self.mode_scale)
        if isinstance(self.schedule, EDMSchedule) and self.timestep_sampling != "uniform":
            raise ValueError(
                f"timestep_sampling={self.timestep_sampling!r}: an EDM schedule draws log-normal "
                "sigmas (p_mean, p_std); use it with discrete or flow schedules"
            )
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
        b = torch.tensor(
            [self.param.x0_coeffs(a, s)[1] for a, s in zip(alpha.tolist(), std.tolist())], dtype=torch.float64
        )
        return x0_weight(self.weighting, alpha, std, gamma=self.min_snr_gamma, sigma_data=self.sigma_data) * b**2

    def draw(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(index, table, model_time, weight)`` for a batch: ``forward_noise(x0, eps, index, table)``
        noises it, the model sees ``model_time``, and ``weight`` scales each sample's loss."""
        if isinstance(self.schedule, DiscreteSchedule):
            T = self.schedule.num_train_timesteps
            if self.timestep_sampling == "uniform":
                t = torch.randint(0, T, (batch,), generator=generator)
            else:
                t = (self._times(batch, generator) * T).long().clamp(0, T - 1)
            alpha, std = self._alpha[t], self._std[t]
            return t, self._table, t.to(torch.float32), self._weights(alpha, std).float()
        if isinstance(self.schedule, FlowSchedule):
            t = self.schedule.train_times(self._times(batch, generator))
            alpha, std = 1 - t, t
            model_time = (t * self.schedule.num_train_timesteps).float()
            return torch.arange(batch), self._rows(alpha, std), model_time, self._weights(alpha, std).float()
        assert isinstance(self.schedule, EDMSchedule)
        sigma = (torch.randn(batch, generator=generator, dtype=torch.float64) * self.p_std + self.p_mean).exp()
        alpha, std = torch.ones_like(sigma), sigma
        return torch.arange(batch), self._rows(alpha, std), sigma.float(), self._weights(alpha, std).float()

    def _times(self, batch: int, generator: torch.Generator) -> Tensor:
        return draw_times(
            self.timestep_sampling,
            batch,
            generator,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
        )

    def input_scale(self, model_time: Tensor) -> Tensor | None:
        """Per-sample c_in (None when it is 1 everywhere, as for VP and flow states)."""
        if isinstance(self.schedule, EDMSchedule):
            return torch.tensor([self.param.input_scale(1.0, float(s)) for s in model_time], dtype=torch.float32)
        if isinstance(self.schedule, FlowSchedule):
            t = model_time.to(torch.float64) / self.schedule.num_train_timesteps
            flow_scales = [self.param.input_scale(1.0 - float(v), float(v)) for v in t]
            return None if set(flow_scales) == {1.0} else torch.tensor(flow_scales, dtype=torch.float32)
        if {self.param.input_scale(1.0, 1.0), self.param.input_scale(0.5, math.sqrt(0.75))} == {1.0}:
            return None
        assert isinstance(self.schedule, DiscreteSchedule)
        abar = self.schedule.alphas_cumprod_clamped()
        idx = model_time.long()
        return torch.tensor(
            [self.param.input_scale(float(abar[i].sqrt()), float((1 - abar[i]).sqrt())) for i in idx],
            dtype=torch.float32,
        )


def check_timestep_sampling(sampling: str, logit_std: float, mode_scale: float) -> None:
    """Raise for an unknown sampling, ``logit_std <= 0`` or a mode scale outside the range where
    the mode map is monotone, ``[-1, 2 / (pi - 2)]`` (Esser et al. 2024, eq. 20)."""
    if sampling not in TIMESTEP_SAMPLINGS:
        raise ValueError(f"timestep_sampling={sampling!r}: expected one of {TIMESTEP_SAMPLINGS}")
    if not logit_std > 0:
        raise ValueError(f"logit_std={logit_std} must be > 0")
    if not -1 <= mode_scale <= 2 / (math.pi - 2):
        raise ValueError(f"mode_scale={mode_scale} must be in [-1, {2 / (math.pi - 2):.4f}]")

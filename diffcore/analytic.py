"""Closed-form data: a Gaussian mixture whose exact denoiser E[x0 | x_t] is known.

It is the accuracy oracle of the samplers (tests, the sampler study of ``make demo``): the
exact epsilon-model (or v-, x0- or flow velocity model) of the mixture plugs into
:func:`diffcore.sample` like a trained network, and the probability-flow ODE solution is
computed to high precision by RK4 in log sigma (for a single Gaussian it is exact in closed
form). A flow path ``(1 - t) x0 + t eps`` is the VE path scaled by ``1 - t`` at
``sigma = t / (1 - t)``, so its ODE solution is the VE one, rescaled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcore.parameterization import ALIASES
from diffcore.schedules import DiscreteSchedule, EDMSchedule, FlowSchedule, Schedule


@dataclass(frozen=True)
class GaussianMixture:
    """``sum_k weights[k] * N(means[k], diag(stds[k]^2))`` in D dimensions (float64)."""

    means: Tensor  # (K, D)
    stds: Tensor  # (K, D)
    weights: Tensor  # (K,)

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.stds.shape != (k, d) or self.weights.shape != (k,):
            raise ValueError(
                f"means {tuple(self.means.shape)}, stds {tuple(self.stds.shape)}, "
                f"weights {tuple(self.weights.shape)} disagree"
            )
        if not bool((self.stds > 0).all()) or not bool((self.weights > 0).all()):
            raise ValueError("stds and weights must be positive")

    @classmethod
    def ring(cls, k: int = 8, radius: float = 2.0, std: float = 0.25, dim: int = 2) -> GaussianMixture:
        """k equal components on a circle of ``radius`` in the first two of ``dim`` dimensions."""
        angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
        means = torch.zeros(k, dim, dtype=torch.float64)
        means[:, 0], means[:, 1] = radius * angles.cos(), radius * angles.sin()
        stds = torch.full((k, dim), std, dtype=torch.float64)
        return cls(means, stds, torch.full((k,), 1.0 / k, dtype=torch.float64))

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        return self.means[comp] + self.stds[comp] * eps

    def denoise(self, x: Tensor, alpha: Tensor | float, std: Tensor | float) -> Tensor:
        """E[x0 | x] for ``x = alpha * x0 + std * eps``; x is (N, D), alpha/std scalars or (N,)."""
        x64 = x.to(torch.float64)
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float64).reshape(-1, 1, 1)
        var = a**2 * self.stds[None] ** 2 + s**2  # (N|1, K, D)
        diff = x64[:, None, :] - a * self.means[None]
        logp = -0.5 * (diff**2 / var + var.log()).sum(-1) + self.weights.log()[None]
        w = torch.softmax(logp, dim=1)  # (N, K)
        post = self.means[None] + a * self.stds[None] ** 2 / var * diff
        return (w[..., None] * post).sum(1).to(x.dtype)

    def velocity(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The exact flow velocity ``E[eps - x0 | x_t] = (x - E[x0 | x_t]) / t`` on the path
        ``x_t = (1 - t) x0 + t eps`` (Liu et al. 2023, eq. 2); t in (0, 1], scalar or (N,)."""
        t64 = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        x0 = self.denoise(x, 1 - t64, t64).to(torch.float64)
        return ((x.to(torch.float64) - x0) / t64[:, None]).to(x.dtype)

    def flow_ode_solution(self, x: Tensor, t_from: float, t_to: float, steps: int = 4000) -> Tensor:
        """The flow ODE ``dx/dt = velocity(x, t)`` from t_from < 1 to t_to > 0: the VE solution
        between ``sigma = t / (1 - t)``, with ``x_ve = x / (1 - t)``."""
        if not 1 > t_from > t_to > 0:
            raise ValueError(f"need 1 > t_from > t_to > 0, got {t_from}, {t_to}")
        x_ve = x.to(torch.float64) / (1 - t_from)
        return (1 - t_to) * self.ode_solution(x_ve, t_from / (1 - t_from), t_to / (1 - t_to), steps)

    def ode_solution(self, x_ve: Tensor, sigma_from: float, sigma_to: float, steps: int = 4000) -> Tensor:
        """Probability-flow ODE in VE units from sigma_from to sigma_to > 0, RK4 in log sigma."""
        if not sigma_from > sigma_to > 0:
            raise ValueError(f"need sigma_from > sigma_to > 0, got {sigma_from}, {sigma_to}")
        x = x_ve.to(torch.float64).clone()
        u0, u1 = math.log(sigma_from), math.log(sigma_to)
        h = (u1 - u0) / steps

        def f(xx: Tensor, u: float) -> Tensor:  # dx/du = sigma * dx/dsigma = x - D(x)
            s = math.exp(u)
            return xx - self.denoise(xx, 1.0, s)

        u = u0
        for _ in range(steps):
            k1 = f(x, u)
            k2 = f(x + 0.5 * h * k1, u + 0.5 * h)
            k3 = f(x + 0.5 * h * k2, u + 0.5 * h)
            k4 = f(x + h * k3, u + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            u += h
        return x


PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow")


def exact_model(mixture: GaussianMixture, schedule: Schedule, prediction: str = "epsilon") -> Callable[..., Tensor]:
    """The exact ``model(x, t)`` of the mixture for ``schedule``: epsilon (or v, x0, flow velocity)
    prediction.

    ``t`` is a discrete (possibly fractional, linearly interpolated like diffusers) timestep for a
    DiscreteSchedule, the VE sigma for an EDMSchedule and ``t * num_train_timesteps`` for a
    FlowSchedule; x is the sampler's state (N, D).
    """
    prediction = ALIASES.get(prediction, prediction)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction={prediction!r}: expected one of {PREDICTIONS}")
    levels = _levels(schedule)

    def model(x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        alpha, std = levels(t)
        x0 = mixture.denoise(x, alpha, std).to(torch.float64)
        x64 = x.to(torch.float64)
        a, s = alpha[:, None], std[:, None]
        eps = (x64 - a * x0) / s
        if prediction == "epsilon":
            out = eps
        elif prediction == "sample":
            out = x0
        elif prediction == "flow":
            out = eps - x0
        else:
            r = (a**2 + s**2).sqrt()
            out = (a * eps - s * x0) / r
        return out.to(x.dtype)

    return model


def _levels(schedule: Schedule) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Model time (B,) -> state (alpha, std), each (B,) float64, for ``schedule``."""
    if isinstance(schedule, DiscreteSchedule):
        train = schedule.train_sigmas()

        def levels(t: Tensor) -> tuple[Tensor, Tensor]:
            t64 = t.to(torch.float64)
            lo = t64.floor().long().clamp(0, train.shape[0] - 1)
            hi = (lo + 1).clamp(max=train.shape[0] - 1)
            s = train[lo] * (1 - (t64 - lo)) + train[hi] * (t64 - lo)
            alpha = 1 / (1 + s**2).sqrt()
            return alpha, s * alpha

        return levels
    if isinstance(schedule, EDMSchedule):
        return lambda t: (torch.ones_like(t, dtype=torch.float64), t.to(torch.float64))
    if isinstance(schedule, FlowSchedule):
        T = schedule.num_train_timesteps

        def flow_levels(t: Tensor) -> tuple[Tensor, Tensor]:
            tt = t.to(torch.float64) / T
            return 1 - tt, tt

        return flow_levels
    raise TypeError(f"unsupported schedule {type(schedule).__name__}")

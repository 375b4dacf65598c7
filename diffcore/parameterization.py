"""Parameterizations: what the network predicts, reduced to linear coefficients.

The sampler state is ``x = alpha * x0 + std * eps`` (see :mod:`diffcore.timesteps`). Every
parameterization turns the raw network output ``out`` into the denoised estimate with
``x0 = a * x + b * out`` and defines the training target as ``t_x0 * x0 + t_eps * eps``, so the
conversion happens once, inside the fused step, and samplers never branch on prediction type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Parameterization:
    """Base class; subclasses give the four coefficient functions for a level (alpha, std)."""

    name = "base"

    def x0_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        """(a, b) with ``x0 = a * x + b * out``."""
        raise NotImplementedError

    def input_scale(self, alpha: float, std: float) -> float:
        """c_in: the model sees ``c_in * x`` (1 for epsilon/sample/v on a VP state)."""
        return 1.0

    def target_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        """(t_x0, t_eps) with ``target = t_x0 * x0 + t_eps * eps``."""
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True)
class Epsilon(Parameterization):
    """The network predicts the noise (Ho et al. 2020): ``x0 = (x - std * eps) / alpha``."""

    name = "epsilon"

    def x0_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        if alpha == 0:
            return math.inf, -math.inf
        return 1.0 / alpha, -std / alpha

    def target_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        return 0.0, 1.0


@dataclass(frozen=True)
class Sample(Parameterization):
    """The network predicts the clean sample x0 directly."""

    name = "sample"

    def x0_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        return 0.0, 1.0

    def target_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        return 1.0, 0.0


@dataclass(frozen=True)
class VPrediction(Parameterization):
    """The network predicts ``v = (alpha * eps - std * x0) / r`` with ``r = sqrt(alpha^2 + std^2)``
    (Salimans & Ho 2022, "Progressive Distillation", appendix D); ``r = 1`` on a VP state."""

    name = "v_prediction"

    def x0_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        r2 = alpha * alpha + std * std
        return alpha / r2, -std / math.sqrt(r2)

    def target_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        r = math.sqrt(alpha * alpha + std * std)
        return -std / r, alpha / r


@dataclass(frozen=True)
class EDM(Parameterization):
    """EDM preconditioning (Karras et al. 2022, Table 1): ``D = c_skip x + c_out F(c_in x)`` in VE
    units (sigma = std / alpha), with ``c_skip = sd^2 / (sigma^2 + sd^2)``,
    ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``."""

    sigma_data: float = 0.5
    name = "edm"

    def __post_init__(self) -> None:
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data={self.sigma_data} must be > 0")

    def _c(self, sigma: float) -> tuple[float, float, float]:
        sd2 = self.sigma_data**2
        norm = math.sqrt(sigma * sigma + sd2)
        return sd2 / (sigma * sigma + sd2), sigma * self.sigma_data / norm, 1.0 / norm

    def x0_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        c_skip, c_out, _ = self._c(std / alpha)
        return c_skip / alpha, c_out

    def input_scale(self, alpha: float, std: float) -> float:
        return self._c(std / alpha)[2] / alpha

    def target_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        sigma = std / alpha
        c_skip, c_out, _ = self._c(sigma)
        return (1.0 - c_skip) / c_out, -c_skip * sigma / c_out

    def config(self) -> dict:
        return {"name": self.name, "sigma_data": self.sigma_data}


@dataclass(frozen=True)
class Flow(Parameterization):
    """The network predicts the velocity ``v = eps - x0`` of the straight path
    ``x_t = (1 - t) x0 + t eps`` (rectified flow: Liu et al. 2023, eq. 1; Lipman et al. 2023;
    diffusers' ``flow_prediction``). On any state ``alpha x0 + std eps`` the model sees the flow
    state ``x / (alpha + std)`` at ``t = std / (alpha + std)``, so ``x0 = (x - std v) / (alpha + std)``;
    on a flow state (alpha = 1 - t, std = t) that is ``x0 = x - t v``."""

    name = "flow"

    @staticmethod
    def _norm(alpha: float, std: float) -> float:
        norm = alpha + std
        return 1.0 if abs(norm - 1.0) <= 1e-12 else norm  # a flow state up to float64 rounding

    def x0_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        norm = self._norm(alpha, std)
        return 1.0 / norm, -std / norm

    def input_scale(self, alpha: float, std: float) -> float:
        return 1.0 / self._norm(alpha, std)

    def target_coeffs(self, alpha: float, std: float) -> tuple[float, float]:
        return -1.0, 1.0


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {
    "epsilon": Epsilon,
    "sample": Sample,
    "v_prediction": VPrediction,
    "edm": EDM,
    "flow": Flow,
}

# names other libraries use for the same parameterization (diffusers' ``prediction_type``)
ALIASES = {"flow_prediction": "flow"}


def make_parameterization(prediction: str | Parameterization, **kwargs: float) -> Parameterization:
    """Parameterization by name (``epsilon``, ``sample``, ``v_prediction``, ``edm``, ``flow``; or
    diffusers' ``flow_prediction``) or pass-through."""
    if isinstance(prediction, Parameterization):
        return prediction
    name = ALIASES.get(prediction, prediction) if isinstance(prediction, str) else prediction
    if name not in PARAMETERIZATIONS:
        raise ValueError(
            f"prediction={prediction!r}: expected one of {sorted(PARAMETERIZATIONS)} (or an alias {sorted(ALIASES)})"
        )
    return PARAMETERIZATIONS[name](**kwargs)

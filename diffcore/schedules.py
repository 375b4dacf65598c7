"""Noise schedules: the noise level of every training timestep (discrete) or a sigma range (EDM).

Names and keywords follow diffusers (``num_train_timesteps``, ``beta_start``, ``beta_end``,
``rescale_betas_zero_snr``, ``steps_offset``) so a diffusers scheduler config maps one to one.
All tables are float64. Build one by name through the registry::

    diffcore.get("schedules", "scaled_linear")(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

SIGMA_SPACINGS = ("timesteps", "karras", "exponential")


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Linearly spaced betas (Ho et al. 2020, DDPM, sec. 4)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Betas linear in sqrt(beta) (Rombach et al. 2022, latent diffusion)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Cosine alpha_bar (Nichol & Dhariwal 2021, "Improved DDPM", eq. 17), betas capped at max_beta."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float64)


def sigmoid_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    """Sigmoid-shaped betas over [-6, 6] (Xu et al. 2022, GeoDiff, appendix)."""
    ramp = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps, dtype=torch.float64))
    return ramp * (beta_end - beta_start) + beta_start


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale sqrt(alpha_bar) so the last timestep has zero SNR (Lin et al. 2023, Alg. 1)."""
    abar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * first / (first - last)
    abar = abar_sqrt**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1 - alphas


_BETA_FUNCTIONS = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "squaredcos_cap_v2": lambda n, beta_start, beta_end: cosine_betas(n),
    "sigmoid": sigmoid_betas,
}


@dataclass(frozen=True)
class DiscreteSchedule:
    """A variance-preserving schedule over ``num_train_timesteps`` integer timesteps.

    ``sigma_spacing`` picks how sampling noise levels are spaced: ``"timesteps"`` (the levels of
    the spaced timesteps), ``"karras"`` (Karras et al. 2022, eq. 5, with ``rho``) or
    ``"exponential"`` (uniform in log sigma); the latter two map back to fractional timesteps.
    """

    name: str
    betas: Tensor
    num_train_timesteps: int
    beta_start: float = 0.0001
    beta_end: float = 0.02
    sigma_spacing: str = "timesteps"
    rho: float = 7.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    alphas_cumprod: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sigma_spacing not in SIGMA_SPACINGS:
            raise ValueError(f"sigma_spacing={self.sigma_spacing!r}: expected one of {SIGMA_SPACINGS}")
        if self.rho <= 0:
            raise ValueError(f"rho={self.rho} must be > 0")
        if self.steps_offset < 0:
            raise ValueError(f"steps_offset={self.steps_offset} must be >= 0")
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - self.betas, 0))

    @property
    def kind(self) -> str:
        return "discrete"

    def alphas_cumprod_clamped(self) -> Tensor:
        """alpha_bar with a zero terminal value replaced by 2**-24, as sigma-space solvers need."""
        abar = self.alphas_cumprod.clone()
        abar[abar <= 0] = 2.0**-24
        return abar

    def train_sigmas(self, clamp_zero_snr: bool = True) -> Tensor:
        """VE noise level sigma_t = sqrt((1 - abar) / abar) for every training timestep."""
        abar = self.alphas_cumprod_clamped() if clamp_zero_snr else self.alphas_cumprod
        return ((1 - abar) / abar).sqrt()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Fractional timestep of each VE sigma, by linear interpolation in log sigma."""
        log_sigmas = self.train_sigmas().log()
        log_sigma = sigma.to(torch.float64).clamp_min(1e-10).log()
        idx = torch.searchsorted(log_sigmas, log_sigma.reshape(-1), right=True) - 1
        idx = idx.clamp(0, log_sigmas.shape[0] - 2)
        lo, hi = log_sigmas[idx], log_sigmas[idx + 1]
        w = ((log_sigma.reshape(-1) - lo) / (hi - lo)).clamp(0, 1)
        return (idx + w).reshape(sigma.shape)

    def config(self) -> dict:
        """Keyword arguments that rebuild this schedule with :func:`make_schedule`."""
        return {
            "name": self.name,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "sigma_spacing": self.sigma_spacing,
            "rho": self.rho,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "steps_offset": self.steps_offset,
            "rescale_betas_zero_snr": self.rescale_betas_zero_snr,
        }


@dataclass(frozen=True)
class EDMSchedule:
    """Continuous noise levels of Karras et al. 2022 (EDM), eq. 5: sigma_max -> sigma_min with rho."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    name: str = "edm"

    def __post_init__(self) -> None:
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}")
        if self.rho <= 0:
            raise ValueError(f"rho={self.rho} must be > 0")

    @property
    def kind(self) -> str:
        return "continuous"

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}


Schedule = DiscreteSchedule | EDMSchedule


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> Tensor:
    """n sigmas from sigma_max down to sigma_min, uniform in sigma**(1/rho) (Karras et al. 2022, eq. 5)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> Tensor:
    """n sigmas from sigma_max down to sigma_min, uniform in log sigma."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


def _discrete(name: str, spacing: str = "timesteps"):
    def build(
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        *,
        rescale_betas_zero_snr: bool = False,
        steps_offset: int = 0,
        rho: float = 7.0,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        beta_schedule: str | None = None,
    ) -> DiscreteSchedule:
        base = beta_schedule or (name if spacing == "timesteps" else "linear")
        if base not in _BETA_FUNCTIONS:
            raise ValueError(f"beta_schedule={base!r}: expected one of {sorted(_BETA_FUNCTIONS)}")
        if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps={num_train_timesteps} must be an integer >= 2")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        betas = _BETA_FUNCTIONS[base](int(num_train_timesteps), beta_start, beta_end)
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)
        return DiscreteSchedule(
            name=base,
            betas=betas,
            num_train_timesteps=int(num_train_timesteps),
            beta_start=beta_start,
            beta_end=beta_end,
            sigma_spacing=spacing,
            rho=rho,
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    build.__name__ = name
    build.__doc__ = f"Build the {name!r} discrete schedule (diffusers keyword names)."
    return build


SCHEDULES = {
    "linear": _discrete("linear"),
    "scaled_linear": _discrete("scaled_linear"),
    "squaredcos_cap_v2": _discrete("squaredcos_cap_v2"),
    "sigmoid": _discrete("sigmoid"),
    "karras": _discrete("karras", "karras"),
    "exponential": _discrete("exponential", "exponential"),
    "edm": EDMSchedule,
}


def make_schedule(name: str, **kwargs: object) -> Schedule:
    """Rebuild a schedule from :meth:`config` output (used by checkpoints)."""
    if name in ("karras", "exponential") or kwargs.get("sigma_spacing") not in (None, "timesteps"):
        spacing = kwargs.pop("sigma_spacing", name)
        kwargs.setdefault("beta_schedule", name if name in _BETA_FUNCTIONS else "linear")
        name = str(spacing)
    else:
        kwargs.pop("sigma_spacing", None)
    if name == "edm":
        return EDMSchedule(**kwargs)  # type: ignore[arg-type]
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)  # type: ignore[operator]

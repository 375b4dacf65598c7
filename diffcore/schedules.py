"""Noise schedules: the noise level of every training timestep (discrete), a sigma range (EDM) or
the time of a straight flow path (flow matching, :class:`FlowSchedule`).

Names and keywords follow diffusers (``num_train_timesteps``, ``beta_start``, ``beta_end``,
``rescale_betas_zero_snr``, ``steps_offset``) so a diffusers scheduler config maps one to one.
All tables are float64. Build one by name through the registry::

    diffcore.get("schedules", "scaled_linear")(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012)

Every schedule maps a VE noise level ``sigma`` (= std / alpha) to its state ``(alpha, std)``
(:meth:`state`) and to the time its model is given (:meth:`sigma_to_t`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

from diffcore.sigmas import AYS_MODELS, AYS_SIGMAS, ON_TRAINING_GRID, SIGMA_SPACINGS

# the spacing functions lived here first: re-exported
from diffcore.sigmas import beta_sigmas as beta_sigmas
from diffcore.sigmas import exponential_sigmas as exponential_sigmas
from diffcore.sigmas import karras_sigmas as karras_sigmas

# where a discrete schedule's sampling ends: at sigma 0 (clean data) or at training timestep 0's
# level (diffusers' final_sigmas_type="sigma_min", and DDIM's set_alpha_to_one=False)
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# the time a discrete schedule's model sees: the (fractional) training timestep, or the EDM-style
# c_noise = 0.25 * ln(sigma) (diffusers' timestep_type="continuous", EulerDiscreteScheduler)
TIMESTEP_TYPES = ("discrete", "continuous")


def vp_from_sigma(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """Variance-preserving state (alpha, std) = (1, sigma) / sqrt(1 + sigma^2) of VE sigmas; inf -> (0, 1)."""
    alphas = torch.where(torch.isinf(sigmas), torch.zeros_like(sigmas), 1 / (1 + sigmas**2).sqrt())
    stds = torch.where(torch.isinf(sigmas), torch.ones_like(sigmas), sigmas * alphas)
    return alphas, stds


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

    ``sigma_spacing`` picks how sampling noise levels are spaced (:mod:`diffcore.sigmas`):
    ``"timesteps"`` (the levels of the spaced timesteps), between two ends ``"karras"`` (Karras et
    al. 2022, eq. 5, with ``rho``), ``"exponential"``, ``"beta"``, ``"kl_optimal"`` (ends
    ``sigma_min`` / ``sigma_max`` when set); on the training grid ``"simple"``, ``"sgm_uniform"``;
    or the Align Your Steps table of ``ays_model`` (``"align_your_steps"``). Levels map back to
    (fractional) timesteps. ``final_sigmas_type="sigma_min"`` ends sampling at training
    timestep 0 instead of sigma 0; ``timestep_type="continuous"`` gives the model
    ``0.25 * ln(sigma)`` instead of the timestep (:data:`FINAL_SIGMAS_TYPES`, :data:`TIMESTEP_TYPES`).
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
    ays_model: str = "sd15"
    final_sigmas_type: str = "zero"
    timestep_type: str = "discrete"
    alphas_cumprod: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sigma_spacing not in SIGMA_SPACINGS:
            raise ValueError(f"sigma_spacing={self.sigma_spacing!r}: expected one of {SIGMA_SPACINGS}")
        if self.rho <= 0:
            raise ValueError(f"rho={self.rho} must be > 0")
        if self.steps_offset < 0:
            raise ValueError(f"steps_offset={self.steps_offset} must be >= 0")
        if self.ays_model not in AYS_MODELS:
            raise ValueError(f"ays_model={self.ays_model!r}: expected one of {AYS_MODELS}")
        if self.final_sigmas_type not in FINAL_SIGMAS_TYPES:
            raise ValueError(f"final_sigmas_type={self.final_sigmas_type!r}: expected one of {FINAL_SIGMAS_TYPES}")
        if self.timestep_type not in TIMESTEP_TYPES:
            raise ValueError(f"timestep_type={self.timestep_type!r}: expected one of {TIMESTEP_TYPES}")
        fixed = self.sigma_spacing in (*ON_TRAINING_GRID, "align_your_steps")
        if fixed and (self.sigma_min is not None or self.sigma_max is not None):
            raise ValueError(
                f"sigma_spacing={self.sigma_spacing!r} places its own levels; sigma_min="
                f"{self.sigma_min} / sigma_max={self.sigma_max} apply only to spacings between two ends"
            )
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1 - self.betas, 0))
        if self.sigma_spacing == "align_your_steps":
            top, train_top = AYS_SIGMAS[self.ays_model][0], float(self.train_sigmas()[-1])
            if top > 1.01 * train_top:
                raise ValueError(
                    f"ays_model={self.ays_model!r}: its table starts at sigma {top}, above this "
                    f"schedule's largest training sigma {train_top:.6g}"
                )

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

    def state(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, std) of VE ``sigma`` on this variance-preserving schedule."""
        return vp_from_sigma(sigma.to(torch.float64))

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
            "ays_model": self.ays_model,
            # written only when set, so checkpoints of the default schedule keep their config
            **({"final_sigmas_type": self.final_sigmas_type} if self.final_sigmas_type != "zero" else {}),
            **({"timestep_type": self.timestep_type} if self.timestep_type != "discrete" else {}),
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
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )
        if self.rho <= 0:
            raise ValueError(f"rho={self.rho} must be > 0")

    @property
    def kind(self) -> str:
        return "continuous"

    def state(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, std) = (1, sigma): the EDM state is the VE state."""
        sigma = sigma.to(torch.float64)
        return torch.ones_like(sigma), sigma.clone()

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """The model is given sigma itself."""
        return sigma.to(torch.float64).clone()

    def config(self) -> dict:
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "rho": self.rho}


FLOW_SPACINGS = tuple(name for name in SIGMA_SPACINGS if name != "align_your_steps")
TIME_SHIFT_TYPES = ("exponential", "linear")


def calculate_shift(
    image_seq_len: int,
    base_image_seq_len: int = 256,
    max_image_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Dynamic-shift exponent mu for a latent of ``image_seq_len`` tokens: linear in the sequence
    length from ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len``
    (Flux; Esser et al. 2024, "Scaling Rectified Flow Transformers", sec. 5.3.2)."""
    if image_seq_len <= 0 or base_image_seq_len == max_image_seq_len:
        raise ValueError(
            f"need image_seq_len > 0 and base_image_seq_len != max_image_seq_len, got "
            f"{image_seq_len}, {base_image_seq_len}, {max_image_seq_len}"
        )
    slope = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    return float(image_seq_len * slope + base_shift - slope * base_image_seq_len)


def shift_times(t: Tensor, shift: float) -> Tensor:
    """``s t / (1 + (s - 1) t)``: the time shift of Esser et al. 2024, eq. 23 (s > 1: noisier)."""
    return shift * t / (1 + (shift - 1) * t)


def stretch_to_terminal(t: Tensor, terminal: float) -> Tensor:
    """Scale ``1 - t`` so the last time equals ``terminal`` (LTX-Video's shift_terminal)."""
    if not float(t[-1]) < 1:
        raise ValueError(
            f"shift_terminal={terminal} cannot stretch times that end at 1 (one step from t = 1); use steps >= 2"
        )
    return 1 - (1 - t) / ((1 - t[-1]) / (1 - terminal))  # diffusers' operation order


@dataclass(frozen=True)
class FlowSchedule:
    """Flow matching on the straight path ``x_t = (1 - t) x0 + t eps``, t in [0, 1] (rectified flow,
    Liu et al. 2023; Esser et al. 2024): the state is ``alpha = 1 - t``, ``std = t``, the VE level
    ``sigma = t / (1 - t)`` and the model is given ``t * num_train_timesteps`` (SD3, Flux).

    Keywords mean what they mean in diffusers' FlowMatchEulerDiscreteScheduler: ``shift`` maps t to
    ``shift_times(t, shift)``; with ``use_dynamic_shifting`` the shift is ``exp(mu)``
    (``time_shift_type="exponential"``) or ``mu`` (``"linear"``), mu set with :meth:`with_mu` or
    :meth:`with_image_seq_len`; ``shift_terminal`` stretches sampling times to end there.
    ``sigma_spacing`` respaces the sampling times, in flow time t as ComfyUI does for flow models:
    between their ends (``karras`` with ``rho``, ``exponential``, ``beta`` as diffusers'
    use_karras/exponential/beta_sigmas do, ``kl_optimal``), or on the shifted training grid
    ``shift(k / T)`` (``simple``, ``sgm_uniform``: the fractional index k as on discrete schedules).
    ``align_your_steps`` has no flow table and is refused.
    """

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    shift_terminal: float | None = None
    time_shift_type: str = "exponential"
    sigma_spacing: str = "timesteps"
    rho: float = 7.0
    mu: float | None = None
    name: str = "flow"

    def __post_init__(self) -> None:
        def need(ok: bool, field_name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"{field_name}={getattr(self, field_name)!r}: {what}")

        n = self.num_train_timesteps
        need(
            isinstance(n, int) and not isinstance(n, bool) and n >= 2, "num_train_timesteps", "must be an integer >= 2"
        )
        need(self.shift > 0, "shift", "must be > 0")
        need(self.time_shift_type in TIME_SHIFT_TYPES, "time_shift_type", f"expected one of {TIME_SHIFT_TYPES}")
        need(
            self.sigma_spacing != "align_your_steps",
            "sigma_spacing",
            "its tables are the noise levels of "
            "SD1.5/SDXL (VP) and SVD (EDM) models, not flow times; use kl_optimal, beta or karras on flow",
        )
        need(self.sigma_spacing in FLOW_SPACINGS, "sigma_spacing", f"expected one of {FLOW_SPACINGS}")
        need(self.rho > 0, "rho", "must be > 0")
        need(self.shift_terminal is None or 0 < self.shift_terminal < 1, "shift_terminal", "must be in (0, 1)")
        need(self.mu is None or math.isfinite(self.mu), "mu", "must be a finite number")
        need(
            self.mu is None or self.time_shift_type == "exponential" or self.mu > 0,
            "mu",
            "must be > 0 for time_shift_type='linear'",
        )

    @property
    def kind(self) -> str:
        return "flow"

    def with_mu(self, mu: float) -> FlowSchedule:
        """This schedule with the dynamic-shift exponent ``mu`` (diffusers' ``set_timesteps(mu=...)``)."""
        return replace(self, mu=float(mu))

    def with_image_seq_len(self, image_seq_len: int) -> FlowSchedule:
        """This schedule with mu of :func:`calculate_shift` for ``image_seq_len`` latent tokens."""
        return self.with_mu(
            calculate_shift(
                image_seq_len, self.base_image_seq_len, self.max_image_seq_len, self.base_shift, self.max_shift
            )
        )

    def effective_shift(self) -> float:
        """The s of :func:`shift_times`: ``shift``, or ``exp(mu)`` / ``mu`` under dynamic shifting."""
        if not self.use_dynamic_shifting:
            return float(self.shift)
        if self.mu is None:
            raise ValueError(
                "use_dynamic_shifting=True needs mu: use schedule.with_mu(mu) or schedule.with_image_seq_len(n)"
            )
        return math.exp(self.mu) if self.time_shift_type == "exponential" else float(self.mu)

    def train_times(self, u: Tensor) -> Tensor:
        """Training times from draws ``u`` in [0, 1]: shifted as sampling is (unshifted under dynamic
        shifting without mu, as diffusers' training scripts do for Flux)."""
        if self.use_dynamic_shifting and self.mu is None:
            return u.to(torch.float64)
        return shift_times(u.to(torch.float64), self.effective_shift())

    def state(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, std) = (1 - t, t) with ``t = sigma / (1 + sigma)``; sigma = inf -> (0, 1)."""
        t = flow_time(sigma)
        return 1 - t, t

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Model time ``t * num_train_timesteps`` of VE ``sigma``."""
        return flow_time(sigma) * self.num_train_timesteps

    def config(self) -> dict:
        """Keyword arguments that rebuild this schedule with :func:`make_schedule`."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}}


def flow_time(sigma: Tensor) -> Tensor:
    """Flow time ``t = sigma / (1 + sigma)`` of VE sigma (1 at sigma = inf)."""
    sigma = sigma.to(torch.float64)
    return torch.where(torch.isinf(sigma), torch.ones_like(sigma), sigma / (1 + sigma))


Schedule = DiscreteSchedule | EDMSchedule | FlowSchedule
SCHEDULE_TYPES = (DiscreteSchedule, EDMSchedule, FlowSchedule)


def _discrete(name: str, spacing: str = "timesteps") -> Callable[..., DiscreteSchedule]:
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
        ays_model: str = "sd15",
        final_sigmas_type: str = "zero",
        timestep_type: str = "discrete",
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
            ays_model=ays_model,
            final_sigmas_type=final_sigmas_type,
            timestep_type=timestep_type,
        )

    build.__name__ = name
    build.__doc__ = (
        f"Build the {name!r} discrete schedule (diffusers keyword names)."
        if spacing == "timesteps"
        else f"Build a discrete schedule (``beta_schedule``, default linear) with sigma_spacing={name!r}."
    )
    return build


def flow(
    num_train_timesteps: int = 1000,
    shift: float = 1.0,
    use_dynamic_shifting: bool = False,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_image_seq_len: int = 256,
    max_image_seq_len: int = 4096,
    shift_terminal: float | None = None,
    time_shift_type: str = "exponential",
    *,
    sigma_spacing: str = "timesteps",
    rho: float = 7.0,
    mu: float | None = None,
) -> FlowSchedule:
    """Build the ``flow`` schedule (diffusers' FlowMatchEulerDiscreteScheduler keywords; see
    :class:`FlowSchedule`)."""
    return FlowSchedule(
        num_train_timesteps,
        shift,
        use_dynamic_shifting,
        base_shift,
        max_shift,
        base_image_seq_len,
        max_image_seq_len,
        shift_terminal,
        time_shift_type,
        sigma_spacing,
        rho,
        mu,
    )


SPACING_NAMES = tuple(name for name in SIGMA_SPACINGS if name != "timesteps")  # registry names too
SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "linear": _discrete("linear"),
    "scaled_linear": _discrete("scaled_linear"),
    "squaredcos_cap_v2": _discrete("squaredcos_cap_v2"),
    "sigmoid": _discrete("sigmoid"),
    **{spacing: _discrete(spacing, spacing) for spacing in SPACING_NAMES},
    "edm": EDMSchedule,
    "flow": flow,
}


def make_schedule(name: str, **kwargs: object) -> Schedule:
    """Rebuild a schedule from :meth:`config` output (used by checkpoints)."""
    if name == "flow":
        return flow(**kwargs)  # type: ignore[arg-type]
    if name in SPACING_NAMES or kwargs.get("sigma_spacing") not in (None, "timesteps"):
        spacing = kwargs.pop("sigma_spacing", name)
        kwargs.setdefault("beta_schedule", name if name in _BETA_FUNCTIONS else "linear")
        name = str(spacing)
    else:
        kwargs.pop("sigma_spacing", None)
    if name == "edm":
        return EDMSchedule(**kwargs)  # type: ignore[arg-type]
    if name not in SCHEDULES:
        raise KeyError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)

"""DDPM ancestral sampling with a learned variance, diffusers' ``variance_type="learned_range"``
(Nichol & Dhariwal 2021, "Improved DDPM", eq. 15; the DiT and DeepFloyd-IF UNets).

The model returns ``2C`` channels: its usual prediction, then ``v`` in [-1, 1]; the step's
variance interpolates between the forward variance ``beta_t`` and the posterior variance
``beta~_t`` in log space, per element::

    log var = f log beta_t + (1 - f) log beta~_t,   f = (v + 1) / 2

A per-element std cannot be a coefficient row (rows are per sample), so the row keeps the fixed
``sqrt(beta~_t)`` of DDPM's ``fixed_small`` step, and the noise tensor handed to the fused op is
scaled first: ``z * (beta_t / beta~_t) ** (f / 2)``, which makes ``sqrt(beta~_t) * z'`` the
learned std times z. The posterior mean, the x0 conversion and the x0 limit stay in the one fused
op (``ops.sampler_step`` / ``ops.cfg_sampler_step``); the model's output is split by a wrapper
around the denoiser's model, and with guidance the variance of the conditional pass is used (as
DeepFloyd IF's pipeline does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.denoiser import Denoiser
from diffcore.timesteps import Level, Plan

__all__ = ["DDPMLearnedRange", "ddpm_learned_range"]


class _Split:
    """``model``'s first ``channels`` output channels for the denoiser; the rest kept as ``v``."""

    def __init__(self, model: Any, channels: int) -> None:
        self.model, self.channels = model, channels
        self.v: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor, *cond: Any) -> Tensor:
        out = self.model(x, t, *cond)
        if not isinstance(out, Tensor):
            out = getattr(out, "sample", out[0] if isinstance(out, (tuple, list)) else out)
        if out.dim() < 2 or out.shape[1] != 2 * self.channels:
            raise ValueError(
                f"learned_range: the model must output 2 x {self.channels} channels (prediction, variance), "
                f"got shape {tuple(out.shape)}"
            )
        self.v = out[:, self.channels :]
        return out[:, : self.channels]


class DDPMLearnedRange:
    """The sampler (diffcore's sampler contract); ``plan_style="ddpm"``: DDPMScheduler's timesteps."""

    name = "ddpm_learned_range"
    plan_style = "ddpm"
    stochastic = True
    options: dict[str, Any] = {}

    def __call__(self, denoiser: Denoiser, x: Tensor, plan: Plan, **options: Any) -> Tensor:
        generator: torch.Generator | None = options.pop("generator", None)
        callback = options.pop("callback", None)
        seed: int | None = options.pop("seed", None)
        options.pop("cuda_graph", None)  # runs eagerly
        if options:
            raise TypeError(f"sampler 'ddpm_learned_range' got unknown option(s) {sorted(options)}; it accepts none")
        split = _Split(denoiser.model, int(x.shape[1]))
        model, denoiser.model = denoiser.model, split
        try:
            for i in range(plan.steps):
                self._step(denoiser, split, x, plan, i, generator, seed)
                if callback is not None:
                    callback({"i": i, "t": float(plan.timesteps[i]), "sigma": float(plan.sigmas[i + 1]), "x": x})
        finally:
            denoiser.model = model
        return x

    @staticmethod
    def _step(
        denoiser: Denoiser, split: _Split, x: Tensor, plan: Plan, i: int, gen: torch.Generator | None, seed: int | None
    ) -> None:
        alpha, std = plan.level(i)
        alpha_to, _ = plan.target(i)
        abar, abar_prev = alpha * alpha, alpha_to * alpha_to
        beta = 1.0 - abar / abar_prev
        beta_tilde = max((1.0 - abar_prev) / (1.0 - abar) * beta, 1e-20)
        c_x0 = math.sqrt(abar_prev) * beta / (1.0 - abar)  # Ho et al. 2020, eq. 7
        c_x = math.sqrt(abar / abar_prev) * (1.0 - abar_prev) / (1.0 - abar)
        last = i == plan.steps - 1  # diffusers adds no noise at t = 0
        pred = denoiser(x, Level(float(plan.timesteps[i]), alpha, std), step=i)
        z = None
        if not last:
            assert split.v is not None
            v = split.v[-x.shape[0] :].to(torch.float32)  # the conditional pass under guidance
            noise = (
                torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
                if gen is not None
                else ops.philox_noise_like(x, int(seed or 0), offset=i)
            )
            z = (noise * torch.exp((v + 1) / 4 * math.log(beta / beta_tilde))).to(x.dtype)
        coeffs = torch.tensor([pred.a, pred.b, c_x, c_x0, 0.0 if last else math.sqrt(beta_tilde)], dtype=torch.float64)
        coeffs = coeffs.to(x.device, torch.float32 if x.dtype != torch.float64 else torch.float64)
        limit = getattr(denoiser, "x0_limit", None)
        if pred.out is not None:
            ops.sampler_step(x, pred.out, coeffs, None, z, (), x0_limit=limit)
        else:
            assert pred.uncond is not None and pred.cond is not None and pred.guidance is not None
            ops.cfg_sampler_step(x, pred.uncond, pred.cond, pred.guidance, coeffs, None, z, (), x0_limit=limit)


ddpm_learned_range = DDPMLearnedRange()

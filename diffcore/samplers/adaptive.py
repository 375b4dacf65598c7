"""DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022, "DPM-Solver", sec. 4.2 and Alg. 4-5;
k-diffusion's ``sample_dpm_adaptive``), in VE units with t = -log(sigma).

Each attempt takes one step with an embedded pair of single-step solvers (orders 1 and 2, or 2
and 3, sharing model calls), measures their difference against ``atol + rtol * |x|`` as an RMS
error, and lets a PID controller (Söderlind 2003) accept the step or shrink it. The number of
steps is not known in advance, so this sampler runs its own loop (a model call per stage, the
arithmetic in torch) instead of a precomputed coefficient program. Integration runs from the
plan's first level to its smallest positive level; when the plan ends at sigma 0, a final
denoising call lands there (one more model evaluation); a plan that starts at sigma = inf (zero
terminal SNR, flow t = 1) first takes one exact first-order step to its next level. Pass
``info={}`` in the sampler options to receive ``nfe``, ``steps``, ``n_accept`` and ``n_reject``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.denoiser import Denoiser
from diffcore.samplers.base import check_eta
from diffcore.samplers.builder import plan_level
from diffcore.samplers.ddim import ancestral_split
from diffcore.samplers.program import Callback
from diffcore.timesteps import Plan


class PIDController:
    """Step-size control h <- h * limiter(prod_k e_k^(-b_k)) on the last three inverse errors."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, safety: float) -> None:
        self.h = h
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.safety = safety
        self.inv: list[float] = []

    def propose(self, error: float) -> bool:
        """Update h from ``error`` (<= 1 is within tolerance); return whether the step is accepted."""
        inv = 1.0 / (error + 1e-8)
        if not self.inv:
            self.inv = [inv, inv, inv]
        self.inv[0] = inv
        factor = math.prod(e**b for e, b in zip(self.inv, self.b))
        factor = 1.0 + math.atan(factor - 1.0)  # smooth limiter
        accept = factor >= self.safety
        if accept:
            self.inv[1:] = self.inv[:2]
        self.h *= factor
        return accept


class _Solver:
    """Single-step DPM-Solver stages on the VE state ``x`` (eps form, eq. 3.7-3.9 of the paper)."""

    def __init__(self, denoiser: Denoiser, plan: Plan, like: Tensor) -> None:
        self.denoiser, self.plan, self.like, self.nfe = denoiser, plan, like, 0

    def eps(self, x: Tensor, t: float) -> Tensor:
        sigma = math.exp(-t)
        level = self.plan.level_at(sigma)
        self.nfe += 1
        x0 = self.denoiser.predict_x0(x * level.alpha, level, step=self.nfe - 1)
        return (x - x0) / sigma

    def pair(self, x: Tensor, t: float, t_next: float, order: int) -> tuple[Tensor, Tensor]:
        """(lower-order, higher-order) solutions from t to t_next: DPM-Solver-1/2 or -2/3."""
        h = t_next - t
        s_next = math.exp(-t_next)
        eps = self.eps(x, t)
        r1 = 0.5 if order == 2 else 1.0 / 3.0
        u1 = x - math.exp(-(t + r1 * h)) * math.expm1(r1 * h) * eps
        base = x - s_next * math.expm1(h) * eps
        if order == 2:
            return base, base - s_next / (2 * r1) * math.expm1(h) * (self.eps(u1, t + r1 * h) - eps)
        eps1 = self.eps(u1, t + r1 * h)
        low = base - s_next / (2 * r1) * math.expm1(h) * (eps1 - eps)
        r2 = 2.0 / 3.0
        u2 = (
            x
            - math.exp(-(t + r2 * h)) * math.expm1(r2 * h) * eps
            - math.exp(-(t + r2 * h)) * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * (eps1 - eps)
        )
        eps2 = self.eps(u2, t + r2 * h)
        return low, base - s_next / r2 * (math.expm1(h) / h - 1) * (eps2 - eps)


class AdaptiveSampler:
    """``dpm_adaptive``: see the module docstring. Options as k-diffusion's sample_dpm_adaptive."""

    name = "dpm_adaptive"
    plan_style = "karras"
    stochastic = False
    options: dict[str, Any] = {
        "order": 3,
        "rtol": 0.05,
        "atol": 0.0078,
        "h_init": 0.05,
        "pcoeff": 0.0,
        "icoeff": 1.0,
        "dcoeff": 0.0,
        "accept_safety": 0.81,
        "eta": 0.0,
        "info": None,
    }

    def __call__(self, denoiser: Denoiser, x: Tensor, plan: Plan, **options: Any) -> Tensor:
        """The sampler contract; ``generator``, ``callback``, ``seed`` and ``cuda_graph`` come with
        the options."""
        generator: torch.Generator | None = options.pop("generator", None)
        callback: Callback | None = options.pop("callback", None)
        seed: int | None = options.pop("seed", None)
        cuda_graph = bool(options.pop("cuda_graph", False))
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"sampler 'dpm_adaptive' got unknown option(s) {unknown}; it accepts: {sorted(self.options)}"
            )
        o = {**self.options, **{k: v for k, v in options.items() if v is not None}}
        if o["order"] not in (2, 3):
            raise ValueError(f"dpm_adaptive: order={o['order']!r} must be 2 or 3")
        for key in ("rtol", "atol", "h_init", "accept_safety"):
            if not isinstance(o[key], (int, float)) or not o[key] > 0:
                raise ValueError(f"dpm_adaptive: {key}={o[key]!r} must be a number > 0")
        eta = check_eta(o["eta"], self.name)
        if cuda_graph:
            raise ValueError("dpm_adaptive chooses its steps at run time and cannot be captured in a CUDA graph")
        ops.check_noise_source(seed, generator)
        solver = _Solver(denoiser, plan, x)
        xv = x / plan.level(0)[0] if plan.level(0)[0] > 0 else self._from_pure_noise(solver, x, plan)
        sigmas = [float(s) for s in plan.sigmas if 0 < float(s) < math.inf]
        t_end, t = -math.log(min(sigmas)), -math.log(max(sigmas))
        pid = PIDController(
            o["h_init"], o["pcoeff"], o["icoeff"], o["dcoeff"], 1.5 if eta else o["order"], o["accept_safety"]
        )
        prev, steps, accepted = xv, 0, 0
        while t < t_end - 1e-5:
            t_next = min(t_end, t + pid.h)
            s_down, s_up = ancestral_split(math.exp(-t), math.exp(-t_next), eta)
            t_down = min(t_end, -math.log(s_down))
            s_up = math.sqrt(max(math.exp(-2 * t_next) - math.exp(-2 * t_down), 0.0))
            low, high = solver.pair(xv, t, t_down, o["order"])
            tol = torch.maximum(torch.full_like(low, o["atol"]), o["rtol"] * torch.maximum(low.abs(), prev.abs()))
            error = float(torch.linalg.norm((low - high) / tol)) / math.sqrt(low.numel())
            steps += 1
            if pid.propose(error):
                prev, t, accepted = low, t_next, accepted + 1
                xv = high if s_up == 0 else high + s_up * self._noise(high, generator, seed, accepted)
                if callback is not None:
                    callback({"i": accepted - 1, "t": math.exp(-t), "sigma": math.exp(-t), "x": xv, "nfe": solver.nfe})
        if float(plan.sigmas[-1]) == 0:  # land on sigma 0 with one denoising call
            level = plan.level_at(math.exp(-t))
            xv = denoiser.predict_x0(xv * level.alpha, level, step=solver.nfe)
            solver.nfe += 1
        if isinstance(o["info"], dict):
            o["info"].update(nfe=solver.nfe, steps=steps, n_accept=accepted, n_reject=steps - accepted)
        end_alpha = plan.level(plan.steps)[0]
        return x.copy_(xv * end_alpha)

    @staticmethod
    def _from_pure_noise(solver: _Solver, x: Tensor, plan: Plan) -> Tensor:
        """A plan that starts at sigma = inf (zero SNR, flow t = 1) has no log-sigma to adapt in:
        one exact first-order step lands on its next level, ``x0 + sigma_1 * eps``, eps = x / std."""
        level = plan_level(plan, 0)
        solver.nfe += 1
        x0 = solver.denoiser.predict_x0(x, level, step=0)
        return x0 + float(plan.sigmas[1]) * (x / level.std)

    @staticmethod
    def _noise(like: Tensor, generator: torch.Generator | None, seed: int | None, k: int) -> Tensor:
        if generator is not None:
            return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)
        return ops.philox_noise_like(like, 0 if seed is None else seed, offset=k)


dpm_adaptive = AdaptiveSampler()

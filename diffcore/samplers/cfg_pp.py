"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance"),
with ComfyUI's names and definitions: each step jumps to the guided x0 and renoises along the
*unconditional* direction ``du = (x - x0u) / sigma`` instead of the guided one.

* ``euler_cfg_pp``: ``x' = x0 + s' du`` (the paper's Algorithm 1 as a DDIM/Euler step).
* ``euler_ancestral_cfg_pp``: ``x' = x0 + s_down du + s_up z`` (k-diffusion's ancestral split).
* ``dpmpp_2m_cfg_pp``: ``x' = x0 + (s'/s)(x - x0u) + (1 - s'/s) / (2 r) (x0 - x0u_prev)`` with
  ``r = h_prev / h`` in lambda = -log(sigma); first order at the first step and into sigma = 0.

``guidance_scale`` is the paper's lambda (ComfyUI's cfg for these samplers): the guided x0 is
``x0u + lambda (x0c - x0u)``, and typical values are 0.3-1.5, far below plain CFG's scales. Per
step this is plain CFG with scale ``f * lambda`` (for Euler ``f = s / (s - s')``) folded into the
fused op (see :mod:`diffcore.samplers.builder`); ``dpmpp_2m_cfg_pp`` also writes x0u to history
with a second fused op per step. Written in VE units, so on flow schedules they are ComfyUI's
``euler``/``euler_ancestral`` CFG++ exactly (ComfyUI's 2M CFG++ steps in the flow time there).
"""

from __future__ import annotations

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder, half_log_snr
from diffcore.samplers.ddim import ancestral_steps


@program_sampler("euler_cfg_pp", uses_uncond=True, plan_style="karras")
def euler_cfg_pp(b: Builder) -> None:
    """Euler CFG++: ``x' = x0 + s' (x - x0u) / s``."""
    ancestral_steps(b, 0.0, renoise="du")


@program_sampler("euler_ancestral_cfg_pp", uses_uncond=True, plan_style="karras", stochastic=True, eta=1.0)
def euler_ancestral_cfg_pp(b: Builder, eta: float) -> None:
    """Euler ancestral CFG++: ``x' = x0 + s_down (x - x0u) / s + s_up z``."""
    ancestral_steps(b, eta, renoise="du")


@program_sampler("dpmpp_2m_cfg_pp", uses_uncond=True, plan_style="dpm")
def dpmpp_2m_cfg_pp(b: Builder) -> None:
    """DPM-Solver++(2M) CFG++ (ComfyUI's): the 2M correction is ``x0 - x0u_prev``."""
    prev = b.history(2)  # x0u of the last step; a second slot so that the write never hits the read
    for i in range(b.steps):
        p = b.model(i)
        x_next = p.x0 + p.sigma_to * p.du  # (s'/s)(x - x0u), finite at s = inf
        if len(prev) and p.sigma_to > 0:
            h = half_log_snr(p.sigma_to) - half_log_snr(p.sigma)
            r = (half_log_snr(p.sigma) - half_log_snr(b.sigma(i - 1))) / h
            x_next = x_next + (1.0 - p.sigma_to / p.sigma) / (2.0 * r) * (p.x0 - prev[0])
        prev.push(p.x0u)
        b.update(x_next)

"""diffusers is the oracle for every sampler it has: same betas, timesteps, model and noise
=> over a 50-step float32 run, max |diffcore - diffusers| <= 1e-4 * max |diffusers|."""

from __future__ import annotations

import inspect

import pytest
import torch

import diffcore

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 0.5


def toy_model(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
    """A smooth nonlinear stand-in for a UNet that depends on the timestep it is given."""
    tt = t.to(torch.float32).reshape(-1, 1, 1, 1) / 1000.0
    return torch.tanh(x @ W) * torch.cos(3 * tt) + 0.3 * x * tt


def diffusers_loop(scheduler, x_T: torch.Tensor, steps: int, seed: int, **step_kwargs) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = x_T * scheduler.init_noise_sigma
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        out = toy_model(scheduler.scale_model_input(x, t), t.reshape(1).expand(x.shape[0]))
        kwargs = dict(step_kwargs, generator=g) if takes_generator else dict(step_kwargs)
        x = scheduler.step(out, t, x, **kwargs).prev_sample
    return x


# name -> (diffusers class, its config, diffusers step kwargs, diffcore kwargs)
CASES = {
    "ddpm": ("DDPMScheduler", {"clip_sample": False}, {}, {}),
    "ddim": ("DDIMScheduler", {"clip_sample": False}, {}, {}),
    "ddim-eta0.7": ("DDIMScheduler", {"clip_sample": False}, {"eta": 0.7}, {"eta": 0.7}),
    "euler": ("EulerDiscreteScheduler", {}, {}, {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, {}, {}),
    "heun": ("HeunDiscreteScheduler", {}, {}, {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, {}, {}),
    "dpmpp_2m-heun": (
        "DPMSolverMultistepScheduler",
        {"solver_type": "heun"},
        {},
        {"sampler_options": {"solver_type": "heun"}},
    ),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}, {}),
    "dpmpp_3m_sde-eta0": ("DPMSolverMultistepScheduler", {"solver_order": 3}, {}, {"eta": 0.0}),
    "unipc": ("UniPCMultistepScheduler", {}, {}, {}),
    "lms": ("LMSDiscreteScheduler", {}, {}, {}),
}
BETAS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def _run_both(case: str, beta: str, prediction: str, spacing: str, steps: int = 50, extra_cfg: dict | None = None):
    cls_name, cfg, dkw, ckw = CASES[case]
    start, end = BETAS[beta]
    cfg = dict(cfg, **(extra_cfg or {}))
    scheduler = getattr(diffusers, cls_name)(
        beta_schedule=beta, beta_start=start, beta_end=end, prediction_type=prediction, timestep_spacing=spacing, **cfg
    )
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(scheduler, x_T, steps, seed=7, **dkw)
    kw = dict(ckw)
    sched_kw = {}
    if cfg.get("use_karras_sigmas"):
        sched_name = "karras"
        sched_kw["beta_schedule"] = beta
    else:
        sched_name = beta
    if cfg.get("rescale_betas_zero_snr"):
        sched_kw["rescale_betas_zero_snr"] = True
    schedule = diffcore.get("schedules", sched_name)(1000, start, end, **sched_kw)
    out = diffcore.sample(
        toy_model,
        x_T,
        sampler=case.split("-")[0],
        steps=steps,
        schedule=schedule,
        prediction=prediction,
        timestep_spacing=spacing,
        generator=torch.Generator().manual_seed(7),
        **kw,
    )
    return out, ref


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("beta", list(BETAS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(case: str, beta: str, prediction: str, spacing: str) -> None:
    out, ref = _run_both(case, beta, prediction, spacing)
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err <= TOL, f"{case} {beta} {prediction} {spacing}: relative error {err:.2e}"


@pytest.mark.parametrize("case", ["euler", "heun", "lms", "dpmpp_2m", "unipc"])
def test_karras_sigmas_match_diffusers(case: str) -> None:
    out, ref = _run_both(case, "scaled_linear", "epsilon", "leading", steps=25, extra_cfg={"use_karras_sigmas": True})
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err <= TOL, f"{case} karras: relative error {err:.2e}"


@pytest.mark.parametrize("case", ["ddim", "euler", "dpmpp_2m", "unipc"])
def test_zero_terminal_snr_matches_diffusers(case: str) -> None:
    out, ref = _run_both(
        case, "scaled_linear", "v_prediction", "trailing", steps=30, extra_cfg={"rescale_betas_zero_snr": True}
    )
    assert torch.isfinite(out).all()
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err <= TOL, f"{case} zero-SNR: relative error {err:.2e}"


class _ExactSDE3M(diffusers.DPMSolverMultistepScheduler):
    """diffusers' sde-dpmsolver++ order 3 with the D2 coefficient of the exact integral.

    diffusers 0.42.1 uses ``(1 - e^{-2h} - 2h) / (2h)^2 - 0.5`` for the second-difference term;
    integrating ``2 e^{-2(h-u)} u^2 / 2`` over [0, h] gives ``... + 0.5`` (k-diffusion agrees), so
    with diffusers' sign the SDE solver loses an order. Only that coefficient differs here.
    """

    def multistep_dpm_solver_third_order_update(self, model_output_list, *args, sample=None, noise=None, **kwargs):
        i = self.step_index
        a_t, s_t = self._sigma_to_alpha_sigma_t(self.sigmas[i + 1])
        lams = []
        for j in (i, i - 1, i - 2):
            a, s = self._sigma_to_alpha_sigma_t(self.sigmas[j])
            lams.append(torch.log(a) - torch.log(s))
        _, s0 = self._sigma_to_alpha_sigma_t(self.sigmas[i])
        h = torch.log(a_t) - torch.log(s_t) - lams[0]
        r0, r1 = (lams[0] - lams[1]) / h, (lams[1] - lams[2]) / h
        m0, m1, m2 = model_output_list[-1], model_output_list[-2], model_output_list[-3]
        d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        e = torch.exp(-2.0 * h)
        return (
            s_t / s0 * torch.exp(-h) * sample
            + a_t * (1 - e) * m0
            + a_t * ((1 - e) / (-2.0 * h) + 1.0) * d1
            + a_t * ((1 - e - 2.0 * h) / (2.0 * h) ** 2 + 0.5) * d2
            + s_t * torch.sqrt(1.0 - e) * noise
        )


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_dpmpp_3m_sde_matches_diffusers_with_exact_d2_term(prediction: str, spacing: str) -> None:
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    kwargs = dict(
        algorithm_type="sde-dpmsolver++", solver_order=3, prediction_type=prediction, timestep_spacing=spacing
    )
    exact = diffusers_loop(_ExactSDE3M(**kwargs), x_T, 50, seed=7)
    stock = diffusers_loop(diffusers.DPMSolverMultistepScheduler(**kwargs), x_T, 50, seed=7)
    ours = diffcore.sample(
        toy_model,
        x_T,
        sampler="dpmpp_3m_sde",
        steps=50,
        schedule="linear",
        prediction=prediction,
        timestep_spacing=spacing,
        generator=torch.Generator().manual_seed(7),
    )
    scale = exact.abs().max().item()
    assert (ours - exact).abs().max().item() <= TOL * scale
    # the stock diffusers 3M SDE differs by far more than float error: the sign of its 1/2 term
    assert (stock - exact).abs().max().item() > 100 * TOL * scale

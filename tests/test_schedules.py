"""Schedules and plans reproduce diffusers' tables and timesteps; bad arguments are named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcore
from diffcore.schedules import EDMSchedule, karras_sigmas
from diffcore.timesteps import make_plan, plan_from_sigmas

diffusers = pytest.importorskip("diffusers")

BETA_CASES = [
    ("linear", 1e-4, 0.02),
    ("scaled_linear", 0.00085, 0.012),
    ("squaredcos_cap_v2", 1e-4, 0.02),
    ("sigmoid", 1e-4, 0.02),
]


@pytest.mark.parametrize("name,start,end", BETA_CASES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alphas_cumprod_match_diffusers(name, start, end, zero_snr):
    ref = diffusers.DDPMScheduler(beta_schedule=name, beta_start=start, beta_end=end, rescale_betas_zero_snr=zero_snr)
    ours = diffcore.get("schedules", name)(1000, start, end, rescale_betas_zero_snr=zero_snr)
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-4, atol=1e-7)
    if zero_snr:
        assert ours.alphas_cumprod[-1] == 0


FAMILIES = {
    "ddim": ("DDIMScheduler", "ddim"),
    "dpm": ("DPMSolverMultistepScheduler", "dpm"),
    "karras": ("EulerDiscreteScheduler", "karras"),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [7, 30, 50])
@pytest.mark.parametrize("offset", [0, 1])
def test_plan_timesteps_match_diffusers(family, spacing, steps, offset):
    cls, style = FAMILIES[family]
    ref = getattr(diffusers, cls)(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    plan = make_plan(diffcore.get("schedules", "linear")(steps_offset=offset), steps, spacing, style)
    np.testing.assert_allclose(plan.timesteps.numpy(), ref.timesteps.double().numpy(), atol=1e-3)
    if hasattr(ref, "sigmas") and family != "ddim":
        np.testing.assert_allclose(plan.sigmas.numpy(), ref.sigmas.double().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls,style", [("EulerDiscreteScheduler", "karras"), ("DPMSolverMultistepScheduler", "dpm")])
def test_karras_sigma_spacing_matches_diffusers(cls, style):
    ref = getattr(diffusers, cls)(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        use_karras_sigmas=True,
        timestep_spacing="leading",
    )
    ref.set_timesteps(25)
    sched = diffcore.get("schedules", "karras")(1000, 0.00085, 0.012, beta_schedule="scaled_linear")
    plan = make_plan(sched, 25, "leading", style)
    np.testing.assert_allclose(plan.sigmas.numpy(), ref.sigmas.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plan.timesteps.numpy(), ref.timesteps.double().numpy(), atol=2e-3)


def test_edm_plan_is_karras_with_final_zero():
    plan = make_plan(EDMSchedule(0.002, 80.0, 7.0), 10)
    assert torch.allclose(plan.sigmas[:-1], karras_sigmas(0.002, 80.0, 10, 7.0))
    assert plan.sigmas[-1] == 0 and torch.all(plan.alphas == 1)
    assert plan.init_scale == pytest.approx(80.0)


def test_plan_levels_are_variance_preserving():
    plan = make_plan(diffcore.get("schedules", "scaled_linear")(1000, 0.00085, 0.012), 20, "trailing", "dpm")
    assert torch.allclose(plan.alphas**2 + plan.stds**2, torch.ones_like(plan.alphas))


@pytest.mark.parametrize(
    "kwargs,text",
    [
        (dict(beta_start=0.5, beta_end=0.1), "beta_start"),
        (dict(num_train_timesteps=1), "num_train_timesteps"),
        (dict(beta_schedule="quadratic"), "quadratic"),
        (dict(steps_offset=-1), "steps_offset"),
        (dict(rho=0.0), "rho"),
    ],
)
def test_bad_schedule_arguments(kwargs, text):
    with pytest.raises(ValueError, match=text):
        diffcore.get("schedules", "linear")(**kwargs)


def test_bad_plan_arguments():
    s = diffcore.get("schedules", "linear")()
    with pytest.raises(ValueError, match="steps=0"):
        make_plan(s, 0)
    with pytest.raises(ValueError, match="'sideways'"):
        make_plan(s, 10, "sideways")
    with pytest.raises(ValueError, match="exceeds num_train_timesteps"):
        make_plan(s, 1001)
    with pytest.raises(ValueError, match="strictly decreasing"):
        plan_from_sigmas(s, [1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSchedule(sigma_min=1.0, sigma_max=0.5)

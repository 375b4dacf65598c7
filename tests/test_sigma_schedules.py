"""Sigma schedules that users pick in ComfyUI / A1111, each against its oracle: beta against
diffusers' use_beta_sigmas, align_your_steps against the published tables, simple / sgm_uniform /
kl_optimal against a written-out float64 reference of their formulas; every sampler runs on each;
DDIM's exact step rule lands on the next planned timestep and converges where diffusers' does not."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore import cli
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.denoiser import Denoiser
from diffcore.parameterization import make_parameterization
from diffcore.schedules import make_schedule, shift_times
from diffcore.sigmas import AYS_SIGMAS, AYS_TIMESTEPS, ays_sigmas
from diffcore.timesteps import make_plan, partial_plan

diffusers = pytest.importorskip("diffusers")
from test_diffusers_parity import diffusers_loop, toy_model  # noqa: E402

NEW = ("beta", "align_your_steps", "sgm_uniform", "simple", "kl_optimal")
FLOW_NEW = ("beta", "sgm_uniform", "simple", "kl_optimal")
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)
F64 = torch.float64


def _sd(spacing: str, **kw) -> diffcore.schedules.DiscreteSchedule:
    return diffcore.get("schedules", spacing)(**{**SD, **kw})


def test_every_new_name_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "schedules"]) == 0
    assert set(NEW) <= set(json.loads(capsys.readouterr().out))


@pytest.mark.parametrize("name", NEW)
def test_registry_schedule_rebuilds_from_its_config(name: str) -> None:
    sched = _sd(name, ays_model="sdxl")
    assert sched.sigma_spacing == name and sched.name == "scaled_linear"
    again = make_schedule(**sched.config())
    assert again.config() == sched.config()
    assert torch.equal(make_plan(again, 12).sigmas, make_plan(sched, 12).sigmas)


# --------------------------------------------------------------------------- beta (diffusers oracle)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("cls,style", [("EulerDiscreteScheduler", "karras"), ("DPMSolverMultistepScheduler", "dpm")])
def test_beta_levels_match_diffusers(cls: str, style: str, spacing: str) -> None:
    ref = getattr(diffusers, cls)(**SD, use_beta_sigmas=True, timestep_spacing=spacing)
    ref.set_timesteps(25)
    plan = make_plan(_sd("beta"), 25, spacing, style)
    np.testing.assert_allclose(plan.sigmas.numpy(), ref.sigmas.double().numpy(), rtol=1e-5, atol=1e-6)
    if style == "karras":  # DPMSolverMultistep truncates beta's fractional timesteps to int64
        np.testing.assert_allclose(plan.timesteps.numpy(), ref.timesteps.double().numpy(), atol=2e-3)


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_beta_euler_run_matches_diffusers(prediction: str, spacing: str) -> None:
    ref_sched = diffusers.EulerDiscreteScheduler(
        **SD, use_beta_sigmas=True, timestep_spacing=spacing, prediction_type=prediction
    )
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(ref_sched, x_T, 25, seed=7)
    out = diffcore.sample(
        toy_model, x_T, sampler="euler", steps=25, schedule=_sd("beta"), prediction=prediction,
        timestep_spacing=spacing, generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()


# --------------------------------------------------------------------------- align your steps


AYS_KEYS = {"sd15": "StableDiffusion", "sdxl": "StableDiffusionXL", "svd": "StableDiffusionVideo"}


def _ays(model: str) -> diffcore.schedules.DiscreteSchedule:
    # SVD's table starts at sigma 700: a zero-terminal-SNR schedule reaches it
    return _sd("align_your_steps", ays_model=model, rescale_betas_zero_snr=model == "svd")


@pytest.mark.parametrize("style", ["karras", "dpm", "ddim", "unipc", "deis", "pndm", "ddpm"])
@pytest.mark.parametrize("model", list(AYS_KEYS))
def test_ays_ten_steps_are_the_published_table(model: str, style: str) -> None:
    from diffusers.schedulers import AysSchedules

    published = torch.tensor(AysSchedules[f"{AYS_KEYS[model]}Sigmas"], dtype=F64)
    assert torch.equal(make_plan(_ays(model), 10, "leading", style).sigmas, published)


@pytest.mark.parametrize("model", ["sd15", "sdxl"])
def test_ays_timesteps_are_the_published_ones_and_sit_at_the_table(model: str) -> None:
    from diffusers.schedulers import AysSchedules

    assert list(AYS_TIMESTEPS[model]) == AysSchedules[f"{AYS_KEYS[model]}Timesteps"]
    train = diffcore.get("schedules", "scaled_linear")(1000, 0.00085, 0.012).train_sigmas()
    at_steps = train[list(AYS_TIMESTEPS[model])]
    rel = (at_steps / torch.tensor(AYS_SIGMAS[model][:10], dtype=F64) - 1).abs().max()
    assert rel < (0.01 if model == "sd15" else 0.025)


@pytest.mark.parametrize("model", list(AYS_KEYS))
@pytest.mark.parametrize("n", [1, 2, 5, 7, 10, 20, 33, 80])
def test_ays_interpolation_is_monotone_and_log_linear(model: str, n: int) -> None:
    table = torch.tensor(AYS_SIGMAS[model], dtype=F64)
    sig = ays_sigmas(model, n)
    assert sig.shape == (n,) and bool((sig > 0).all()) and bool((sig[1:] < sig[:-1]).all())
    assert sig[0] == pytest.approx(float(table[0]), rel=1e-12)
    # log sigma is piecewise linear in the normalized index u = i / n, through the table's knots
    u = np.arange(n) / n
    expected = np.exp(np.interp(u, np.linspace(0, 1, 11), np.log(table.numpy())))
    np.testing.assert_allclose(sig.numpy(), expected, rtol=1e-12)
    if n == 20:  # every other level is a table level
        np.testing.assert_allclose(sig[::2].numpy(), table[:10].numpy(), rtol=1e-12)


def test_ays_partial_plan_follows_the_table_from_its_start() -> None:
    sched = _ays("sd15")
    plan = partial_plan(sched, 5, 600.0)
    start = float(sched.train_sigmas()[600])
    assert float(plan.sigmas[0]) == pytest.approx(start, rel=1e-9) and float(plan.sigmas[-1]) == 0
    assert float(plan.timesteps[0]) == pytest.approx(600.0, abs=1e-6)
    assert bool((plan.sigmas[1:] < plan.sigmas[:-1]).all())
    # starting at the table's top is the full 10-step table
    np.testing.assert_allclose(ays_sigmas("sd15", 10, start=14.615).numpy(), AYS_SIGMAS["sd15"][:10], rtol=1e-12)
    with pytest.raises(ValueError, match="outside the align_your_steps"):
        partial_plan(_sd("align_your_steps", beta_schedule="linear", beta_start=1e-4, beta_end=0.02), 5, 990.0)


# --------------------------------------------------------------------------- ComfyUI's simple, sgm_uniform, kl_optimal


def _reference(spacing: str, train: list[float], n: int) -> list[float]:
    """ComfyUI's definitions written out in float64 over ascending training sigmas ``train``."""
    T = len(train)
    if spacing == "simple":
        return [train[T - 1 - math.floor(i * T / n)] for i in range(n)]
    if spacing == "sgm_uniform":
        out = []
        for i in range(n):
            t = (T - 1) * (1 - i / n)
            lo, w = math.floor(t), t - math.floor(t)
            hi = min(lo + 1, T - 1)
            out.append(math.exp((1 - w) * math.log(train[lo]) + w * math.log(train[hi])))
        return out
    smin, smax = train[0], train[-1]
    return [math.tan((1 - i / (n - 1)) * math.atan(smax) + i / (n - 1) * math.atan(smin)) for i in range(n)]


@pytest.mark.parametrize("style", ["karras", "dpm", "ddim", "unipc"])
@pytest.mark.parametrize("n", [4, 7, 25, 300])
@pytest.mark.parametrize("spacing", ["simple", "sgm_uniform", "kl_optimal"])
def test_comfy_spacings_match_their_formulas(spacing: str, n: int, style: str) -> None:
    sched = _sd(spacing)
    # linspace: the karras preset's ends are then the first and last training levels, as ComfyUI's
    plan = make_plan(sched, n, "linspace", style)
    ref = _reference(spacing, sched.train_sigmas().tolist(), n)
    np.testing.assert_allclose(plan.sigmas[:-1].numpy(), ref, rtol=1e-12)
    assert float(plan.sigmas[-1]) == 0
    # the model sees the fractional timestep of each level (rounded by DDIM's integer timesteps)
    times = sched.sigma_to_t(torch.tensor(ref, dtype=F64))
    np.testing.assert_allclose(plan.timesteps.numpy(), (times.round() if style == "ddim" else times).numpy(), atol=1e-6)


@pytest.mark.parametrize("spacing", ["simple", "sgm_uniform", "kl_optimal"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_comfy_spacings_on_flow_schedules(spacing: str, shift: float) -> None:
    T, n = 1000, 9
    sched = diffcore.get("schedules", "flow")(shift=shift, sigma_spacing=spacing)
    plan = make_plan(sched, n, style="karras")
    times = plan.timesteps / T  # the model time t * T of each level
    train = shift_times(torch.arange(1, T + 1, dtype=F64) / T, shift).tolist()  # the shifted training times
    if spacing == "kl_optimal":  # between the ends of FlowMatchEuler's times, in flow time
        base = make_plan(diffcore.get("schedules", "flow")(shift=shift), n, style="karras").timesteps / T
        t_hi, t_lo = float(base[0]), float(base[-1])
        ref = [math.tan((1 - i / (n - 1)) * math.atan(t_hi) + i / (n - 1) * math.atan(t_lo)) for i in range(n)]
    elif spacing == "simple":
        ref = _reference(spacing, train, n)
    else:  # uniform training index k, time shift((k + 1) / T)
        ref = shift_times(((T - 1) * (1 - torch.arange(n, dtype=F64) / n) + 1) / T, shift).tolist()
    np.testing.assert_allclose(times.numpy(), ref, rtol=1e-12)


# --------------------------------------------------------------------------- every sampler on every new schedule


@pytest.mark.parametrize("spacing", NEW)
def test_every_sampler_runs_on_each_new_schedule(spacing: str) -> None:
    sched = _sd(spacing, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    model = exact_model(MIXTURE, sched)
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for name in diffcore.available("samplers"):
        for spacing_t in ("leading", "linspace"):
            out = diffcore.sample(model, x, sampler=name, steps=8, schedule=sched, timestep_spacing=spacing_t, seed=1)
            assert torch.isfinite(out).all(), (name, spacing_t)
    starts = diffcore.sample_from(model, x, 500.0, sampler="euler", steps=6, schedule=sched, seed=1)
    assert torch.isfinite(starts).all()


@pytest.mark.parametrize("spacing", FLOW_NEW)
def test_every_sampler_runs_on_flow_with_each_new_spacing(spacing: str) -> None:
    sched = diffcore.get("schedules", "flow")(shift=3.0, sigma_spacing=spacing)
    model = exact_model(MIXTURE, sched, "flow")
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    for name in diffcore.available("samplers"):
        out = diffcore.sample(model, x, sampler=name, steps=8, schedule=sched, prediction="flow", seed=1)
        assert torch.isfinite(out).all(), name
    plan = partial_plan(sched, 6, 700.0)
    assert float(plan.timesteps[0]) == pytest.approx(700.0) and bool((plan.sigmas[1:] < plan.sigmas[:-1]).all())


# --------------------------------------------------------------------------- the exact DDIM step rule


def _ddim_errors(sched, n: int, spacing: str, x: torch.Tensor) -> dict[str, float]:
    """RMS distance of DDIM runs under each step rule to the ODE solution through the same first
    and last level (both rules share the levels; only where a step lands differs)."""
    plans = {rule: make_plan(sched, n, spacing, "ddim", step_rule=rule) for rule in ("diffusers", "exact")}
    plan = plans["exact"]
    s0, s_last = float(plan.sigmas[0]), float(plan.sigmas[-2])
    ode = MIXTURE.ode_solution(x / float(plan.alphas[0]), s0, s_last, steps=1000)
    ref = MIXTURE.denoise(ode, 1.0, s_last)  # DDIM's last step lands on x0 from the last level
    denoiser = Denoiser(exact_model(MIXTURE, sched), make_parameterization("epsilon"), timestep_dtype=torch.int64)
    ddim = diffcore.get("samplers", "ddim")
    return {
        rule: (ddim(denoiser, x * p.init_scale, p, seed=0) - ref).pow(2).mean().sqrt().item()
        for rule, p in plans.items()
    }


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "leading"])
def test_exact_ddim_rule_lands_on_the_next_planned_timestep(spacing: str) -> None:
    sched = diffcore.get("schedules", "linear")()
    n = 80
    exact = make_plan(sched, n, spacing, "ddim", step_rule="exact")
    assert torch.equal(exact.target_alphas, exact.alphas[1:]) and torch.equal(exact.target_stds, exact.stds[1:])
    diffusers_rule = make_plan(sched, n, spacing, "ddim")
    missed = (diffusers_rule.target_alphas - diffusers_rule.alphas[1:]).abs() > 0
    assert bool(missed.any()) == (spacing != "leading")  # T // n is the gap only under leading spacing
    assert torch.equal(diffusers_rule.timesteps, exact.timesteps)


def test_exact_ddim_rule_converges_where_diffusers_rule_stalls() -> None:
    sched = diffcore.get("schedules", "linear")()
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    errors = {n: _ddim_errors(sched, n, "linspace", x) for n in (20, 40, 80)}
    exact = {n: e["exact"] for n, e in errors.items()}
    ours = {n: e["diffusers"] for n, e in errors.items()}
    assert all(exact[n] < ours[n] for n in exact)
    order = math.log(exact[40] / exact[80]) / math.log(2)
    assert abs(order - 1) < 0.2, f"exact rule: order {order:.2f}"
    assert ours[80] > 1.5 * exact[80]  # diffusers' t - T // n misses levels by a fixed share of a step


def test_step_rule_is_checked() -> None:
    sched = diffcore.get("schedules", "linear")()
    with pytest.raises(ValueError, match="step_rule='nearest'"):
        make_plan(sched, 10, "linspace", "ddim", step_rule="nearest")
    with pytest.raises(TypeError, match="step_rule"):
        make_plan(sched, 10, "linspace", "dpm", step_rule="exact")


def test_sample_passes_step_rule_to_ddims_plan() -> None:
    sched = diffcore.get("schedules", "linear")()
    x = torch.randn(16, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    kw = dict(sampler="ddim", steps=30, schedule=sched, timestep_spacing="linspace", seed=0)
    default = diffcore.sample(exact_model(MIXTURE, sched), x, **kw)
    exact = diffcore.sample(exact_model(MIXTURE, sched), x, **kw, sampler_options={"step_rule": "exact"})
    assert not torch.allclose(default, exact)


# --------------------------------------------------------------------------- errors name the bad value


@pytest.mark.parametrize(
    "build,text",
    [
        (lambda: diffcore.get("schedules", "flow")(sigma_spacing="align_your_steps"), "not flow times"),
        (lambda: _sd("align_your_steps", ays_model="sd3"), "ays_model='sd3'"),
        (lambda: _sd("align_your_steps", ays_model="svd"), "starts at sigma 700"),
        (lambda: _sd("simple", sigma_min=0.1), "sigma_min=0.1"),
        (lambda: _sd("sgm_uniform", sigma_max=10.0), "places its own levels"),
        (lambda: dataclasses.replace(_sd("karras"), sigma_spacing="ays"), "sigma_spacing='ays'"),
    ],
)
def test_bad_spacing_arguments(build, text: str) -> None:
    with pytest.raises((ValueError, TypeError), match=text):
        build()

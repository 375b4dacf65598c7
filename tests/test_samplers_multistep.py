"""Multistep and consistency samplers (deis, ipndm, pndm, lcm, tcd) against their oracles:
diffusers 0.42.1's DEISMultistep, IPNDM, PNDM, LCM, TCD and FlowMatchLCM schedulers on a fixed
nonlinear model (<= 1e-4 relative over 25 steps, epsilon and v_prediction), the convergence order
of the deterministic ones on the closed-form mixture, runs on VP, EDM, flow and zero-SNR plans,
and the options' errors."""

from __future__ import annotations

import math

import pytest
import torch

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.denoiser import Denoiser
from diffcore.parameterization import make_parameterization
from diffcore.samplers import SAMPLERS
from diffcore.schedules import EDMSchedule, karras_sigmas
from diffcore.timesteps import PLAN_PRESETS, lcm_timesteps, make_plan, sigma_at_time

diffusers = pytest.importorskip("diffusers")
from test_diffusers_parity import diffusers_loop, toy_model  # noqa: E402

TOL = 1e-4
BETAS = (0.00085, 0.012)
SPACINGS = ["leading", "linspace", "trailing"]
PREDICTIONS = ["epsilon", "v_prediction"]


def _x_T() -> torch.Tensor:
    return torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))


def _schedule():
    return diffcore.get("schedules", "scaled_linear")(1000, *BETAS)


def _scheduler(name: str, prediction: str, **cfg):
    return getattr(diffusers, name)(
        beta_schedule="scaled_linear", beta_start=BETAS[0], beta_end=BETAS[1], prediction_type=prediction, **cfg
    )


def _ours(sampler: str, prediction: str, spacing: str = "leading", steps: int = 25, **options) -> torch.Tensor:
    return diffcore.sample(
        toy_model,
        _x_T(),
        sampler=sampler,
        steps=steps,
        schedule=_schedule(),
        prediction=prediction,
        timestep_spacing=spacing,
        generator=torch.Generator().manual_seed(7),
        sampler_options=options or None,
    )


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


# ---------------------------------------------------------------- diffusers parity


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("order", [2, 3])
def test_deis_matches_diffusers(order: int, prediction: str, spacing: str) -> None:
    sched = _scheduler("DEISMultistepScheduler", prediction, timestep_spacing=spacing, solver_order=order)
    ref = diffusers_loop(sched, _x_T(), 25, seed=7)
    assert _rel(_ours("deis", prediction, spacing, solver_order=order), ref) <= TOL


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("steps", [6, 10])
def test_deis_lower_order_final_matches_diffusers(steps: int, lower_order_final: bool) -> None:
    """Under 15 steps diffusers ends with orders 2, 1 (``lower_order_final``)."""
    sched = _scheduler("DEISMultistepScheduler", "epsilon", solver_order=3, lower_order_final=lower_order_final)
    ref = diffusers_loop(sched, _x_T(), steps, seed=7)
    out = _ours("deis", "epsilon", "linspace", steps, solver_order=3, lower_order_final=lower_order_final)
    assert _rel(out, ref) <= TOL


@pytest.mark.parametrize("steps", [7, 25])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_pndm_matches_diffusers(spacing: str, steps: int) -> None:
    """Runge-Kutta warm-up (three steps, four model calls each), then PLMS; linspace's uneven
    timesteps included (its first RK stage lands at t - T//n//2, the model then sees t' + T//n//2)."""
    ref = diffusers_loop(_scheduler("PNDMScheduler", "epsilon", timestep_spacing=spacing), _x_T(), steps, seed=7)
    assert _rel(_ours("pndm", "epsilon", spacing, steps), ref) <= TOL


@pytest.mark.parametrize("spacing", SPACINGS)
def test_pndm_v_prediction_matches_diffusers_converting_each_output(spacing: str, monkeypatch) -> None:
    """diffusers' PNDM with v_prediction combines the raw v outputs and converts the combination
    with the current sample's coefficients (eps = a_t sum_k c_k v_k + s_t x_t); the eps of each
    evaluation is a_k v_k + s_k x_k. The oracle is diffusers' epsilon PNDM fed that per-call eps."""
    sched = _scheduler("PNDMScheduler", "epsilon", timestep_spacing=spacing)
    abar = sched.alphas_cumprod

    def eps_of_v(x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        a = abar[t.long()].reshape(-1, 1, 1, 1)
        return a.sqrt() * toy_model(x, t) + (1 - a).sqrt() * x

    monkeypatch.setattr("test_diffusers_parity.toy_model", eps_of_v)
    exact = diffusers_loop(sched, _x_T(), 25, seed=7)
    monkeypatch.undo()
    stock = diffusers_loop(_scheduler("PNDMScheduler", "v_prediction", timestep_spacing=spacing), _x_T(), 25, seed=7)
    assert _rel(_ours("pndm", "v_prediction", spacing), exact) <= TOL
    assert _rel(stock, exact) > 100 * TOL  # the stock v conversion differs by far more than float error


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ipndm_matches_diffusers_on_the_same_levels(prediction: str, spacing: str) -> None:
    """IPNDMScheduler has its own grid (std = sin^2(pi s / 2), whose first level has alpha = 0,
    where it takes x0 = 0) and reads v; its step math runs here on diffcore's levels: its
    ``betas``/``alphas`` are the levels' std/alpha, and an epsilon model is handed over as its v."""
    plan = make_plan(_schedule(), 25, spacing, SAMPLERS["ipndm"].plan_style)
    sched = diffusers.IPNDMScheduler()
    sched.set_timesteps(25)
    sched.betas, sched.alphas = plan.stds.float(), plan.alphas.float()
    sched.timesteps = plan.timesteps[:25].float()
    x = _x_T() * plan.init_scale
    for k, t in enumerate(sched.timesteps):
        out = toy_model(x, t.reshape(1).expand(x.shape[0]))
        if prediction == "epsilon":
            out = (out - sched.betas[k] * x) / sched.alphas[k]
        x = sched.step(out, t, x).prev_sample
    assert _rel(_ours("ipndm", prediction, spacing), x) <= TOL


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", [4, 25])
def test_lcm_matches_diffusers(steps: int, prediction: str) -> None:
    ref = diffusers_loop(_scheduler("LCMScheduler", prediction), _x_T(), steps, seed=7)
    assert _rel(_ours("lcm", prediction, steps=steps), ref) <= TOL


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7, 1.0])
def test_tcd_matches_diffusers(gamma: float, prediction: str) -> None:
    ref = diffusers_loop(_scheduler("TCDScheduler", prediction), _x_T(), 25, seed=7, eta=gamma)
    assert _rel(_ours("tcd", prediction, gamma=gamma), ref) <= TOL


def _run_on_plan(sampler: str, plan, prediction: str, **options) -> torch.Tensor:
    denoiser = Denoiser(toy_model, make_parameterization(prediction), timestep_dtype=plan.timestep_dtype)
    return SAMPLERS[sampler](
        denoiser, _x_T() * plan.init_scale, plan, generator=torch.Generator().manual_seed(7), **options
    )


@pytest.mark.parametrize("sampler", ["lcm", "tcd"])
def test_original_inference_steps_place_the_levels_as_diffusers(sampler: str) -> None:
    """``original_inference_steps`` is a plan option: make_plan takes it from the preset."""
    assert PLAN_PRESETS[sampler].options == ("original_inference_steps",)
    cls = "LCMScheduler" if sampler == "lcm" else "TCDScheduler"
    ref_sched = _scheduler(cls, "epsilon", original_inference_steps=30)
    ref_sched.set_timesteps(7)
    plan = make_plan(_schedule(), 7, style=sampler, original_inference_steps=30)
    assert plan.timesteps.tolist() == ref_sched.timesteps.tolist()
    assert lcm_timesteps(1000, 4).tolist() == [999.0, 759.0, 499.0, 259.0]  # LCM's usual 4 steps
    ref = diffusers_loop(_scheduler(cls, "epsilon", original_inference_steps=30), _x_T(), 7, seed=7)
    assert _rel(_run_on_plan(sampler, plan, "epsilon", original_inference_steps=30), ref) <= TOL


def test_sample_places_levels_with_original_inference_steps() -> None:
    ref = diffusers_loop(_scheduler("LCMScheduler", "epsilon", original_inference_steps=30), _x_T(), 7, seed=7)
    assert _rel(_ours("lcm", "epsilon", steps=7, original_inference_steps=30), ref) <= TOL


def test_lcm_on_flow_matches_flow_match_lcm() -> None:
    """On a flow schedule LCM has no boundary condition and re-noises on FlowMatchEuler's levels."""
    from test_flow import FLOW, toy_velocity

    sched = diffusers.FlowMatchLCMScheduler(shift=3.0)
    sched.set_timesteps(8)
    x, g = _x_T(), torch.Generator().manual_seed(7)
    for t in sched.timesteps:
        x = sched.step(toy_velocity(x, t.reshape(1).expand(x.shape[0])), t, x, generator=g).prev_sample
    out = diffcore.sample(
        toy_velocity,
        _x_T(),
        sampler="lcm",
        steps=8,
        schedule=FLOW(shift=3.0),
        prediction="flow",
        generator=torch.Generator().manual_seed(7),
    )
    assert _rel(out, x) <= TOL


@pytest.mark.parametrize("order", [2, 3])
def test_deis_on_flow_matches_diffusers_up_to_its_last_level(order: int) -> None:
    """diffusers' flow DEIS repeats its last sigma (a zero-length final step); diffcore's plan goes
    on to t = 0, so the states agree at that last level."""
    from test_flow import FLOW, toy_velocity

    sched = diffusers.DEISMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0, solver_order=order
    )
    sched.set_timesteps(25)
    x = _x_T()
    for t in sched.timesteps:
        x = sched.step(toy_velocity(x, t.reshape(1).expand(x.shape[0])), t, x).prev_sample
    states: dict[int, torch.Tensor] = {}
    diffcore.sample(
        toy_velocity,
        _x_T(),
        sampler="deis",
        steps=25,
        schedule=FLOW(shift=3.0),
        prediction="flow",
        sampler_options={"solver_order": order},
        callback=lambda s: states.update({s["i"]: s["x"].clone()}),
    )
    assert _rel(states[23], x) <= TOL


# ---------------------------------------------------------------- convergence order

MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)


def _order(sampler: str, n: tuple[int, int], sigmas, lo: float, hi: float, options: dict) -> float:
    sched = EDMSchedule()
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = MIXTURE.ode_solution(x_T * hi, hi, lo, steps=1000)
    errs = [
        (
            diffcore.sample(
                exact_model(MIXTURE, sched),
                x_T,
                sampler=sampler,
                schedule=sched,
                sigmas=sigmas(k),
                sampler_options=options or None,
            )
            - exact
        )
        .pow(2)
        .mean()
        .sqrt()
        .item()
        for k in n
    ]
    return math.log(errs[0] / errs[1]) / math.log(n[1] / n[0])


# case -> (sampler, published order, grid, options)
ORDERS = {
    "deis-2": ("deis", 2, "karras", {}),
    "deis-3": ("deis", 3, "karras", {"solver_order": 3}),
    # PNDM's RK4 warm-up and 4th-order PLMS: order 4 where its equal-step weights fit the grid ...
    "pndm-uniform": ("pndm", 4, "uniform", {}),
    # ... and 2 on a graded one: equal-step Adams-Bashforth weights on unequal steps are second order
    "pndm-karras": ("pndm", 2, "karras", {}),
    # iPNDM's Euler first step (starting value of error h^2) caps it at 2 on any grid
    "ipndm-uniform": ("ipndm", 2, "uniform", {}),
    "ipndm-karras": ("ipndm", 2, "karras", {}),
    "tcd-gamma0": ("tcd", 1, "karras", {"gamma": 0.0}),  # DDIM
}


@pytest.mark.parametrize("case", list(ORDERS))
@pytest.mark.slow
def test_converges_at_its_order(case: str) -> None:
    sampler, order, grid, options = ORDERS[case]
    if grid == "karras":
        slope = _order(sampler, (48, 96), lambda k: karras_sigmas(0.1, 80.0, k + 1, 7.0), 0.1, 80.0, options)
    else:  # equal steps in sigma, where the ODE is smooth
        slope = _order(
            sampler, (32, 64), lambda k: torch.linspace(2.0, 1.0, k + 1, dtype=torch.float64), 1.0, 2.0, options
        )
    assert abs(slope - order) <= 0.3, f"{case}: measured order {slope:.2f}, expected {order}"


# ---------------------------------------------------------------- every schedule

RING = GaussianMixture.ring(k=8, radius=2.0, std=0.2, dim=2)


def _plans():
    from test_flow import FLOW

    return {
        "linear": (diffcore.get("schedules", "linear")(), "epsilon", "leading"),
        "edm": (EDMSchedule(), "epsilon", "leading"),
        "flow": (FLOW(shift=3.0), "flow", "leading"),
        "zero-snr": (
            diffcore.get("schedules", "scaled_linear")(1000, *BETAS, rescale_betas_zero_snr=True),
            "v_prediction",
            "trailing",
        ),
    }


@pytest.mark.parametrize("schedule", ["linear", "edm", "flow", "zero-snr"])
@pytest.mark.parametrize("sampler", ["deis", "ipndm", "pndm", "lcm", "tcd"])
def test_samples_follow_the_mixture_on_every_schedule(sampler: str, schedule: str) -> None:
    sched, prediction, spacing = _plans()[schedule]
    x_T = torch.randn(2000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = diffcore.sample(
        exact_model(RING, sched, prediction),
        x_T,
        sampler=sampler,
        steps=20,
        schedule=sched,
        prediction=prediction,
        timestep_spacing=spacing,
        seed=2,
    )
    assert torch.isfinite(out).all()
    dist = torch.cdist(out, RING.means).min(dim=1).values
    assert dist.median() < 0.3, f"{sampler} on {schedule}: median distance to the nearest mode {dist.median():.3f}"
    assert abs(out.norm(dim=1).mean().item() - 2.0) < 0.1


def test_pndm_and_tcd_place_their_half_and_intermediate_levels_by_model_time() -> None:
    plan = make_plan(_schedule(), 25, "leading", "pndm")
    train = _schedule().train_sigmas()
    for t in (0, 37, 940):  # integer times land on the training level itself, never below it
        s = sigma_at_time(plan, float(t))
        assert s == pytest.approx(float(train[t]), rel=1e-12)
        assert int(plan.sigma_to_t(torch.tensor([s], dtype=torch.float64))[0]) == t
    assert sigma_at_time(make_plan(EDMSchedule(), 5), 3.5) == pytest.approx(3.5, rel=1e-12)  # EDM: t = sigma
    assert float(plan.sigmas[-1]) == pytest.approx(float(train[0]))  # set_alpha_to_one=False: ends at timestep 0
    assert make_plan(_schedule(), 25, "leading", "pndm").steps == 25
    assert SAMPLERS["pndm"].program(plan).slots == 4 and len(SAMPLERS["pndm"].program(plan).steps) == 25 + 9


# ---------------------------------------------------------------- option errors


@pytest.mark.parametrize(
    ("sampler", "options", "text"),
    [
        ("deis", {"solver_order": 4}, "solver_order=4"),
        ("deis", {"solver_order": True}, "solver_order=True"),
        ("tcd", {"gamma": 1.5}, "gamma=1.5"),
        ("tcd", {"gamma": "0.3"}, "gamma='0.3'"),
        ("lcm", {"timestep_scaling": 0.0}, "timestep_scaling=0.0"),
        ("lcm", {"original_inference_steps": 0}, "original_inference_steps=0"),
        ("tcd", {"original_inference_steps": 2.5}, "original_inference_steps=2.5"),
    ],
)
def test_bad_options_raise_naming_the_value(sampler: str, options: dict, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        diffcore.sample(toy_model, _x_T(), sampler=sampler, steps=4, schedule=_schedule(), sampler_options=options)


def test_bad_plan_options_raise() -> None:
    with pytest.raises(ValueError, match="original_inference_steps=2000"):
        make_plan(_schedule(), 4, style="lcm", original_inference_steps=2000)
    with pytest.raises(ValueError, match="steps=30 exceeds original_inference_steps=20"):
        make_plan(_schedule(), 30, style="tcd", original_inference_steps=20)
    with pytest.raises(TypeError, match="unknown option"):
        make_plan(_schedule(), 4, style="pndm", original_inference_steps=20)
    with pytest.raises(TypeError, match="unknown option"):
        diffcore.sample(toy_model, _x_T(), sampler="ipndm", steps=4, schedule=_schedule(), sampler_options={"gamma": 1})

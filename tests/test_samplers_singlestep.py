"""Single-step solvers (dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral, dpmpp_2s, dpmpp_sde) against
their oracles: diffusers' KDPM2 / KDPM2Ancestral / DPMSolverSinglestep / DPMSolverSDE schedulers,
k-diffusion's sampler functions, the convergence order on the closed-form mixture, and the
Brownian-tree noise's own properties."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import pytest
import torch

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.evaluation.convergence import estimated_order, sampler_errors
from diffcore.samplers import SAMPLERS
from diffcore.samplers.brownian import BrownianPath
from diffcore.schedules import EDMSchedule, karras_sigmas
from diffcore.timesteps import make_plan, plan_from_sigmas

diffusers = pytest.importorskip("diffusers")
from test_diffusers_parity import diffusers_loop, toy_model  # noqa: E402

TOL = 1e-4
BETAS = (0.00085, 0.012)


def _diffcore(sampler: str, prediction: str, spacing: str, steps: int, **kw) -> torch.Tensor:
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    schedule = diffcore.get("schedules", "scaled_linear")(1000, *BETAS)
    return diffcore.sample(
        toy_model,
        x_T,
        sampler=sampler,
        steps=steps,
        schedule=schedule,
        prediction=prediction,
        timestep_spacing=spacing,
        **kw,
    )


def _scheduler(name: str, prediction: str, spacing: str | None, **cfg):
    if spacing is not None:  # DPMSolverSinglestep has no timestep_spacing: its grid is linspace
        cfg["timestep_spacing"] = spacing
    return getattr(diffusers, name)(
        beta_schedule="scaled_linear", beta_start=BETAS[0], beta_end=BETAS[1], prediction_type=prediction, **cfg
    )


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize(
    ("sampler", "scheduler"),
    [("dpm_2", "KDPM2DiscreteScheduler"), ("dpm_2_ancestral", "KDPM2AncestralDiscreteScheduler")],
)
@pytest.mark.slow
def test_kdpm2_matches_diffusers(sampler: str, scheduler: str, prediction: str, spacing: str) -> None:
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(_scheduler(scheduler, prediction, spacing), x_T, 25, seed=7)
    out = _diffcore(sampler, prediction, spacing, 25, generator=torch.Generator().manual_seed(7))
    assert _rel(out, ref) <= TOL


@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [25, 24])
def test_dpmpp_2s_matches_diffusers_singlestep(steps: int, prediction: str, solver_type: str) -> None:
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    sched = _scheduler("DPMSolverSinglestepScheduler", prediction, None, solver_type=solver_type)
    ref = diffusers_loop(sched, x_T, steps, seed=7)
    out = _diffcore("dpmpp_2s", prediction, "linspace", steps, sampler_options={"solver_type": solver_type})
    assert _rel(out, ref) <= TOL


class _FixedNoise:
    """A noise_sampler(sigma, sigma_next) that hands out diffcore's Brownian increments in order."""

    def __init__(self, noises: list[torch.Tensor]) -> None:
        self.noises = list(noises)

    def __call__(self, *_: object) -> torch.Tensor:
        return self.noises.pop(0)


def _brownian_noises(sampler: str, plan, like: torch.Tensor, seed: int) -> list[torch.Tensor]:
    path = BrownianPath(like, seed)
    return [path.noise(*st.span) for st in SAMPLERS[sampler].program(plan).steps if st.span is not None]


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dpmpp_sde_matches_diffusers_with_the_same_brownian_noise(prediction: str) -> None:
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    schedule = diffcore.get("schedules", "scaled_linear")(1000, *BETAS)
    plan = make_plan(schedule, 25, "leading", "karras")
    sched = _scheduler("DPMSolverSDEScheduler", prediction, "leading")
    sched.set_timesteps(25)
    sched.noise_sampler = _FixedNoise(_brownian_noises("dpmpp_sde", plan, x_T, seed=11))
    sched.set_timesteps = lambda *a, **k: None  # keep the injected noise sampler
    ref = diffusers_loop(sched, x_T, 25, seed=0)
    out = _diffcore("dpmpp_sde", prediction, "leading", 25, seed=11)
    assert _rel(out, ref) <= TOL


def _kdiffusion_sampling() -> types.ModuleType:
    """k-diffusion's sampling module, loaded without its package __init__ (which imports training
    code and torchvision); its one helper from k_diffusion.utils is supplied here."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(root)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils")}
    sys.modules.update({"k_diffusion": pkg, "k_diffusion.utils": utils})
    try:
        sampling_spec = importlib.util.spec_from_file_location("k_diffusion.sampling", root / "sampling.py")
        module = importlib.util.module_from_spec(sampling_spec)  # type: ignore[arg-type]
        sampling_spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


MIXTURE = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)


@pytest.mark.parametrize(
    ("sampler", "function", "eta"),
    [
        ("dpm_2", "sample_dpm_2", None),
        ("dpm_2_ancestral", "sample_dpm_2_ancestral", 1.0),
        ("dpm_2_ancestral", "sample_dpm_2_ancestral", 0.5),
        ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", 1.0),
        ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", 0.0),
        ("dpmpp_sde", "sample_dpmpp_sde", 1.0),
    ],
)
def test_matches_k_diffusion(sampler: str, function: str, eta: float | None) -> None:
    """Same EDM denoiser, same sigmas, same noise (k-diffusion is handed diffcore's draws)."""
    k = _kdiffusion_sampling()
    sched = EDMSchedule()
    sigmas = karras_sigmas(0.002, 80.0, 12, 7.0)
    sigmas_0 = torch.cat([sigmas, sigmas.new_zeros(1)])
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = exact_model(MIXTURE, sched)
    options = {} if eta is None else {"eta": eta}
    out = diffcore.sample(
        model, x_T, sampler=sampler, schedule=sched, sigmas=sigmas_0, seed=5, sampler_options=options or None
    )
    plan = plan_from_sigmas(sched, sigmas_0)
    program = SAMPLERS[sampler].program(plan, **options)
    like = x_T * float(sigmas_0[0])
    if sampler == "dpmpp_sde":
        noises = _brownian_noises(sampler, plan, like, seed=5)
    else:
        noises = [diffcore.ops.philox_noise_like(like, 5, offset=i) for i, st in enumerate(program.steps) if st.noise]

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma[:, None] * model(x, sigma)  # the exact model predicts epsilon

    sampler_fn = _FixedNoise(noises) if eta else (lambda *_: torch.zeros_like(like))  # eta 0 multiplies by 0
    kw = {"disable": True, "noise_sampler": sampler_fn} if eta is not None else {"disable": True}
    if eta is not None:
        kw["eta"] = eta
    ref = getattr(k, function)(denoiser, like.clone(), sigmas_0, **kw)
    assert _rel(out, ref) <= 1e-6  # the model sees float32 times


def _order(sampler: str, options: dict) -> float:
    """Measured order from 24 to 48 Karras steps (the shared convergence study)."""
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = MIXTURE.ode_solution(x_T * 80.0, 80.0, 0.1, steps=1000)
    errors, _ = sampler_errors(
        MIXTURE, EDMSchedule(), sampler, x_T, exact, [24, 48], sigma_min=0.1, sigma_max=80.0, options=options or None
    )
    return estimated_order([24, 48], errors)


@pytest.mark.parametrize(
    ("sampler", "options"),
    [
        ("dpm_2", {}),
        ("dpm_2_ancestral", {"eta": 0.0}),
        ("dpmpp_2s_ancestral", {"eta": 0.0}),
        ("dpmpp_2s", {}),
        ("dpmpp_sde", {"eta": 0.0}),
    ],
)
@pytest.mark.slow
def test_deterministic_variants_converge_at_second_order(sampler: str, options: dict) -> None:
    assert abs(_order(sampler, options) - 2.0) <= 0.3


def test_brownian_increments_are_standard_normal_and_consistent() -> None:
    like = torch.zeros(20000, dtype=torch.float64)
    path = BrownianPath(like, seed=1)
    z = path.noise(3.0, 1.0)
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1.0) < 0.03
    # W(a) - W(c) = (W(a) - W(b)) + (W(b) - W(c)): one path, whatever the step
    a, b, c = 5.0, 2.0, 0.5

    def incr(s0: float, s1: float) -> torch.Tensor:
        return path.noise(s0, s1) * math.sqrt(abs(s1 / (1 + s1) - s0 / (1 + s0)))

    torch.testing.assert_close(incr(a, c), incr(a, b) + incr(b, c), atol=1e-6, rtol=0)
    # increments over disjoint intervals are uncorrelated
    assert abs((path.noise(a, b) * path.noise(b, c)).mean().item()) < 0.03


@pytest.mark.slow
def test_dpmpp_sde_follows_one_path_at_any_step_count() -> None:
    """With Brownian noise the SDE solution converges as steps grow, for one seed."""
    sched = EDMSchedule()
    x_T = torch.randn(256, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = exact_model(MIXTURE, sched)

    def run(n: int) -> torch.Tensor:
        return diffcore.sample(
            model,
            x_T,
            sampler="dpmpp_sde",
            schedule=sched,
            sigmas=torch.cat([karras_sigmas(0.05, 80.0, n, 7.0), torch.zeros(1, dtype=torch.float64)]),
            seed=123,
        )

    ref = run(200)
    # strong order ~1/2 and one noise realisation: compare step counts four times apart, where the
    # error falls by about half (25 -> 100 steps: 7.7 -> 4.0 fast noise, 8.9 -> 4.1 exact, 7.9 -> 4.2
    # with the pre-#17 stream); a path that changed with the step count would not converge at all
    e25, e100 = (run(25) - ref).norm().item(), (run(100) - ref).norm().item()
    assert e100 < e25 * 0.7
    other = diffcore.sample(
        model,
        x_T,
        sampler="dpmpp_sde",
        schedule=sched,
        sigmas=torch.cat([karras_sigmas(0.05, 80.0, 50, 7.0), torch.zeros(1, dtype=torch.float64)]),
        seed=124,
    )
    assert (other - ref).norm().item() > 2 * e100  # another seed is another path


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_matches_k_diffusion(order: int) -> None:
    """Same steps accepted and rejected, same model evaluations, same result (k-diffusion's float32
    times aside), integrating from sigma_max to sigma_min."""
    k = _kdiffusion_sampling()
    sched = EDMSchedule()
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = exact_model(MIXTURE, sched)
    info: dict = {}
    out = diffcore.sample(
        model,
        x_T,
        sampler="dpm_adaptive",
        schedule=sched,
        sigmas=[80.0, 0.05],
        sampler_options={"order": order, "info": info},
    )

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x - sigma[:, None] * model(x, sigma)

    ref, ref_info = k.sample_dpm_adaptive(denoiser, x_T * 80.0, 0.05, 80.0, order=order, disable=True, return_info=True)
    assert info["nfe"] == ref_info["nfe"] and info["n_reject"] == ref_info["n_reject"]
    assert _rel(out, ref) <= 1e-4


@pytest.mark.slow
def test_dpm_adaptive_tightens_with_rtol_and_ends_at_zero() -> None:
    sched = EDMSchedule()
    x_T = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = MIXTURE.ode_solution(x_T * 80.0, 80.0, 0.01, steps=2000)
    runs = {}
    for rtol in (0.1, 0.01):
        info: dict = {}
        out = diffcore.sample(
            exact_model(MIXTURE, sched),
            x_T,
            sampler="dpm_adaptive",
            schedule=sched,
            sigmas=[80.0, 0.01],
            sampler_options={"rtol": rtol, "atol": rtol / 10, "info": info},
        )
        runs[rtol] = ((out - exact).pow(2).mean().sqrt().item(), info["nfe"])
    assert runs[0.01][0] < runs[0.1][0] and runs[0.01][1] > runs[0.1][1]
    info = {}
    final = diffcore.sample(
        exact_model(MIXTURE, sched),
        x_T,
        sampler="dpm_adaptive",
        schedule=sched,
        steps=10,
        sampler_options={"info": info},
    )
    assert torch.isfinite(final).all() and info["nfe"] == 3 * info["steps"] + 1  # + the denoising call at sigma 0
    with pytest.raises(ValueError, match="order"):
        diffcore.sample(
            exact_model(MIXTURE, sched), x_T, sampler="dpm_adaptive", schedule=sched, sampler_options={"order": 4}
        )

"""The sampler authoring layer: linear expressions, the VE-to-state conversion, history, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.samplers import SAMPLERS, Builder, Expr, program_sampler
from diffcore.schedules import EDMSchedule, make_schedule
from diffcore.timesteps import PLAN_PRESETS, make_plan


def _plan(steps: int = 4, name: str = "linear"):
    return make_plan(make_schedule(name), steps, "leading", "karras")


def test_expr_arithmetic_combines_terms() -> None:
    a = Expr({"x": 1.0, "x0": 2.0}, step=0)
    b = Expr({"x0": -1.0, 3: 0.5})
    e = 2 * a - b / 2 + 0
    assert e.terms == {"x": 2.0, "x0": 4.5, 3: -0.25} and e.step == 0
    assert (np.float64(3.0) * b).terms == {"x0": -3.0, 3: 1.5}  # numpy scalars defer to Expr
    assert sum([a, a]).terms == {"x": 2.0, "x0": 4.0}


def test_expr_refuses_mixing_two_model_calls() -> None:
    with pytest.raises(ValueError, match="History"):
        Expr({"x": 1.0}, step=0) + Expr({"x0": 1.0}, step=1)


def test_update_converts_ve_to_state_units() -> None:
    """x' = x0 + s' d in VE units is the DDIM row (alpha' - std' alpha/std) x0 + (std'/std) x in state units."""
    plan = _plan()
    b = Builder(plan)
    p = b.model(0)
    b.update(p.x0 + p.sigma_to * p.d)
    row = b.build().steps[0].rows[0]
    (alpha, std), (alpha_to, std_to) = plan.level(0), plan.target(0)
    np.testing.assert_allclose(row, [std_to / std, alpha_to - std_to * alpha / std, 0.0], rtol=1e-12)


def test_history_keeps_newest_first_and_reuses_the_oldest_slot() -> None:
    b = Builder(_plan(5))
    h = b.history(2)
    slots = []
    for i in range(4):
        p = b.model(i)
        if len(h) >= 1:
            slots.append(next(iter(h[0].terms)))
        h.push(p.x0)
        b.update(p.x0 + sum(h[j] for j in range(len(h))))
    assert slots == [0, 1, 0]  # slot of the newest value after pushes 1, 2, 3
    prog = b.build()
    assert prog.slots == 2
    assert [st.writes for st in prog.steps] == [(0,), (1,), (0,), ()]  # the last write is never read: dropped


def test_builder_errors_name_the_mistake() -> None:
    b = Builder(_plan(), "mine")
    with pytest.raises(ValueError, match="needs a model"):
        b.update(b.noise)
    p = b.model(0)
    with pytest.raises(ValueError, match="histories before"):
        b.history(1)
    with pytest.raises(ValueError, match="before the next"):
        b.model(1)
    b.update(p.x0)
    b.model(1)
    with pytest.raises(ValueError, match="earlier model call"):
        b.update(p.x0)
    with pytest.raises(ValueError, match="outside"):
        Builder(_plan()).model(99)


def test_non_finite_coefficients_are_refused() -> None:
    """At zero terminal SNR x / alpha is infinite: an update using x there is refused, not NaN."""
    sched = make_schedule("scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    plan = make_plan(sched, 4, "trailing", "ddim")

    @program_sampler("bad_euler", plan_style="ddim")
    def bad(b: Builder) -> None:
        for i in range(b.steps):
            p = b.model(i)
            b.update(p.x + (p.sigma_to - p.sigma) * p.d)

    assert math.isinf(Builder(plan).sigma(0))
    with pytest.raises(ValueError, match="non-finite"):
        bad.program(plan)
    rows = SAMPLERS["ddim"].program(plan).steps[0].rows
    assert np.isfinite(rows).all()


def test_noise_flag_follows_nonzero_noise() -> None:
    plan = _plan(3)
    assert not any(st.noise for st in SAMPLERS["euler_ancestral"].program(plan, eta=0.0).steps)
    flags = [st.noise for st in SAMPLERS["euler_ancestral"].program(plan, eta=1.0).steps]
    assert flags == [True, True, False]  # the last step lands on sigma 0: no noise


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_builtins_use_a_named_plan_preset(name: str) -> None:
    assert SAMPLERS[name].plan_style in PLAN_PRESETS


def test_unknown_plan_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="plan_style"):
        program_sampler("x", plan_style="fancy")(lambda b: None)


def test_one_author_serves_vp_and_ve_schedules() -> None:
    """The same VE-authored Euler converges to the exact ODE solution on a VP and an EDM schedule."""
    gm = GaussianMixture.ring(k=4, radius=2.0, std=0.3, dim=2)
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sched, pred in ((make_schedule("linear"), "epsilon"), (EDMSchedule(), "edm")):
        coarse = diffcore.sample(exact_model(gm, sched), x, sampler="euler", steps=10, schedule=sched, prediction=pred)
        fine = diffcore.sample(exact_model(gm, sched), x, sampler="euler", steps=80, schedule=sched, prediction=pred)
        finer = diffcore.sample(exact_model(gm, sched), x, sampler="euler", steps=160, schedule=sched, prediction=pred)
        assert (fine - finer).norm() < (coarse - finer).norm() / 4

"""CFG++ samplers (Chung et al. 2024, ComfyUI's euler_cfg_pp, euler_ancestral_cfg_pp and
dpmpp_2m_cfg_pp): a written-out float64 reference loop is the oracle on VP, EDM and flow
schedules (also with APG, CFG-Zero* and rescale guidance), with cond == uncond they are the
base samplers, and the builder folds x0u into the fused op or refuses what it cannot fold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore.denoiser import Denoiser
from diffcore.guidance import APG, CFG, CFGZeroStar, Guidance
from diffcore.parameterization import make_parameterization
from diffcore.samplers import SAMPLERS, Builder
from diffcore.samplers.builder import plan_level
from diffcore.samplers.ddim import ancestral_split
from diffcore.schedules import make_schedule
from diffcore.timesteps import make_plan

W = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5
NAMES = ["euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"]


def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Smooth, nonlinear, time dependent; ``cond`` (B,) shifts the output per sample."""
    tt = t.to(x.dtype).reshape(-1, 1, 1) / 1000.0
    out = torch.tanh(x @ W.to(x.dtype)) * torch.cos(3 * tt) + 0.3 * x * tt
    if cond is not None:
        out = out + 0.4 * cond.to(x.dtype).reshape(-1, 1, 1) * torch.sin(x)
    return out


COND, UNCOND = torch.tensor([1.0, -0.5, 2.0]), torch.zeros(3)


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the written-out reference


def _guided(g: Guidance, u: torch.Tensor, c: torch.Tensor, state: dict) -> torch.Tensor:
    """The guided model output m_g of each method, from the papers' formulas (per sample)."""
    w, uf, cf = g.scale, u.flatten(1), c.flatten(1)
    if isinstance(g, CFGZeroStar):
        s = ((cf * uf).sum(1) / ((uf * uf).sum(1) + 1e-8))[:, None]
        m = s * uf + w * (cf - s * uf)
    elif isinstance(g, APG):
        d = cf - uf
        if g.momentum:
            state["avg"] = d + g.momentum * state.get("avg", 0.0)
            d = state["avg"]
        if g.norm_threshold > 0:
            d = d * torch.clamp(g.norm_threshold / d.norm(dim=1, keepdim=True), max=1.0)
        unit = cf / cf.norm(dim=1, keepdim=True)
        par = (d * unit).sum(1, keepdim=True) * unit
        m = uf + w * ((d - par) + g.eta * par)
    else:
        m = uf + w * (cf - uf)
    if g.rescale:
        m = m * (g.rescale * cf.std(1, keepdim=True) / m.std(1, keepdim=True) + 1 - g.rescale)
    return m.reshape(u.shape)


def reference(name: str, plan, param, x: torch.Tensor, g: Guidance, generator=None, eta: float = 1.0):
    """ComfyUI's CFG++ loops in VE units, float64: ``x0`` guided, ``x0u`` unconditional."""
    state: dict = {}
    old_u = None
    for i in range(plan.steps):
        lv, to = plan_level(plan, i), plan_level(plan, i + 1)
        s, s_to = (math.inf if lv.alpha == 0 else lv.std / lv.alpha), to.std / to.alpha
        a, b = param.x0_coeffs(lv.alpha, lv.std)
        t = torch.full((x.shape[0],), lv.t, dtype=plan.timestep_dtype)
        x_in = x * param.input_scale(lv.alpha, lv.std)
        u, c = model(x_in, t, UNCOND), model(x_in, t, COND)
        x0u, x0 = a * x + b * u, a * x + b * _guided(g, u, c, state)
        du = (x - lv.alpha * x0u) / lv.std  # (x_ve - x0u) / sigma, finite at sigma = inf
        if name == "euler_cfg_pp":
            ve = x0 + s_to * du
        elif name == "euler_ancestral_cfg_pp":
            s_down, s_up = ancestral_split(s, s_to, eta)
            ve = x0 + s_down * du
            if s_up > 0:
                ve = ve + s_up * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        else:
            ve = x0 + s_to * du
            if old_u is not None and s_to > 0:
                h = math.log(s / s_to)
                r = math.log(plan_level_sigma(plan, i - 1) / s) / h
                ve = ve - math.expm1(-h) / (2 * r) * (x0 - old_u)
            old_u = x0u
        x = to.alpha * ve
    return x


def plan_level_sigma(plan, i: int) -> float:
    lv = plan_level(plan, i)
    return math.inf if lv.alpha == 0 else lv.std / lv.alpha


SETUPS = {
    "vp-eps": ("linear", "epsilon"),
    "vp-v": ("scaled_linear", "v_prediction"),
    "edm": ("edm", "edm"),
    "flow": ("flow", "flow"),  # starts at sigma = inf
}


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("name", NAMES)
def test_matches_the_written_out_reference(name: str, setup: str) -> None:
    sched_name, pred = SETUPS[setup]
    sampler = SAMPLERS[name]
    plan = make_plan(make_schedule(sched_name), 12, "leading", sampler.plan_style)
    param = make_parameterization(pred)
    x = _x() * plan.init_scale
    g = CFG(0.7)
    den = Denoiser(model, param, timestep_dtype=plan.timestep_dtype, cond=COND, uncond=UNCOND, guidance=g)
    out = sampler(den, x.clone(), plan, generator=torch.Generator().manual_seed(5))
    want = reference(name, plan, param, x.clone(), g, torch.Generator().manual_seed(5))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-9 * want.abs().max().item())


GUIDANCES = {
    "rescale": CFG(0.8, rescale=0.7),
    "apg": APG(0.9, eta=0.3, norm_threshold=0.5),
    "apg-momentum": APG(0.9, eta=0.0, norm_threshold=2.0, momentum=-0.5),
    "zero-star": CFGZeroStar(0.8, zero_init_steps=0),
}


@pytest.mark.parametrize("guidance", list(GUIDANCES))
@pytest.mark.parametrize("name", ["euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp"])
def test_cfg_pp_composes_with_every_guidance_method(name: str, guidance: str) -> None:
    """CFG++ mixes the method's guided x0 with the unconditional x0: u + f (m_g - u) per step."""
    sampler = SAMPLERS[name]
    plan = make_plan(make_schedule("linear"), 10, "leading", sampler.plan_style)
    param = make_parameterization("epsilon")
    g = GUIDANCES[guidance]
    den = Denoiser(model, param, timestep_dtype=plan.timestep_dtype, cond=COND, uncond=UNCOND, guidance=g)
    x = _x(2) * plan.init_scale
    out = sampler(den, x.clone(), plan, generator=torch.Generator().manual_seed(3))
    want = reference(name, plan, param, x.clone(), g, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, want, rtol=1e-7, atol=1e-7 * want.abs().max().item())


BASE = {
    "euler_cfg_pp": ("euler", {}),
    "euler_ancestral_cfg_pp": ("euler_ancestral", {}),
    "dpmpp_2m_cfg_pp": ("dpmpp_2m", {"lower_order_final": False}),
}


@pytest.mark.parametrize("name", NAMES)
def test_without_a_guidance_signal_they_are_the_base_samplers(name: str) -> None:
    """With cond == uncond, x0u = x0 and CFG++ is its base sampler (ComfyUI's dpmpp_2m: no
    lower-order final steps)."""
    base, options = BASE[name]
    kw = dict(steps=10, schedule="linear", seed=4)
    same = torch.zeros(3)
    ours = diffcore.sample(model, _x(), sampler=name, cond=same, uncond=same, guidance_scale=0.6, **kw)
    plain = diffcore.sample(model, _x(), sampler=base, cond=same, sampler_options=options, **kw)
    torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-10)


def test_lambda_scales_the_guided_jump() -> None:
    kw = dict(sampler="euler_cfg_pp", steps=8, schedule="linear", cond=COND, uncond=UNCOND, seed=0)
    zero = diffcore.sample(model, _x(), guidance_scale=0.0, **kw)
    uncond = diffcore.sample(model, _x(), sampler="euler", steps=8, schedule="linear", cond=UNCOND, seed=0)
    torch.testing.assert_close(zero, uncond, rtol=1e-10, atol=1e-10)  # lambda = 0: the unconditional model
    a, b = (diffcore.sample(model, _x(), guidance_scale=s, **kw) for s in (0.5, 1.0))
    assert (a - zero).abs().max() > 1e-3 and (b - a).abs().max() > 1e-3


def test_outside_the_guidance_interval_steps_are_the_base_sampler() -> None:
    """An interval that no step's sigma is in: the conditional model alone, one pass per step."""
    calls = []

    def counting(x, t, cond=None):
        calls.append(None if cond is None else tuple(cond.tolist()))
        return model(x, t, cond)

    kw = dict(steps=8, schedule="linear", seed=2, cond=COND)
    out = diffcore.sample(
        counting, _x(), sampler="dpmpp_2m_cfg_pp", uncond=UNCOND, guidance_scale=0.8, guidance_interval=(1e3, 1e4), **kw
    )
    assert len(calls) == 8 and all(c == tuple(COND.tolist()) for c in calls)
    base = diffcore.sample(model, _x(), sampler="dpmpp_2m", sampler_options={"lower_order_final": False}, **kw)
    torch.testing.assert_close(out, base, rtol=1e-10, atol=1e-10)
    everywhere = diffcore.sample(
        model,
        _x(),
        sampler="dpmpp_2m_cfg_pp",
        uncond=UNCOND,
        guidance_scale=0.8,
        guidance_interval=(0.0, math.inf),
        **kw,
    )
    plain = diffcore.sample(model, _x(), sampler="dpmpp_2m_cfg_pp", uncond=UNCOND, guidance_scale=0.8, **kw)
    torch.testing.assert_close(everywhere, plain, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_sample_from_mixes_start_levels(name: str) -> None:
    """Per-sample start levels (own CFG++ factors, interval membership and side ops) equal
    separate runs of the same batch layout."""
    x = _x(3)
    starts = torch.tensor([200.0, 600.0, 999.0])
    kw = dict(
        sampler=name, steps=6, schedule="linear", seed=3, guidance_scale=0.7, guidance_interval=(0.5, 20.0), noise=_x(4)
    )
    mixed = diffcore.sample_from(model, x, starts, cond=COND, uncond=UNCOND, **kw)
    for i, s in enumerate(starts.tolist()):
        alone = diffcore.sample_from(model, x, torch.full((3,), s), cond=COND, uncond=UNCOND, **kw)
        torch.testing.assert_close(mixed[i], alone[i], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_without_guidance_they_are_the_base_samplers(name: str) -> None:
    """No guidance: x0u is the model's x0 (as outside a guidance interval), so every sampler runs
    unguided too (sampler studies, backend parity)."""
    base, options = BASE[name]
    kw = dict(steps=6, schedule="linear", seed=4, cond=COND)
    ours = diffcore.sample(model, _x(), sampler=name, **kw)
    torch.testing.assert_close(
        ours, diffcore.sample(model, _x(), sampler=base, sampler_options=options, **kw), rtol=1e-10, atol=1e-10
    )


# --------------------------------------------------------------------------- the builder's folding


def _plan(steps: int = 4):
    return make_plan(make_schedule("linear"), steps, "leading", "karras")


def test_euler_cfg_pp_folds_to_euler_with_a_per_step_factor() -> None:
    """x0 + s' (x - x0u)/s = (1 - s'/s) x0' + (s'/s) x with x0' at guidance f w, f = s / (s - s')."""
    plan = _plan(5)
    ours = SAMPLERS["euler_cfg_pp"].program(plan)
    euler = SAMPLERS["euler"].program(plan)
    for k, (a, b) in enumerate(zip(ours.steps, euler.steps)):
        np.testing.assert_allclose(a.rows, b.rows, rtol=1e-12)
        s, s_to = plan_level_sigma(plan, k), plan_level_sigma(plan, k + 1)
        assert math.isclose(a.factor, s / (s - s_to), rel_tol=1e-12) and a.side_rows is None
        assert a.uncond == (s_to > 0)  # into sigma = 0: the guided x0 itself, f = 1


def test_dpmpp_2m_cfg_pp_writes_x0u_with_a_side_op() -> None:
    prog = SAMPLERS["dpmpp_2m_cfg_pp"].program(_plan(5))
    # the last two writes are dead: the step into sigma = 0 is first order
    assert [st.side_writes for st in prog.steps] == [(0,), (1,), (0,), (), ()]
    assert all(st.writes == () for st in prog.steps) and prog.steps[-1].side_rows is None
    for st in prog.steps[:3]:  # x0u = the x0 column of the side op, nothing else
        assert st.side_rows is not None and st.side_rows.shape == (1, 5)
        np.testing.assert_allclose(st.side_rows[0], [0.0, 1.0, 0.0, 0.0, 0.0])


def _two_steps(first, text: str) -> None:
    """Step 0 runs ``first(b, p, h)``; step 1 reads the history, so step 0's write is live."""
    b = Builder(_plan(3), "probe")
    h = b.history(1)
    first(b, b.model(0), h)
    p = b.model(1)
    b.update(p.x0 + (h[0] if len(h) else 0))
    with pytest.raises(ValueError, match=text):
        b.build()


def test_unfoldable_steps_are_refused() -> None:
    _two_steps(lambda b, p, h: b.update(p.x0 - p.x0u), "x0 - x0u alone")
    _two_steps(lambda b, p, h: (h.push(p.x0), b.update(p.x0 + 0.5 * p.x0u)), "different ratios")
    _two_steps(lambda b, p, h: (h.push(p.x0u + b.noise), b.update(p.x0)), "with noise")


def test_a_side_write_into_a_slot_the_step_reads_is_refused() -> None:
    b = Builder(_plan(3), "probe")
    h = b.history(1)
    for i in range(3):
        p = b.model(i)
        x_next = p.x0 + p.sigma_to * p.du + (0.1 * (p.x0 - h[0]) if len(h) else 0)
        h.push(p.x0u)
        b.update(x_next)
    with pytest.raises(ValueError, match="history slot 0"):
        b.build()


def test_generate_keeps_both_passes_for_cfg_pp_at_scale_one(monkeypatch) -> None:
    """At guidance 1 plain CFG is the conditional model alone, but CFG++ still renoises with the
    unconditional branch: the generate task must not drop it for the *_cfg_pp samplers."""
    from diffcore.tasks import generation

    seen = []

    class Pipe:
        num_classes, sampler = 10, "euler"

        def generate(self, n, **kw):
            seen.append(kw["guidance_scale"])
            return torch.zeros(n, 1, 8, 8)

    monkeypatch.setattr(generation, "resolve_labels", lambda pipe, spec, n: torch.zeros(n, dtype=torch.long))
    for sampler in ("euler", "euler_cfg_pp"):
        params = generation.GenerateParams("ckpt", n=2, class_label="0", guidance_scale=1.0, sampler=sampler)
        generation.generate_samples(Pipe(), params)
    assert seen == [None, 1.0]

"""Guidance methods against diffusers 0.42.1's guiders: ClassifierFreeGuidance with start/stop
(as a sigma interval), AdaptiveProjectedGuidance (eta, norm threshold, momentum) and
ClassifierFreeZeroStarGuidance (optimized scale, zero-init), fed the same random predictions,
then end to end with diffusers' Euler scheduler; plus what the interval and zero-init save,
CUDA-graph replay (fake capture) and the errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffcore
from diffcore import graphs
from diffcore.denoiser import Denoiser
from diffcore.guidance import APG, CFG, CFGZeroStar, Guidance, make_guidance
from diffcore.parameterization import make_parameterization
from diffcore.samplers.program import Program, Step, run_program
from diffcore.timesteps import Level

diffusers = pytest.importorskip("diffusers")
from diffusers.guiders import (  # noqa: E402
    AdaptiveProjectedGuidance,
    ClassifierFreeGuidance,
    ClassifierFreeZeroStarGuidance,
)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer  # noqa: E402

N, B = 8, 3
SIGMAS = np.geomspace(20.0, 0.05, N)
COND, UNCOND = torch.ones(B), torch.zeros(B)


def _preds(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    us = [torch.randn(B, 4, 8, 8, generator=g) for _ in range(N)]
    cs = [u + 0.8 * torch.randn(B, 4, 8, 8, generator=g) + 0.3 for u in us]
    return us, cs


def table_model(us, cs, calls=None):
    """Returns step k's fixed predictions (k = the model time): ``cond`` 1 -> cs[k], 0 -> us[k]."""

    def model(x, t, cond=None):
        k = int(round(float(t[0])))
        if calls is not None:
            calls.append((k, x.shape[0], cond is None))
        if cond is None:
            return us[k].clone()
        src = torch.stack([us[k], cs[k]])
        return src[cond.long(), torch.arange(x.shape[0]) % B]

    return model


def _interval(start: float, stop: float, sigmas=SIGMAS) -> tuple[float, float] | None:
    """diffusers' step range [int(start n), int(stop n)) as VE sigmas (lo, hi], cut between levels."""
    n = len(sigmas)
    k0, k1 = int(start * n), int(stop * n)
    if (k0, k1) == (0, n):
        return None
    hi = math.inf if k0 == 0 else 0.5 * (sigmas[k0] + sigmas[k0 - 1])
    lo = 0.0 if k1 >= n else 0.5 * (sigmas[k1] + sigmas[k1 - 1])
    return lo, hi


def ours_per_step(guidance: Guidance, us, cs, *, batched: bool = True, direct: bool = False) -> list[torch.Tensor]:
    """The guided output at every step: a program whose step is ``x' = x0`` with x0 = the output."""
    den = Denoiser(
        table_model(us, cs),
        make_parameterization("sample"),
        cond=COND,
        uncond=UNCOND if batched else None,
        guidance=guidance,
    )
    levels = [Level(float(k), 1.0, float(s)) for k, s in enumerate(SIGMAS)]
    x = torch.zeros_like(us[0])
    if direct:
        return [den.predict_x0(x, lv, step=k) for k, lv in enumerate(levels)]
    seen: list[torch.Tensor] = []
    program = Program([Step(lv, np.array([[0.0, 1.0, 0.0]])) for lv in levels])
    run_program(den, x, program, callback=lambda d: seen.append(d["x"].clone()))
    return seen


def diffusers_per_step(guider, us, cs) -> list[torch.Tensor]:
    out = []
    for k in range(N):
        guider.set_state(step=k, num_inference_steps=N, timestep=torch.tensor(k))
        if k == 0 and getattr(guider, "adaptive_projected_guidance_momentum", None) is not None:
            guider.momentum_buffer = MomentumBuffer(guider.adaptive_projected_guidance_momentum)
        out.append(guider.forward(pred_cond=cs[k], pred_uncond=us[k]).pred)
    return out


CASES = {
    "cfg": (dict(guidance_scale=7.5), CFG, {}),
    "cfg-interval": (dict(guidance_scale=5.0, start=0.25, stop=0.75), CFG, {}),
    "cfg-rescale": (dict(guidance_scale=7.5, guidance_rescale=0.7, start=0.0, stop=0.5), CFG, {}),
    "apg": (dict(guidance_scale=7.5), APG, {}),
    "apg-eta0": (
        dict(guidance_scale=5.0, eta=0.0, adaptive_projected_guidance_rescale=2.0),
        APG,
        {"eta": 0.0, "norm_threshold": 2.0},
    ),
    "apg-no-clip": (
        dict(guidance_scale=5.0, eta=0.5, adaptive_projected_guidance_rescale=0.0),
        APG,
        {"eta": 0.5, "norm_threshold": 0.0},
    ),
    "apg-scale-1": (
        dict(guidance_scale=1.0, eta=0.0, adaptive_projected_guidance_rescale=2.0),
        APG,
        {"eta": 0.0, "norm_threshold": 2.0},
    ),  # diffusers: the conditional output
    "apg-momentum": (
        dict(guidance_scale=7.5, eta=0.0, adaptive_projected_guidance_momentum=-0.5),
        APG,
        {"eta": 0.0, "momentum": -0.5},
    ),
    "apg-momentum-interval-rescale": (
        dict(guidance_scale=4.0, adaptive_projected_guidance_momentum=0.3, guidance_rescale=0.5, start=0.2, stop=0.8),
        APG,
        {"momentum": 0.3},
    ),
    "zero-star": (dict(guidance_scale=5.0), CFGZeroStar, {}),
    "zero-star-2-interval": (
        dict(guidance_scale=5.0, zero_init_steps=2, start=0.0, stop=0.6),
        CFGZeroStar,
        {"zero_init_steps": 2},
    ),
    "zero-star-rescale": (
        dict(guidance_scale=5.0, zero_init_steps=0, guidance_rescale=0.7),
        CFGZeroStar,
        {"zero_init_steps": 0},
    ),
}
GUIDERS = {CFG: ClassifierFreeGuidance, APG: AdaptiveProjectedGuidance, CFGZeroStar: ClassifierFreeZeroStarGuidance}


def _ours(case: str) -> Guidance:
    kw, cls, options = CASES[case]
    interval = _interval(kw.get("start", 0.0), kw.get("stop", 1.0))
    return cls(kw["guidance_scale"], rescale=kw.get("guidance_rescale", 0.0), interval=interval, **options)


@pytest.mark.parametrize("path", ["table", "direct", "separate-passes"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers_guiders_on_random_predictions(case: str, path: str) -> None:
    kw, cls, _ = CASES[case]
    us, cs = _preds()
    want = diffusers_per_step(GUIDERS[cls](**kw), us, cs)
    got = ours_per_step(_ours(case), us, cs, batched=path != "separate-passes", direct=path == "direct")
    for k, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item(), msg=f"{case} step {k}")


def test_the_interval_skips_the_unconditional_pass_and_zero_init_the_model() -> None:
    us, cs = _preds()
    calls: list = []
    den = Denoiser(
        table_model(us, cs, calls),
        make_parameterization("sample"),
        cond=COND,
        guidance=CFGZeroStar(4.0, zero_init_steps=2, interval=_interval(0.0, 0.5)),
    )
    levels = [Level(float(k), 1.0, float(s)) for k, s in enumerate(SIGMAS)]
    run_program(den, torch.zeros_like(us[0]), Program([Step(lv, np.array([[0.0, 1.0, 0.0]])) for lv in levels]))
    # steps 0, 1: no call; 2, 3: unconditional and conditional passes; 4..7: conditional only
    assert calls == [(2, B, True), (2, B, False), (3, B, True), (3, B, False)] + [(k, B, False) for k in range(4, 8)]
    assert den.evaluations == 6


def test_scale_one_skips_the_unconditional_pass_except_for_cfg_pp() -> None:
    calls: list = []

    def counting(x, t, cond=None):
        calls.append(x.shape[0])
        return torch.tanh(x) * (t.reshape(-1, 1, 1) / 1000.0) + (0 if cond is None else 0.1 * cond.reshape(-1, 1, 1))

    x = torch.randn(B, 2, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(steps=5, schedule="linear", seed=1, cond=COND, uncond=UNCOND, guidance_scale=1.0)
    for guidance in ("cfg", "apg", "cfg_zero_star"):
        calls.clear()
        out = diffcore.sample(counting, x, sampler="euler", guidance=guidance, **kw)
        assert calls == [B] * (5 if guidance != "cfg_zero_star" else 4)  # zero-init: one step without a call
    calls.clear()
    diffcore.sample(counting, x, sampler="euler_cfg_pp", **kw)
    assert calls == [2 * B] * 4 + [B]  # lambda = 1 still renoises with x0u; the last step lands on x0
    assert torch.isfinite(out).all()


def test_mixed_interval_membership_in_one_batch_is_per_sample() -> None:
    """predict_x0 at one level per sample: samples outside the interval get the conditional output."""
    us, cs = _preds()
    levels = [Level(3.0, 1.0, 10.0), Level(3.0, 1.0, 1.0), Level(3.0, 1.0, 0.1)]
    for g in (
        CFG(5.0, interval=(0.5, 5.0)),
        APG(5.0, eta=0.2, interval=(0.5, 5.0)),
        APG(5.0, momentum=0.5, interval=(0.5, 5.0)),
    ):
        den = Denoiser(table_model(us, cs), make_parameterization("sample"), cond=COND, uncond=UNCOND, guidance=g)
        out = den.predict_x0(torch.zeros_like(us[0]), levels, step=1)
        guided = Denoiser(
            table_model(us, cs),
            make_parameterization("sample"),
            cond=COND,
            uncond=UNCOND,
            guidance=type(g)(**{**g.__dict__, "interval": None}),
        ).predict_x0(us[0] * 0, levels[1], step=1)
        torch.testing.assert_close(out[0], cs[3][0])
        torch.testing.assert_close(out[2], cs[3][2])
        torch.testing.assert_close(out[1], guided[1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[1], cs[3][1])


def test_apg_without_projection_or_clip_is_cfg_and_zero_star_guards_r() -> None:
    us, cs = _preds()
    a = ours_per_step(APG(3.0, eta=1.0, norm_threshold=0.0), us, cs)
    b = ours_per_step(CFG(3.0), us, cs)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    # s* = 2 = w / (w - 1) for w = 2: r = w + (1 - w) s* is 0 up to the 1e-8 of the norm
    u = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    got = ours_per_step(CFGZeroStar(2.0, zero_init_steps=0), [u] * N, [2 * u] * N)[0]
    s = (2 * u * u).flatten(1).sum(1) / ((u * u).flatten(1).sum(1) + 1e-8)
    want = s.reshape(-1, 1, 1, 1) * u + 2.0 * (2 * u - s.reshape(-1, 1, 1, 1) * u)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


# --------------------------------------------------------------------------- end to end


W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) * 0.5


def toy(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    tt = t.to(torch.float32).reshape(-1, 1, 1, 1) / 1000.0
    out = torch.tanh(x @ W) * torch.cos(3 * tt) + 0.3 * x * tt
    if cond is not None:
        out = out + 0.3 * cond.reshape(-1, 1, 1, 1) * torch.sin(2 * x + tt)
    return out


E2E = {
    "cfg-interval": ("cfg-interval", {}),
    "apg-momentum-interval-rescale": ("apg-momentum-interval-rescale", {}),
    "zero-star-2-interval": ("zero-star-2-interval", {}),
}


@pytest.mark.parametrize("case", list(E2E))
def test_euler_end_to_end_matches_diffusers_scheduler_and_guider(case: str) -> None:
    steps = 25
    kw, cls, options = CASES[case]
    guider = GUIDERS[cls](**kw)
    sched = diffusers.EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading"
    )
    sched.set_timesteps(steps)
    x_T = torch.randn(B, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    x = x_T * sched.init_noise_sigma
    for k, t in enumerate(sched.timesteps):
        guider.set_state(step=k, num_inference_steps=steps, timestep=t)
        if k == 0 and cls is APG:
            guider.momentum_buffer = MomentumBuffer(guider.adaptive_projected_guidance_momentum)
        x_in, tt = sched.scale_model_input(x, t), t.reshape(1).expand(B)
        pred = guider.forward(pred_cond=toy(x_in, tt, COND), pred_uncond=toy(x_in, tt, UNCOND)).pred
        x = sched.step(pred, t, x).prev_sample
    sigmas = sched.sigmas[:-1].double().numpy()
    schedule = diffcore.get("schedules", "scaled_linear")(1000, 0.00085, 0.012)
    out = diffcore.sample(
        toy,
        x_T,
        sampler="euler",
        steps=steps,
        schedule=schedule,
        timestep_spacing="leading",
        cond=COND,
        uncond=UNCOND,
        guidance_scale=kw["guidance_scale"],
        guidance_rescale=kw.get("guidance_rescale", 0.0),
        guidance=cls.name,
        guidance_options=options,
        guidance_interval=_interval(kw.get("start", 0.0), kw.get("stop", 1.0), sigmas),
    )
    assert (out - x).abs().max().item() <= 1e-4 * x.abs().max().item()


# --------------------------------------------------------------------------- behaviour


def _mixtures():
    from diffcore.analytic import GaussianMixture, exact_model
    from diffcore.schedules import EDMSchedule

    sched = EDMSchedule()
    gm_u = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=32)
    gm_c = GaussianMixture(gm_u.means, gm_u.stds, torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64))
    mu, mc = exact_model(gm_u, sched), exact_model(gm_c, sched)

    def model(x, t, cond=None):  # the exact denoisers of two mixtures: cond 1 -> gm_c, 0 -> gm_u
        if cond is None:
            return mu(x, t)
        return torch.where(cond.reshape(-1, 1) > 0.5, mc(x, t), mu(x, t))

    return model, sched


_REFERENCES: dict = {}


@pytest.mark.parametrize("sampler,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
@pytest.mark.parametrize(
    "guidance,options", [("cfg_zero_star", {"zero_init_steps": 0}), ("apg", {"eta": 0.3, "norm_threshold": 0.0})]
)
@pytest.mark.slow
def test_fused_guidance_keeps_the_solver_order(sampler: str, order: int, guidance: str, options: dict) -> None:
    """A per-sample [w, r] computed from each evaluation is a smooth guided vector field: the
    deterministic samplers converge to its ODE solution at their order. (In 32 dimensions: in 2,
    ||u|| and ||c|| pass near 0, where s* and APG's projection blow up and the field is stiff.)"""
    from diffcore.schedules import karras_sigmas

    model, sched = _mixtures()
    x_T = torch.randn(64, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cond, uncond = torch.ones(64, dtype=torch.float64), torch.zeros(64, dtype=torch.float64)

    def run(name: str, n: int) -> torch.Tensor:
        return diffcore.sample(
            model,
            x_T,
            sampler=name,
            schedule=sched,
            sigmas=karras_sigmas(0.1, 80.0, n + 1, 7.0),
            cond=cond,
            uncond=uncond,
            guidance_scale=3.0,
            guidance=guidance,
            guidance_options=options,
        )

    key = (guidance, tuple(sorted(options.items())))
    exact = _REFERENCES.get(key)
    if exact is None:
        exact = _REFERENCES[key] = run("heun", 1000)
    e1, e2 = ((run(sampler, n) - exact).pow(2).mean().sqrt().item() for n in (48, 96))
    slope = math.log(e1 / e2) / math.log(2.0)
    assert abs(slope - order) <= 0.3, f"{sampler} with {guidance}: measured order {slope:.2f}, expected {order}"


def test_zero_init_on_a_flow_model_leaves_the_state_in_place() -> None:
    """CFG-Zero*'s zero-init is a zero velocity: the first Euler steps of a flow model do not move x."""
    from diffcore.analytic import GaussianMixture, exact_model

    sched = diffcore.get("schedules", "flow")()
    base = exact_model(GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2), sched, "flow")
    x_T = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seen = []
    out = diffcore.sample(
        lambda x, t, c=None: base(x, t),
        x_T,
        sampler="euler",
        steps=10,
        schedule=sched,
        prediction="flow",
        cond=torch.ones(16),
        uncond=torch.zeros(16),
        guidance_scale=3.0,
        guidance="cfg_zero_star",
        guidance_options={"zero_init_steps": 2},
        callback=lambda d: seen.append(d["x"].clone()),
    )
    torch.testing.assert_close(seen[0], x_T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seen[1], x_T, rtol=1e-12, atol=1e-12)
    assert (seen[2] - x_T).abs().max() > 1e-3 and torch.isfinite(out).all()


# --------------------------------------------------------------------------- graphs and errors


class FakeCapture:
    """ "Replay" re-runs the captured loop on the static buffers (as tests/test_graphs.py)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, loop, inputs, denoiser, keep):
        self.count += 1
        loop(inputs[0].clone())
        return graphs.Captured(lambda: loop(inputs[0]), inputs, keep=keep)


@pytest.mark.parametrize(
    "options",
    [
        dict(guidance="apg", guidance_options={"momentum": -0.5}, guidance_interval=(0.5, 50.0)),
        dict(guidance="cfg_zero_star", guidance_options={"zero_init_steps": 2}, guidance_rescale=0.5),
        dict(sampler="dpmpp_2m_cfg_pp", guidance_scale=0.8, guidance_interval=(0.5, 50.0)),
        dict(sampler="euler_ancestral_cfg_pp", guidance="apg", guidance_scale=0.8),
    ],
)
def test_cuda_graph_replay_equals_eager(monkeypatch, options) -> None:
    fake = FakeCapture()
    monkeypatch.setattr(graphs, "cache", graphs.GraphCache(8, capture=fake, device_type="cpu"))
    kw = dict(sampler="dpmpp_2m", steps=8, schedule="linear", seed=3, cond=COND, uncond=UNCOND, guidance_scale=4.0)
    kw.update(options)
    x = [torch.randn(B, 2, 4, 4, generator=torch.Generator().manual_seed(s)) for s in (1, 2, 1)]
    outs = [diffcore.sample(toy, xi, cuda_graph=True, **kw) for xi in x]
    assert fake.count == 1  # the second and third calls replay
    for xi, out in zip(x, outs):
        torch.testing.assert_close(out, diffcore.sample(toy, xi, **kw), rtol=1e-6, atol=1e-6)
    other = {**kw, "guidance_options": {**kw.get("guidance_options", {})}}
    other["guidance_scale"] = 2.0  # another guidance setting is another graph
    diffcore.sample(toy, x[0], cuda_graph=True, **other)
    assert fake.count == 2


@pytest.mark.parametrize(
    "kwargs,exc,text",
    [
        (dict(guidance="pag", guidance_scale=3.0), ValueError, "pag"),
        (dict(guidance="apg", guidance_scale=3.0, guidance_options={"beta": 1}), TypeError, "beta"),
        (dict(guidance="apg"), ValueError, "guidance_scale"),
        (dict(guidance_interval=(1.0, 2.0)), ValueError, "guidance_scale"),
        (dict(guidance_scale=3.0, guidance_interval=(2.0, 1.0)), ValueError, "guidance_interval"),
        (dict(guidance_scale=3.0, guidance_interval=(1.0,)), ValueError, "guidance_interval"),
        (dict(guidance_scale=3.0, guidance_rescale=1.5), ValueError, "guidance_rescale=1.5"),
        (dict(guidance_scale="7"), TypeError, "guidance_scale"),
        (dict(guidance_scale=math.nan), ValueError, "guidance_scale"),
        (
            dict(guidance="cfg_zero_star", guidance_scale=3.0, guidance_options={"zero_init_steps": -1}),
            ValueError,
            "zero_init_steps=-1",
        ),
        (
            dict(guidance="apg", guidance_scale=3.0, guidance_options={"norm_threshold": -1.0}),
            ValueError,
            "norm_threshold",
        ),
        (dict(guidance=APG(3.0), guidance_scale=3.0), ValueError, "inside it"),
    ],
)
def test_bad_guidance_is_named(kwargs, exc, text) -> None:
    with pytest.raises(exc, match=text):
        diffcore.sample(toy, torch.randn(B, 2, 4, 4), steps=4, schedule="linear", cond=COND, uncond=UNCOND, **kwargs)


def test_make_guidance_builds_and_passes_through() -> None:
    assert make_guidance("cfg", None) is None
    g = make_guidance("apg", 5, rescale=0.3, interval=[0.2, 3], options={"momentum": -0.5})
    assert g == APG(5, rescale=0.3, interval=(0.2, 3.0), momentum=-0.5) and not g.fused
    assert make_guidance(g) is g
    assert hash(g) == hash(APG(5, rescale=0.3, interval=(0.2, 3.0), momentum=-0.5))  # a graph-key part
    den = Denoiser(toy, make_parameterization("epsilon"), guidance_scale=2.0, guidance_rescale=0.5)
    assert den.guidance == CFG(2.0, rescale=0.5) and den.guidance_scale == 2.0 and den.guidance_rescale == 0.5
    with pytest.raises(ValueError, match="not both"):
        Denoiser(toy, make_parameterization("epsilon"), guidance=CFG(2.0), guidance_scale=2.0)

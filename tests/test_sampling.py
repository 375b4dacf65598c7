"""diffcore.sample: determinism, parameterizations, guidance, callbacks, allocation, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.denoiser import NonFiniteModelOutput

GM = GaussianMixture.ring(k=4, radius=2.0, std=0.3, dim=3)
LINEAR = diffcore.get("schedules", "linear")()


def _x(n=64, seed=0, dtype=torch.float64):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("sampler", ["ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddim"])
def test_same_seed_same_output_other_seed_other_output(sampler):
    model = exact_model(GM, LINEAR)
    kw = dict(sampler=sampler, steps=15, schedule=LINEAR, eta=1.0 if sampler == "ddim" else None)
    a = diffcore.sample(model, _x(), generator=torch.Generator().manual_seed(5), **kw)
    b = diffcore.sample(model, _x(), generator=torch.Generator().manual_seed(5), **kw)
    c = diffcore.sample(model, _x(), generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "heun", "dpmpp_2m", "unipc", "lms"])
def test_every_parameterization_gives_the_same_trajectory(sampler):
    """The exact eps-, v- and x0-models of one mixture are the same denoiser: same samples."""
    outs = [
        diffcore.sample(exact_model(GM, LINEAR, p), _x(), sampler=sampler, steps=12, schedule=LINEAR, prediction=p)
        for p in ("epsilon", "v_prediction", "sample")
    ]
    assert torch.allclose(outs[0], outs[1], atol=1e-8)
    assert torch.allclose(outs[0], outs[2], atol=1e-8)


def test_edm_preconditioning_matches_epsilon_on_an_edm_schedule():
    sched = diffcore.get("schedules", "edm")()
    eps_model = exact_model(GM, sched)
    sd = 0.5

    def edm_model(x_in, sigma):  # F such that c_skip x + c_out F = D(x), fed c_in * x
        s = sigma.to(torch.float64)[:, None]
        x = x_in * (s**2 + sd**2).sqrt()
        d = x - s * eps_model(x, sigma)
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        return (d - c_skip * x) / c_out

    a = diffcore.sample(eps_model, _x(), sampler="heun", steps=10, schedule=sched, prediction="epsilon")
    b = diffcore.sample(edm_model, _x(), sampler="heun", steps=10, schedule=sched, prediction="edm")
    assert torch.allclose(a, b, atol=1e-8)


def _cond_model(x, t, cond=None):
    base = exact_model(GM, LINEAR)(x, t)
    if cond is None:
        return base
    return base + 0.1 * cond


def test_guidance_scale_one_equals_the_conditional_model():
    cond = torch.ones(64, 3, dtype=torch.float64)
    plain = diffcore.sample(lambda x, t: _cond_model(x, t, cond), _x(), sampler="dpmpp_2m", steps=10, schedule=LINEAR)
    guided = diffcore.sample(
        _cond_model, _x(), sampler="dpmpp_2m", steps=10, schedule=LINEAR, cond=cond, guidance_scale=1.0
    )
    assert torch.allclose(plain, guided, atol=1e-10)


def test_batched_uncond_equals_separate_calls_and_rescale_matches_formula():
    cond = torch.ones(64, 3, dtype=torch.float64)
    zero = torch.zeros_like(cond)
    calls = []

    def model(x, t, c=None):
        calls.append(x.shape[0])
        return _cond_model(x, t, c if c is not None else zero)

    kw = dict(sampler="ddim", steps=8, schedule=LINEAR, cond=cond, guidance_scale=3.0)
    two = diffcore.sample(model, _x(), **kw)
    assert calls[:2] == [64, 64]
    calls.clear()
    one = diffcore.sample(model, _x(), uncond=zero, **kw)
    assert calls[0] == 128
    assert torch.allclose(one, two, atol=1e-10)

    def manual(x, t, c=None):  # diffusers' rescale_noise_cfg applied by hand, phi = 0.7
        u, k = _cond_model(x, t, zero), _cond_model(x, t, cond)
        g = u + 3.0 * (k - u)
        r = k.std(dim=1, keepdim=True) / g.std(dim=1, keepdim=True)
        return 0.7 * g * r + 0.3 * g

    want = diffcore.sample(manual, _x(), sampler="ddim", steps=8, schedule=LINEAR)
    got = diffcore.sample(model, _x(), guidance_rescale=0.7, **kw)
    assert torch.allclose(got, want, atol=1e-8)


def test_callback_sees_every_step():
    seen = []
    diffcore.sample(
        exact_model(GM, LINEAR), _x(), sampler="heun", steps=6, schedule=LINEAR, callback=lambda d: seen.append(d["i"])
    )
    assert seen == list(range(11))  # heun: 2 * steps - 1 model calls


def test_sampling_loop_allocates_nothing_per_step_beyond_the_model(monkeypatch):
    """With the fused kernels the loop calls (``ops.step_kernels``) replaced by an in-place
    stand-in, per-step allocations of x's size come only from the model's output; history and
    noise buffers are allocated once."""
    from diffcore import ops

    calls = []

    def inplace_step(x, *args):  # (x, m, coeffs, history, noise, writes, seed, offset, ...), as the op schema
        calls.append(args[6])
        x.mul_(0.5)

    monkeypatch.setattr(ops, "step_kernels", lambda device: (inplace_step, inplace_step))
    x = torch.randn(4, 64, 64)
    out_buf = torch.randn(4, 64, 64)
    big = x.numel() * x.element_size()

    def full_size_allocations(sampler: str, steps: int) -> int:
        calls.clear()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            out = diffcore.sample(
                lambda x_, t: out_buf.clone(),
                x,
                sampler=sampler,
                steps=steps,
                schedule=LINEAR,
                generator=torch.Generator().manual_seed(0),
                check_finite=False,
            )
        assert calls == list(range(steps)), f"{sampler}: the stand-in ran at steps {calls}"
        torch.testing.assert_close(out, x * 0.5**steps, rtol=0, atol=0)  # only the stand-in touched x
        return sum(1 for e in prof.events() if e.cpu_memory_usage >= big and not e.cpu_children)

    for sampler in ("unipc", "dpmpp_3m_sde", "lms", "ddpm"):
        full_size_allocations(sampler, 10)  # warms the per-thread pool of history/noise buffers
        few, many = full_size_allocations(sampler, 10), full_size_allocations(sampler, 20)
        assert many - few == 10, f"{sampler}: {many - few} extra full-size allocations for 10 extra steps"
        assert few <= 10 + 4, f"{sampler}: {few} full-size allocations in 10 steps"


def _nan_at(step):
    count = {"n": 0}

    def model(x, t):
        count["n"] += 1
        out = exact_model(GM, LINEAR)(x, t)
        return out * math.nan if count["n"] == step + 1 else out

    return model


BAD = [
    (
        dict(model=lambda x, t: torch.zeros(64, 4, dtype=torch.float64)),
        ValueError,
        r"model output has shape \(64, 4\) but x has shape \(64, 3\)",
    ),
    (dict(steps=0), ValueError, "steps=0"),
    (dict(sampler="euler_maruyama_9000"), KeyError, "dpmpp_2m"),
    (dict(schedule="quadratic"), KeyError, "linear"),
    (dict(prediction="score"), ValueError, "score"),
    (dict(sampler="ddim", eta=1.5), ValueError, "eta=1.5"),
    (dict(sampler="euler_ancestral", eta=-0.1), ValueError, "eta=-0.1"),
    (dict(sampler="heun", eta=0.5), ValueError, "deterministic"),
    (dict(sampler="unipc", sampler_options={"oder": 3}), TypeError, "oder"),
    (dict(sampler="lms", sampler_options={"order": 7}), ValueError, "order=7"),
    (dict(x_T=torch.ones(4, 3, dtype=torch.int64)), TypeError, "floating point"),
    (dict(x_T=torch.full((4, 3), math.nan)), ValueError, "NaN"),
    (dict(model=_nan_at(3)), NonFiniteModelOutput, "step 3"),
    (dict(guidance_rescale=0.5), ValueError, "guidance_scale"),
]


@pytest.mark.parametrize("override,exc,text", BAD)
def test_bad_input_is_named(override, exc, text):
    kw = dict(model=exact_model(GM, LINEAR), x_T=_x(), sampler="dpmpp_2m", steps=10, schedule=LINEAR)
    kw.update(override)
    model, x_T = kw.pop("model"), kw.pop("x_T")
    with pytest.raises(exc, match=text):
        diffcore.sample(model, x_T, **kw)


def test_float32_and_float64_agree():
    model = exact_model(GM, LINEAR)
    a = diffcore.sample(model, _x().float(), sampler="unipc", steps=20, schedule=LINEAR)
    b = diffcore.sample(model, _x(), sampler="unipc", steps=20, schedule=LINEAR)
    assert a.dtype == torch.float32
    assert torch.allclose(a.double(), b, atol=1e-4)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc", "heun", "ddpm"])
def test_sample_from_mixes_start_levels_in_one_batch(sampler):
    """Per-sample start levels (SDEdit strengths) in one batch equal separate runs per level."""
    x = GM.sample(6, torch.Generator().manual_seed(0))
    noise = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    starts = torch.tensor([100.0, 100.0, 400.0, 400.0, 999.0, 999.0])
    model = exact_model(GM, LINEAR)
    mixed = diffcore.sample_from(model, x, starts, sampler=sampler, steps=8, schedule=LINEAR, noise=noise, seed=3)
    kw = dict(sampler=sampler, steps=8, schedule=LINEAR, seed=3)
    for lo in (0, 2, 4):
        # the same batch layout, every sample at this level: equal rows, ddpm's noise included
        # (in-kernel noise is keyed by the position in the batch, and the step)
        whole = diffcore.sample_from(model, x, float(starts[lo]), noise=noise, **kw)
        assert torch.allclose(mixed[lo : lo + 2], whole[lo : lo + 2], atol=1e-10)
        if sampler != "ddpm":  # a deterministic sampler does not depend on the rest of the batch either
            alone = diffcore.sample_from(model, x[lo : lo + 2], float(starts[lo]), noise=noise[lo : lo + 2], **kw)
            assert torch.allclose(mixed[lo : lo + 2], alone, atol=1e-10)
    other_seed = diffcore.sample_from(model, x, starts, noise=noise, **{**kw, "seed": 4})
    assert torch.equal(other_seed, mixed) == (sampler != "ddpm")  # only ddpm draws step noise
    # low strength stays close to the input, full strength forgets it
    d = (mixed - x).norm(dim=1)
    assert d[:2].mean() < d[4:].mean()


def test_sample_from_without_noise_starts_from_the_given_state():
    """Denoising: y = x0 + s*eps equals the VP state sqrt(abar)*y at the matching timestep."""
    x0 = GM.sample(256, torch.Generator().manual_seed(0))
    t = 300
    abar = float(LINEAR.alphas_cumprod[t])
    s = ((1 - abar) / abar) ** 0.5
    y = x0 + s * torch.randn(x0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = diffcore.sample_from(
        exact_model(GM, LINEAR), abar**0.5 * y, float(t), sampler="ddim", steps=20, schedule=LINEAR, add_noise=False
    )
    assert (out - x0).pow(2).mean() < 0.5 * (y - x0).pow(2).mean()


@pytest.mark.parametrize(
    "kw,exc,text",
    [
        (dict(t_start=1000.0), ValueError, "start timestep"),
        (dict(t_start=0.0), ValueError, "start timestep"),
        (dict(t_start=torch.tensor([10.0, 20.0])), ValueError, "2 values for a batch of 4"),
        (dict(noise=torch.zeros(3, 3)), ValueError, "noise has shape"),
    ],
)
def test_sample_from_bad_input(kw, exc, text):
    args = dict(t_start=200.0)
    args.update(kw)
    with pytest.raises(exc, match=text):
        diffcore.sample_from(
            exact_model(GM, LINEAR), GM.sample(4, torch.Generator().manual_seed(0)), schedule=LINEAR, **args
        )

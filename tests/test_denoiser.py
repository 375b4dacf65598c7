"""Denoiser.predict_x0 (the one-shot x0 estimate) against a*x + b*out written out by hand."""

from __future__ import annotations

import pytest
import torch

from diffcore.denoiser import Denoiser, NonFiniteModelOutput
from diffcore.parameterization import make_parameterization
from diffcore.timesteps import Level

LEVEL = Level(t=420.0, alpha=0.6, std=0.8)


def _x(b: int = 5, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(b, 2, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def model(x, t, cond=None):
    """A nonlinear stand-in that depends on x, t and the conditioning."""
    out = torch.tanh(1.3 * x + t.to(x.dtype)[:, None, None] / 1000.0)
    return out if cond is None else out + 0.2 * cond.to(x.dtype) * x


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction", "edm"])
def test_predict_x0_is_a_x_plus_b_out(prediction):
    param = make_parameterization(prediction)
    x = _x()
    a, b = param.x0_coeffs(LEVEL.alpha, LEVEL.std)
    c_in = param.input_scale(LEVEL.alpha, LEVEL.std)
    want = a * x + b * model(c_in * x, torch.full((5,), LEVEL.t))
    before = x.clone()
    got = Denoiser(model, param).predict_x0(x, LEVEL)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(x, before)  # the state is not touched


@pytest.mark.parametrize("rescale", [0.0, 0.7])
@pytest.mark.parametrize("batched_uncond", [False, True])
def test_predict_x0_applies_guidance_and_rescale_like_the_cfg_step(rescale, batched_uncond):
    param = make_parameterization("v_prediction")
    x, w = _x(), 3.0
    cond = torch.full((5, 2, 4), 1.5, dtype=torch.float64)
    zero = torch.zeros_like(cond)
    a, b = param.x0_coeffs(LEVEL.alpha, LEVEL.std)
    t = torch.full((5,), LEVEL.t)
    u = model(x, t, zero if batched_uncond else None)
    c = model(x, t, cond)
    g = u + w * (c - u)
    r = rescale * c.std(dim=(1, 2), keepdim=True) / g.std(dim=(1, 2), keepdim=True) + (1 - rescale)
    want = a * x + b * r * g
    den = Denoiser(
        model, param, cond=cond, uncond=zero if batched_uncond else None, guidance_scale=w, guidance_rescale=rescale
    )
    torch.testing.assert_close(den.predict_x0(x, LEVEL), want, rtol=1e-12, atol=1e-12)


def test_predict_x0_per_sample_levels_equal_one_call_per_sample():
    param = make_parameterization("edm")  # c_in differs per level too
    x = _x(3)
    levels = [Level(10.0, 1.0, 0.1), Level(400.0, 0.7, 0.7), Level(900.0, 0.2, 0.98)]
    den = Denoiser(model, param)
    got = den.predict_x0(x, levels)
    for i, lv in enumerate(levels):
        torch.testing.assert_close(got[i : i + 1], den.predict_x0(x[i : i + 1], lv), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got[0], den.predict_x0(x, levels[1])[0])  # the levels really differ


def test_predict_x0_float32_and_checks():
    param = make_parameterization("epsilon")
    x = _x(dtype=torch.float32)
    got = Denoiser(model, param).predict_x0(x, LEVEL)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), Denoiser(model, param).predict_x0(x.double(), LEVEL), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="got 2 levels for a batch of 5"):
        Denoiser(model, param).predict_x0(x, [LEVEL, LEVEL])
    with pytest.raises(NonFiniteModelOutput, match="step 0"):
        Denoiser(lambda x_, t: x_ * float("nan"), param).predict_x0(x, LEVEL)


def test_deferred_checks_are_taken_once():
    den = Denoiser(model, make_parameterization("epsilon"))
    assert den.take_deferred() == [] and den.constants == ()
    den._deferred.append((4, torch.tensor(False)))  # what a device-side check leaves behind
    assert [s for s, _ in den.take_deferred()] == [4]
    den.raise_deferred()  # nothing pending any more
    guided = Denoiser(model, make_parameterization("epsilon"), cond=torch.ones(5, 2, 4), guidance_scale=2.0)
    guided(_x(dtype=torch.float32), LEVEL)
    assert [c.tolist() for c in guided.constants] == [[2.0, 1.0]]

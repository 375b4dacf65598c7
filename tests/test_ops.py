"""The fused ops: their math against explicit formulas, per-sample coefficients, dtypes, bad input."""

from __future__ import annotations

import pytest
import torch

from diffcore import ops


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_sampler_step_matches_formula_with_history_write():
    x, m, z = _rand(2, 3, 4), _rand(2, 3, 4, seed=1), _rand(2, 3, 4, seed=2)
    hist = _rand(2, 2, 3, 4, seed=3)
    a, b = 1.5, -0.5
    row0 = [0.9, 0.2, 0.3, -0.1, 0.05]  # x, x0, h0, h1, z
    row1 = [0.1, 1.0, 0.0, 0.5, 0.0]
    coeffs = torch.tensor([a, b, *row0, *row1])
    x0 = a * x + b * m
    want_x = 0.9 * x + 0.2 * x0 + 0.3 * hist[0] - 0.1 * hist[1] + 0.05 * z
    want_h1 = 0.1 * x + x0 + 0.5 * hist[1]
    h0_before = hist[0].clone()
    ops.sampler_step(x, m, coeffs, hist, z, writes=[1])
    assert torch.allclose(x, want_x, atol=1e-6)
    assert torch.allclose(hist[1], want_h1, atol=1e-6)
    assert torch.equal(hist[0], h0_before)


def test_per_sample_coefficients_step_each_sample_with_its_own_row():
    x, m = _rand(3, 5), _rand(3, 5, seed=1)
    per = torch.tensor([[1.0, 0.0, 0.5, 0.5, 0.0], [0.0, 1.0, 1.0, 0.0, 0.0], [2.0, -1.0, 0.0, 1.0, 0.0]])
    expect = torch.stack([per[i, 2] * x[i] + per[i, 3] * (per[i, 0] * x[i] + per[i, 1] * m[i]) for i in range(3)])
    ops.sampler_step(x, m, per)
    assert torch.allclose(x, expect, atol=1e-6)


def test_cfg_step_equals_step_on_guided_output():
    x1, u, c = _rand(2, 8), _rand(2, 8, seed=1), _rand(2, 8, seed=2)
    x2 = x1.clone()
    coeffs = torch.tensor([1.0, -0.3, 0.7, 0.4, 0.0])
    ops.cfg_sampler_step(x1, u, c, torch.tensor([4.0, 1.0]), coeffs)
    ops.sampler_step(x2, u + 4.0 * (c - u), coeffs)
    assert torch.allclose(x1, x2, atol=1e-6)


def test_cfg_rescale_factor_matches_lin_et_al():
    u, c = _rand(3, 4, 5), _rand(3, 4, 5, seed=1)
    w, phi = 5.0, 0.7
    cfg = u + w * (c - u)
    std_c = c.std(dim=(1, 2))
    std_cfg = cfg.std(dim=(1, 2))
    want = phi * std_c / std_cfg + (1 - phi)
    got = ops.cfg_rescale_factor(u, c, w, phi)
    assert torch.allclose(got, want, atol=1e-6)
    # diffusers' rescale_noise_cfg, written out: phi * cfg * std_c / std_cfg + (1 - phi) * cfg
    assert torch.allclose(
        got[:, None, None] * cfg, phi * cfg * (std_c / std_cfg)[:, None, None] + (1 - phi) * cfg, atol=1e-5
    )


def test_forward_noise_gathers_per_sample_rows():
    x0, n = _rand(4, 6), _rand(4, 6, seed=1)
    table = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.8, 0.6, -0.6, 0.8], [0.1, 0.99, 1.0, 0.0]])
    t = torch.tensor([2, 0, 1, 1])
    x_t, target = ops.forward_noise(x0, n, t, table)
    for i in range(4):
        r = table[t[i]]
        assert torch.allclose(x_t[i], r[0] * x0[i] + r[1] * n[i])
        assert torch.allclose(target[i], r[2] * x0[i] + r[3] * n[i])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_fp32(dtype):
    x32, m32 = _rand(4, 64), _rand(4, 64, seed=1)
    coeffs = torch.tensor([1.3, -0.7, 0.95, 0.05, 0.0])
    x = x32.to(dtype)
    ops.sampler_step(x, m32.to(dtype), coeffs)
    ref = x32.to(dtype).float()
    ref = 0.95 * ref + 0.05 * (1.3 * ref - 0.7 * m32.to(dtype).float())
    assert x.dtype == dtype
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    assert torch.allclose(x.float(), ref, atol=tol)


def test_non_contiguous_inputs():
    base = _rand(4, 6, 8)
    x = base.transpose(1, 2)  # non-contiguous view
    m = _rand(4, 8, 6, seed=1)
    want = 0.5 * x + 0.5 * (2.0 * x + m)
    ops.sampler_step(x, m, torch.tensor([2.0, 1.0, 0.5, 0.5, 0.0]))
    assert torch.allclose(x, want, atol=1e-6)
    assert torch.allclose(base.transpose(1, 2), want, atol=1e-6)  # written through the view


BAD = {
    "integer x": (lambda: dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "floating-point"),
    "empty x": (lambda: dict(x=torch.ones(0, 3), model_out=torch.ones(0, 3)), ValueError, "empty"),
    "shape mismatch": (lambda: dict(model_out=torch.ones(2, 4)), ValueError, "shape"),
    "dtype mismatch": (lambda: dict(model_out=torch.ones(2, 3, dtype=torch.float64)), TypeError, "dtype"),
    "device mismatch": (lambda: dict(model_out=torch.ones(2, 3, device="meta")), ValueError, "meta"),
    "wrong coeff width": (lambda: dict(coeffs=torch.ones(6)), ValueError, "expected (5,)"),
    "wrong history length": (
        lambda: dict(history=torch.zeros(2, 2, 3), coeffs=torch.ones(2 + 2 * 6), writes=[0]),
        ValueError,
        "history slots",
    ),
    "history shape": (
        lambda: dict(history=torch.zeros(1, 2, 4), coeffs=torch.ones(6)),
        ValueError,
        "history has shape",
    ),
    "write out of range": (
        lambda: dict(history=torch.zeros(1, 2, 3), coeffs=torch.ones(2 + 2 * 4), writes=[3]),
        ValueError,
        "writes",
    ),
    "writes without history": (lambda: dict(writes=[0]), ValueError, "history"),
    "per-sample coeffs wrong batch": (lambda: dict(coeffs=torch.ones(3, 5)), ValueError, "batch=2"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_clear_error(case):
    make, exc, text = BAD[case]
    args = dict(
        x=torch.ones(2, 3), model_out=torch.ones(2, 3), coeffs=torch.ones(5), history=None, noise=None, writes=()
    )
    args.update(make())
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        ops.sampler_step(**args)


def test_forward_noise_rejects_out_of_range_timesteps():
    with pytest.raises(IndexError, match=r"\[0, 5\]"):
        ops.forward_noise(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 5]), torch.ones(3, 4))
    with pytest.raises(TypeError, match="int32/int64"):
        ops.forward_noise(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0.0, 1.0]), torch.ones(3, 4))


def test_backend_reports_reference_when_forced(monkeypatch):
    monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
    assert ops.backend() == "reference"
    monkeypatch.setenv("DIFFCORE_KERNELS", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        ops.backend()


def test_seed_and_offset_are_validated():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="seed=-1"):
        ops.philox_noise_like(x, seed=-1)
    with pytest.raises(ValueError, match="offset=-2"):
        ops.sampler_step(x, torch.ones(2, 3), torch.ones(5), seed=1, offset=-2)
    with pytest.raises(ValueError, match="not both"):
        ops.sampler_step(x, torch.ones(2, 3), torch.ones(5), noise=torch.ones(2, 3), seed=1)

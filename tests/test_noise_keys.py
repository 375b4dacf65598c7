"""In-kernel noise keyed by (seed, sample index) (issue #17): a sample's noise, and so its sampled
result, does not depend on the batch it runs in. Reference == CPU kernel (== CUDA where present),
bitwise, for both noise modes; batch splits reproduce the whole batch bitwise on CPU."""

from __future__ import annotations

import pytest
import torch

import diffcore
from diffcore import ops
from diffcore.ops import philox

NATIVE_CPU = ops.backend("cpu") == "native-cpu"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.backend("cuda") == "native-cuda" else [])
needs_native = pytest.mark.skipif(not NATIVE_CPU, reason="diffcore._C is not built or DIFFCORE_KERNELS=reference")
MODES = list(philox.NOISE_MODES)
SHAPES = [(6, 13), (3, 2, 5, 7), (2, 1), (1, 4096), (5, 3, 3)]  # per-sample sizes 13, 70, 1, 4096, 9


def _both(fn, monkeypatch):
    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    native = fn()
    monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
    ref = fn()
    monkeypatch.delenv("DIFFCORE_KERNELS")
    return native, ref


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_noise_is_bit_identical_on_every_backend(device, mode, shape, monkeypatch):
    like = torch.empty(shape, device=device)
    native, ref = _both(lambda: ops.philox_noise_like(like, 7, 3, sample_index=11, noise_mode=mode), monkeypatch)
    assert torch.equal(native.cpu(), ref.cpu())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_samples_noise_does_not_depend_on_its_batch(mode, shape):
    like = torch.empty(shape)
    whole = ops.philox_noise_like(like, 5, 2, noise_mode=mode)
    for first in range(shape[0]):
        alone = ops.philox_noise_like(like[first : first + 1], 5, 2, sample_index=first, noise_mode=mode)
        assert torch.equal(alone[0], whole[first])
    assert not torch.equal(whole[0], ops.philox_noise_like(like[:1], 5, 2, sample_index=1, noise_mode=mode)[0])


def test_one_sample_at_index_0_keeps_the_flat_stream():
    """Counter (j // 4, sample 0, offset): one sample's stream is the former flat stream."""
    flat = philox.philox_normal(1, 10, 3, 4)[0]
    assert torch.equal(ops.philox_noise_like(torch.empty(1, 10), 3, 4, noise_mode="exact")[0], flat)
    # pinned values: the exact stream of (seed 5, offset 0), batch 1, as before issue #17
    expected = torch.tensor([0.6613, 0.3097, 0.1769, -0.0387, 0.8087, 1.2089, 0.7701, 0.7182])
    assert torch.allclose(philox.philox_normal(1, 8, 5, 0)[0], expected, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_both_modes_are_standard_normal(mode):
    z = philox.philox_normal(4, 1 << 15, 9, 1, mode=mode).double()
    assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
    assert abs((z**4).mean().item() - 3) < 0.1  # kurtosis of a normal
    cdf = torch.special.ndtr(z.reshape(-1).sort().values)  # Kolmogorov-Smirnov distance to N(0, 1)
    n = cdf.numel()
    ks = (cdf - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max().item()
    assert ks < 1.63 / n**0.5  # the 1% critical value


def test_fast_and_exact_are_different_streams():
    a = philox.philox_normal(1, 64, 1, 0, mode="exact")
    b = philox.philox_normal(1, 64, 1, 0, mode="fast")
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("bad", [-1, 2**32, True, 1.5])
def test_bad_sample_index_is_refused(bad):
    with pytest.raises(ValueError, match="sample_index"):
        ops.philox_noise_like(torch.empty(2, 3), 1, sample_index=bad)


def test_bad_noise_mode_is_refused():
    with pytest.raises(ValueError, match="noise_mode"):
        ops.philox_noise_like(torch.empty(2, 3), 1, noise_mode="quick")
    with pytest.raises(ValueError, match="noise_mode"):
        diffcore.sample(lambda x, t: x, torch.zeros(1, 2), steps=2, seed=1, noise_mode="quick")


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("cfg", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_step_noise_equals_the_reference_step_with_that_noise(device, mode, cfg, dtype, monkeypatch):
    """The fused step's in-kernel draw is philox_noise_like's, with per-sample coefficients,
    per-sample sizes not divisible by 4 and a sample index."""
    g = torch.Generator().manual_seed(0)
    x0, m, c = (torch.randn(5, 3, 7, generator=g).to(device, dtype) for _ in range(3))
    hist = torch.randn(2, 5, 3, 7, generator=g).to(device, dtype)
    coeffs = torch.randn(5, ops.coeff_width(2, 1), generator=g, dtype=torch.float64).to(device)
    guidance = torch.tensor([[2.0, 1.0]] * 5, device=device)

    def run(noise_arg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x, h = x0.clone(), hist.clone()
        kw = {"seed": 9, "offset": 4, "sample_index": 3, "noise_mode": mode}
        z = ops.philox_noise_like(x, 9, 4, sample_index=3, noise_mode=mode) if noise_arg else None
        if noise_arg:
            kw = {}
        if cfg:
            ops.cfg_sampler_step(x, m, c, guidance, coeffs, h, z, [1], **kw)
        else:
            ops.sampler_step(x, m, coeffs, h, z, [1], **kw)
        return x, h

    (xn, hn), (xr, hr) = _both(lambda: run(False), monkeypatch)
    xt, ht = run(True)
    for a, b in ((xn, xr), (hn, hr), (xn, xt)):
        assert torch.allclose(a.double(), b.double(), rtol=1e-6 if dtype != torch.float16 else 2e-3, atol=1e-6)


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Elementwise, so the model itself is batch-invariant bitwise."""
    return torch.tanh(x) * 0.8 + 1e-4 * t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


@pytest.mark.parametrize(
    "sampler", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_sde"]
)  # ancestral, SDE, SDE with Brownian-tree noise
@pytest.mark.parametrize("mode", MODES)
def test_a_split_batch_reproduces_the_whole_batch(sampler, mode):
    x_T = torch.randn(6, 2, 3, 5, generator=torch.Generator().manual_seed(1))  # 30 elements per sample
    kw = {"sampler": sampler, "steps": 6, "schedule": "linear", "seed": 42, "noise_mode": mode}
    whole = diffcore.sample(_model, x_T, **kw)
    first = diffcore.sample(_model, x_T[:3], sample_index=0, **kw)
    second = diffcore.sample(_model, x_T[3:], sample_index=3, **kw)
    assert torch.equal(torch.cat([first, second]), whole)
    shifted = diffcore.sample(_model, x_T[3:], sample_index=0, **kw)
    assert not torch.equal(shifted, second)  # the index, not the position in the batch, keys the noise


@pytest.mark.parametrize("mode", MODES)
def test_sample_from_with_added_noise_splits_too(mode):
    x = torch.randn(6, 13, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([300.0, 500.0, 700.0, 300.0, 500.0, 700.0])
    kw = {"sampler": "ddpm", "steps": 5, "schedule": "linear", "seed": 8, "noise_mode": mode}
    whole = diffcore.sample_from(_model, x, t, **kw)
    parts = [diffcore.sample_from(_model, x[i : i + 2], t[i : i + 2], sample_index=i, **kw) for i in (0, 2, 4)]
    assert torch.equal(torch.cat(parts), whole)

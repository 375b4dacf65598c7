"""Native kernels (diffcore._C) against the Torch reference: every op, every sampler, dtypes,
layouts, per-sample coefficients, in-kernel noise, opcheck and bad input. CUDA cases run only
where a GPU is present."""

from __future__ import annotations

import os

import pytest
import torch

import diffcore
from diffcore import ops
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.samplers import SAMPLERS

NATIVE_CPU = ops.backend("cpu") == "native-cpu"  # False when diffcore._C is missing or DIFFCORE_KERNELS=reference
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.backend("cuda") == "native-cuda" else [])
needs_native = pytest.mark.skipif(not NATIVE_CPU, reason="diffcore._C is not built or DIFFCORE_KERNELS=reference")


def test_native_extension_is_built():
    """`make test` builds diffcore._C; a silent fallback would hide a broken build from CI."""
    if os.environ.get("DIFFCORE_BUILD_NATIVE", "1") in ("0", "false", "no", "off"):
        pytest.skip("DIFFCORE_BUILD_NATIVE=0")
    if os.environ.get("DIFFCORE_KERNELS") == "reference":
        pytest.skip("DIFFCORE_KERNELS=reference")
    assert NATIVE_CPU, f"diffcore.ops.backend('cpu') is {ops.backend('cpu')!r}, expected 'native-cpu'"


@needs_native
@pytest.mark.parametrize(
    "op", ["forward_noise", "sampler_step", "cfg_sampler_step", "cfg_rescale_factor", "philox_normal_"]
)
def test_each_device_registers_its_kernels(op):
    """csrc/cpu/ registers every op for CPU; csrc/cuda/ for CUDA, in a CUDA build only."""
    from diffcore import _C

    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
    assert has_kernel(f"diffcore::{op}", "CPU")
    assert has_kernel(f"diffcore::{op}", "CUDA") == _C.has_cuda()


def _both(fn, monkeypatch):
    """Run ``fn()`` with the native and with the reference backend."""
    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    native = fn()
    monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
    ref = fn()
    monkeypatch.delenv("DIFFCORE_KERNELS")
    return native, ref


def _rand(shape, seed, device, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


TOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _close(a, b, dtype):
    scale = b.abs().max().item() + 1e-30
    return (a.double() - b.double()).abs().max().item() <= TOL[dtype] * scale


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("slots,writes", [(0, ()), (1, (0,)), (2, (1,)), (3, (2, 0)), (4, (3, 1))])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("noise", ["none", "tensor", "philox"])
def test_sampler_step_matches_reference(device, dtype, slots, writes, per_sample, noise, monkeypatch):
    shape = (3, 4, 5, 6)
    width = ops.coeff_width(slots, len(writes))
    coeffs = _rand(
        (3, width) if per_sample else (width,), 9, device, torch.float64 if dtype == torch.float64 else torch.float32
    )

    def run():
        x = _rand(shape, 0, device, dtype)
        m = _rand(shape, 1, device, dtype)
        hist = _rand((slots, *shape), 2, device, dtype) if slots else None
        z = _rand(shape, 3, device, dtype) if noise == "tensor" else None
        seed = 1234 if noise == "philox" else None
        ops.sampler_step(x, m, coeffs, hist, z, writes, seed=seed, offset=5)
        return x, hist

    (xn, hn), (xr, hr) = _both(run, monkeypatch)
    assert _close(xn, xr, dtype)
    if slots:
        assert _close(hn, hr, dtype)


@needs_native
@pytest.mark.parametrize("per_sample", [False, True])
def test_cpu_step_skips_history_it_weighs_by_zero(per_sample, monkeypatch):
    """A CPU step whose coefficients weigh every history slot by exactly 0 (Heun's predictor, a
    multistep method's first step) does not read the history: a non-finite slot there does not
    leak into x, and x equals the reference step on a zeroed history; one non-zero history
    coefficient in any sample's rows makes every sample read it again."""
    shape, slots, writes = (3, 4, 5, 6), 2, (1,)
    width = ops.coeff_width(slots, len(writes))
    coeffs = _rand((3, width) if per_sample else (width,), 9, "cpu")
    for r in range(1 + len(writes)):
        coeffs[..., 2 + r * (3 + slots) + 2 : 2 + r * (3 + slots) + 2 + slots] = 0.0

    def run(history_fill, c):
        x, m = _rand(shape, 0, "cpu"), _rand(shape, 1, "cpu")
        hist = torch.full((slots, *shape), history_fill)
        ops.sampler_step(x, m, c, hist, None, writes)
        return x, hist[1]

    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    x_nan, written_nan = run(float("nan"), coeffs)
    monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
    x_ref, written_ref = run(0.0, coeffs)
    assert torch.isfinite(x_nan).all() and torch.equal(x_nan, x_ref) and torch.equal(written_nan, written_ref)
    reading = coeffs.clone()
    reading[..., 2 + 2] = 1e-3 if not per_sample else torch.tensor([0.0, 1e-3, 0.0])
    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    assert torch.isnan(run(float("nan"), reading)[0]).all()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 14.614641684293747, 0.1])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_start_state_is_the_torch_product_in_one_pass(dtype, scale, layout, monkeypatch):
    """ops.start_state: x * scale bit for bit as torch computes it (x's clone at scale 1), with x's
    strides, and whether x is finite; the same on both backends, and on layouts the native pass
    does not take (a strided slice falls back to the torch ops)."""
    x = _rand((3, 4, 6, 5), 0, "cpu", dtype) * 3
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = x[:, :, ::2]
    (out_n, ok_n), (out_r, ok_r) = _both(lambda: ops.start_state(x, scale), monkeypatch)
    expect = x.clone() if scale == 1.0 else x * scale
    for out in (out_n, out_r):
        assert out.dtype == dtype and out.stride() == expect.stride() and out.data_ptr() != x.data_ptr()
        bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[dtype.itemsize]  # signs of zeros too
        assert torch.equal(out.contiguous().view(bits), expect.contiguous().view(bits))
    assert ok_n and ok_r
    if layout == "contiguous" and dtype == torch.float32:  # a negative view: memory holds -x
        neg = torch.randn(2, 3, dtype=torch.cfloat).conj().imag
        (out_n, _), (out_r, _) = _both(lambda: ops.start_state(neg, scale), monkeypatch)
        assert neg.is_neg() and torch.equal(out_n, neg * scale) and torch.equal(out_r, neg * scale)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[2, 3, 1, 0] = bad
        (_, ok_n), (_, ok_r) = _both(lambda y=y: ops.start_state(y, scale), monkeypatch)
        assert not ok_n and not ok_r


def test_slots_read_unwritten_follows_the_read_rule():
    """A slot must start at zero when an op that weighs some history slot non-zero runs before
    any op writes it; an op weighing all history by 0 reads none of it."""
    from diffcore.samplers.flags import slots_read_unwritten

    def op(writes, weights):  # one row per output; history weights of row 0 given, others 0
        slots = len(weights)
        c = torch.zeros(ops.coeff_width(slots, len(writes)))
        c[2 + 2 : 2 + 2 + slots] = torch.tensor(weights)
        return tuple(writes), c

    assert slots_read_unwritten([op((0, 2), [0, 0, 0]), op((1, 2), [0.5, 0, 1])], 3) == (1,)
    assert slots_read_unwritten([op((0,), [0.0]), op((), [0.3])], 1) == ()
    assert slots_read_unwritten([op((), [0.0, 1e-30]), op((0, 1), [1, 1])], 2) == (0, 1)
    per_sample = op((0,), [0.0])[1].repeat(3, 1)
    per_sample[1, 4] = 2.0  # one sample's weight makes the op read for all
    assert slots_read_unwritten([((0,), per_sample)], 1) == (0,)


@needs_native
@pytest.mark.parametrize("sampler", ["unipc", "heun", "dpmpp_2m", "ipndm", "lms", "deis", "dpmpp_3m_sde"])
def test_stale_history_never_leaks(sampler, monkeypatch):
    """The native CPU run zeroes only the history slots it reads before writing: with NaN left in
    the pooled buffer it takes, the result is bit for bit the reference backend's (which zeroes all)."""
    from diffcore.samplers.flags import release_buffer

    x_T = _rand((2, 3, 8, 8), 0, "cpu")

    def run():
        return diffcore.sample(lambda x, t: 0.3 * x, x_T, sampler=sampler, steps=8, seed=5)

    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    run()  # fills the caches; the buffer it took goes back to the pool
    for k in range(1, 5):  # whatever history shape the run takes, a NaN one of that shape is waiting
        release_buffer(torch.full((k, *x_T.shape), float("nan")))
    native = run()
    monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
    reference = run()
    assert torch.isfinite(native).all() and torch.equal(native, reference)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_layouts_match_reference(device, layout, monkeypatch):
    coeffs = torch.tensor([1.2, -0.4, 0.7, 0.2, 0.1, 0.3, 0.5, 1.0, -0.2, 0.0], device=device)  # K=1, W=1

    def view(t):
        if layout == "channels_last":
            return t.contiguous(memory_format=torch.channels_last)
        if layout == "transposed":
            return t.transpose(2, 3)
        return t[:, :, ::2]

    def run():
        base = [_rand((2, 3, 8, 8), s, device) for s in range(4)]
        x, m, z = view(base[0]), view(base[1]), view(base[2])
        hist = torch.stack([view(base[3])])
        ops.sampler_step(x, m, coeffs, hist, z, [0])
        return x.contiguous(), hist.contiguous()

    (xn, hn), (xr, hr) = _both(run, monkeypatch)
    assert _close(xn, xr, torch.float32) and _close(hn, hr, torch.float32)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_cfg_step_and_rescale_match_reference(device, per_sample, monkeypatch):
    g = torch.tensor([[3.0, 0.9], [5.0, 1.1]], device=device) if per_sample else torch.tensor([4.0, 0.8], device=device)

    def run():
        x, u, c = (_rand((2, 3, 7), s, device) for s in range(3))
        ops.cfg_sampler_step(x, u, c, g, torch.tensor([1.1, -0.3, 0.6, 0.4, 0.0], device=device))
        return x, ops.cfg_rescale_factor(u, c, torch.tensor([3.0, 5.0], device=device), 0.7)

    (xn, rn), (xr, rr) = _both(run, monkeypatch)
    assert _close(xn, xr, torch.float32)
    assert torch.allclose(rn, rr, rtol=1e-6)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_noise_matches_reference(device, dtype, monkeypatch):
    table = torch.rand(10, 4, device=device)
    t = torch.tensor([0, 9, 3, 3], device=device)

    def run():
        return ops.forward_noise(_rand((4, 2, 3), 0, device, dtype), _rand((4, 2, 3), 1, device, dtype), t, table)

    (xn, tn), (xr, tr) = _both(run, monkeypatch)
    assert _close(xn, xr, dtype) and _close(tn, tr, dtype)


@needs_native
@pytest.mark.parametrize("device", DEVICES)
def test_philox_noise_is_identical_on_every_backend_and_standard_normal(device, monkeypatch):
    like = torch.empty(1 << 16, device=device)
    native, ref = _both(lambda: ops.philox_noise_like(like, seed=7, offset=3), monkeypatch)
    assert torch.equal(native.cpu(), ref.cpu())
    assert abs(native.mean().item()) < 0.02 and abs(native.std().item() - 1) < 0.02
    other = ops.philox_noise_like(like, seed=7, offset=4)
    assert (other - native).abs().mean() > 0.5  # a new offset is a new stream


GM = GaussianMixture.ring(k=4, radius=2.0, std=0.3, dim=3)


@needs_native
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("noise", ["generator", "seed"])
@pytest.mark.slow
def test_every_sampler_end_to_end_matches_reference(sampler, noise, monkeypatch):
    sched = diffcore.get("schedules", "scaled_linear")(1000, 0.00085, 0.012)
    x_T = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    model = exact_model(GM, sched)

    def run():
        kw = {"generator": torch.Generator().manual_seed(1)} if noise == "generator" else {"seed": 11}
        return diffcore.sample(model, x_T, sampler=sampler, steps=25, schedule=sched, **kw)

    native, ref = _both(run, monkeypatch)
    assert (native - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


@needs_native
def test_seeded_noise_reproduces_and_differs_by_seed():
    sched = diffcore.get("schedules", "linear")()
    model = exact_model(GM, sched)
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    a = diffcore.sample(model, x_T, sampler="dpmpp_2m_sde", steps=10, schedule=sched, seed=3)
    b = diffcore.sample(model, x_T, sampler="dpmpp_2m_sde", steps=10, schedule=sched, seed=3)
    c = diffcore.sample(model, x_T, sampler="dpmpp_2m_sde", steps=10, schedule=sched, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def _opcheck_cases(device):
    x, m, z = (_rand((2, 3, 4), s, device) for s in range(3))
    hist = _rand((2, 2, 3, 4), 4, device)
    co1 = torch.rand(ops.coeff_width(2, 1), device=device)
    flag = torch.zeros((), dtype=torch.int32, device=device)
    guidance = torch.tensor([2.0, 1.0], device=device)
    return {
        "sampler_step": (torch.ops.diffcore.sampler_step.default, (x, m, co1, hist, z, [1], -1, 0)),
        "sampler_step_philox": (torch.ops.diffcore.sampler_step.default, (x, m, co1, hist, None, [0], 5, 2)),
        "cfg_sampler_step": (
            torch.ops.diffcore.cfg_sampler_step.default,
            (x, m, z, torch.tensor([2.0, 1.0], device=device), torch.rand(5, device=device), None, None, [], -1, 0),
        ),
        "cfg_rescale_factor": (
            torch.ops.diffcore.cfg_rescale_factor.default,
            (m, z, torch.tensor(3.0, device=device), 0.5),
        ),
        "forward_noise": (
            torch.ops.diffcore.forward_noise.default,
            (x, z, torch.tensor([1, 0], device=device), torch.rand(3, 4, device=device)),
        ),
        "philox_normal_": (torch.ops.diffcore.philox_normal_.default, (torch.empty(3, 5, device=device), 1, 2)),
        "philox_normal_keyed_fast": (
            torch.ops.diffcore.philox_normal_.default,
            (torch.empty(3, 5, device=device), 1, 2, 7, 1),
        ),
        "sampler_step_keys_clip_flag": (
            torch.ops.diffcore.sampler_step.default,
            (x, m, co1, hist, None, [0], 5, 2, 3, 1, 1.5, None, 1.0, flag),
        ),
        "cfg_sampler_step_threshold": (
            torch.ops.diffcore.cfg_sampler_step.default,
            (x, m, z, guidance, torch.rand(5, device=device), None, None, [], -1, 0, 0, 0, None, 0.9, 2.0, flag),
        ),
    }


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(_opcheck_cases("cpu")))
@pytest.mark.slow
def test_opcheck(device, case):
    op, args = _opcheck_cases(device)[case]
    torch.library.opcheck(op, args)


@needs_native
@pytest.mark.parametrize(
    "args,text",
    [
        (lambda: (torch.ones(2, 3), torch.ones(2, 4), torch.ones(5), None, None, []), "shape"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64), torch.ones(5), None, None, []), "dtype"),
        (
            lambda: (
                torch.ones(2, 3, dtype=torch.int32),
                torch.ones(2, 3, dtype=torch.int32),
                torch.ones(5),
                None,
                None,
                [],
            ),
            "float32",
        ),
        (lambda: (torch.ones(0, 3), torch.ones(0, 3), torch.ones(5), None, None, []), "non-empty"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3), torch.ones(7), None, None, []), "expected \\(5\\)"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3), torch.ones(10), torch.ones(1, 2, 3), None, [1]), "write slot 1"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3), torch.ones(5), None, None, [0]), "write slot 0"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3), torch.ones(6), torch.ones(5, 2, 3), None, []), "slots"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3), torch.ones(5), None, torch.ones(2, 3), [], 3, 0), "not both"),
        (lambda: (torch.ones(2, 3), torch.ones(2, 3, device="meta"), torch.ones(5), None, None, []), "meta"),
    ],
)
def test_direct_op_calls_reject_bad_input(args, text):
    with pytest.raises(RuntimeError, match=text):
        torch.ops.diffcore.sampler_step(*args())


@needs_native
def test_forward_noise_direct_call_rejects_out_of_range_timestep():
    with pytest.raises(RuntimeError, match="outside the table"):
        torch.ops.diffcore.forward_noise(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([0, 4]), torch.ones(4, 4))


@pytest.mark.skipif("cuda" not in DEVICES, reason="needs a CUDA GPU and the CUDA build")
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc", "euler_ancestral"])
def test_cuda_graph_matches_eager(sampler):
    sched = diffcore.get("schedules", "linear")()
    w = torch.randn(16, 16, device="cuda") * 0.1

    def model(x, t):
        return torch.tanh(x @ w) * (t[:, None, None, None] / 1000.0)

    x_T = torch.randn(4, 3, 8, 16, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    eager = diffcore.sample(model, x_T, sampler=sampler, steps=20, schedule=sched, seed=5)
    graphed = diffcore.sample(model, x_T, sampler=sampler, steps=20, schedule=sched, seed=5, cuda_graph=True)
    assert torch.allclose(eager, graphed, atol=1e-5, rtol=1e-5)


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    """A missing or broken diffcore._C is not an error: one warning, then the reference kernels."""
    import sys
    import warnings

    monkeypatch.setattr(ops, "_native_state", {})
    monkeypatch.setitem(sys.modules, "diffcore._C", None)  # makes `from diffcore import _C` fail
    monkeypatch.delattr(diffcore, "_C", raising=False)
    monkeypatch.delenv("DIFFCORE_KERNELS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ops.backend("cpu") == "reference"
        assert ops.backend("cpu") == "reference"
        x = torch.ones(2, 3)
        ops.sampler_step(x, torch.ones(2, 3), torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0]))
    messages = [str(w.message) for w in caught if "native kernels unavailable" in str(w.message)]
    assert len(messages) == 1
    assert torch.allclose(x, torch.ones(2, 3))
    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    with pytest.raises(RuntimeError, match="no native kernels"):
        ops.backend("cpu")

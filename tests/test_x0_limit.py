"""x0 clipping and dynamic thresholding inside the fused step (issue #15 point 3), and the step's
in-kernel finiteness flag (issue #20 point 1). Oracles: the Torch reference for the kernels,
diffusers' DDPM / DDIM schedulers (clip_sample, thresholding) for the sampler math."""

from __future__ import annotations

import pytest
import torch
from test_diffusers_parity import BETAS, diffusers_loop, toy_model

import diffcore
from diffcore import X0Limit, ops
from diffcore.denoiser import NonFiniteModelOutput
from diffcore.ops import reference

NATIVE_CPU = ops.backend("cpu") == "native-cpu"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and ops.backend("cuda") == "native-cuda" else [])
needs_native = pytest.mark.skipif(not NATIVE_CPU, reason="diffcore._C is not built or DIFFCORE_KERNELS=reference")
LIMITS = {"clip": X0Limit(clip=1.5), "dynamic": X0Limit(dynamic_ratio=0.9, max_value=2.5)}


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"clip": 0.0}, "clip"),
        ({"clip": float("inf")}, "clip"),
        ({"dynamic_ratio": 1.5}, "dynamic_ratio"),
        ({"dynamic_ratio": 0.0}, "dynamic_ratio"),
        ({"dynamic_ratio": 0.9, "max_value": 0.5}, "max_value"),
        ({"clip": 1.0, "dynamic_ratio": 0.9}, "not both"),
        ({"clip": True}, "clip"),
    ],
)
def test_bad_limits_are_refused(kwargs, text):
    with pytest.raises(ValueError, match=text):
        X0Limit(**kwargs)


def test_reference_limit_is_diffusers_threshold_sample():
    sched = pytest.importorskip("diffusers").DDPMScheduler(
        thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=2.5
    )
    x0 = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 3
    ours = reference.limit_x0(x0, *LIMITS["dynamic"].op_args())
    assert torch.equal(ours, sched._threshold_sample(x0))
    assert torch.equal(reference.limit_x0(x0, 1.5, None, 1.0), x0.clamp(-1.5, 1.5))


def _both(fn, monkeypatch):
    monkeypatch.setenv("DIFFCORE_KERNELS", "native")
    native = fn()
    monkeypatch.setenv("DIFFCORE_KERNELS", "reference")
    ref = fn()
    monkeypatch.delenv("DIFFCORE_KERNELS")
    return native, ref


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("limit", list(LIMITS))
@pytest.mark.parametrize("cfg", [False, True])
@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kernel_limit_matches_reference(device, limit, cfg, per_sample, dtype, monkeypatch):
    g = torch.Generator().manual_seed(1)
    x0, m, c, z = (torch.randn(4, 3, 7, generator=g).mul(2).to(device, dtype) for _ in range(4))
    hist = torch.randn(2, 4, 3, 7, generator=g).to(device, dtype)
    width = ops.coeff_width(2, 1)
    coeffs = torch.randn(*((4, width) if per_sample else (width,)), generator=g, dtype=torch.float64).to(device)
    guidance = torch.tensor([3.0, 0.9], device=device)

    def run():
        x, h = x0.clone(), hist.clone()
        if cfg:
            ops.cfg_sampler_step(x, m, c, guidance, coeffs, h, z, [0], x0_limit=LIMITS[limit])
        else:
            ops.sampler_step(x, m, coeffs, h, z, [0], x0_limit=LIMITS[limit])
        return x, h

    (xn, hn), (xr, hr) = _both(run, monkeypatch)
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1.6e-2}[dtype]
    for a, b in ((xn, xr), (hn, hr)):
        assert (a.double() - b.double()).abs().max().item() <= tol * b.abs().max().item()
    x_free = x0.clone()
    ops.sampler_step(x_free, m, coeffs, hist.clone(), z, [0])
    assert not torch.allclose(x_free, xn)  # the limit changed the step


def test_predict_x0_honours_the_limit():
    from diffcore.denoiser import Denoiser
    from diffcore.parameterization import make_parameterization
    from diffcore.timesteps import Level

    den = Denoiser(lambda x, t: -3 * x, make_parameterization("epsilon"), x0_limit=X0Limit(clip=1.0))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2)) * 4
    x0 = den.predict_x0(x, Level(t=500.0, alpha=0.5, std=0.75**0.5))
    assert x0.abs().max().item() == 1.0


# diffusers config -> (diffcore sampler, diffusers step kwargs, X0Limit)
ORACLE = {
    "ddpm-clip": ("DDPMScheduler", {"clip_sample": True, "clip_sample_range": 1.2}, {}, X0Limit(clip=1.2)),
    "ddpm-threshold": (
        "DDPMScheduler",
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2.0},
        {},
        X0Limit(dynamic_ratio=0.9, max_value=2.0),
    ),
    # diffusers' DDIM re-derives eps from the limited x0 only with use_clipped_model_output=True;
    # diffcore's step reads one (limited) x0 in every column
    "ddim-clip": ("DDIMScheduler", {"clip_sample": True}, {"use_clipped_model_output": True}, X0Limit(clip=1.0)),
    "ddim-threshold": (
        "DDIMScheduler",
        {"thresholding": True, "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5, "clip_sample": False},
        {"use_clipped_model_output": True},
        X0Limit(dynamic_ratio=0.95, max_value=1.5),
    ),
}


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("case", list(ORACLE))
def test_matches_diffusers_clip_sample_and_thresholding(case, prediction):
    diffusers = pytest.importorskip("diffusers")
    cls_name, cfg, step_kw, limit = ORACLE[case]
    start, end = BETAS["linear"]
    scheduler = getattr(diffusers, cls_name)(
        beta_schedule="linear", beta_start=start, beta_end=end, prediction_type=prediction, **cfg
    )
    x_T = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = diffusers_loop(scheduler, x_T, 30, seed=7, **step_kw)
    kw = {
        "sampler": case.split("-")[0],
        "steps": 30,
        "schedule": diffcore.get("schedules", "linear")(1000, start, end),
        "prediction": prediction,
        "generator": torch.Generator().manual_seed(7),
    }
    out = diffcore.sample(toy_model, x_T, x0_limit=limit, **kw)
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err <= 1e-5, f"{case} {prediction}: relative error {err:.2e}"
    kw["generator"] = torch.Generator().manual_seed(7)
    free = diffcore.sample(toy_model, x_T, **kw)
    assert (free - ref).abs().max().item() > 1e-3 * ref.abs().max().item()  # the limit mattered


@needs_native
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_step_flags_a_non_finite_x0(device, backend, monkeypatch):
    """NaN or inf in the model output, or an x0 = a*x + b*m that overflows, sets the flag."""
    monkeypatch.setenv("DIFFCORE_KERNELS", backend)
    x, m = torch.randn(2, 9, device=device), torch.randn(2, 9, device=device)
    co = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.0], device=device)
    for bad, expected in ((None, 0), (float("nan"), 1), (float("inf"), 1), (3e38, 1)):  # 2 * 3e38 overflows
        flag = torch.zeros((), dtype=torch.int32, device=device)
        mm = m.clone()
        if bad is not None:
            mm[1, 4] = bad
        ops.sampler_step(x.clone(), mm, co, nonfinite=flag, x0_limit=X0Limit(clip=1.0))
        assert int(flag) == expected, bad


class _NanAt:
    """A model whose output holds a NaN at its call ``step`` (and is finite before and after)."""

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        out = torch.tanh(x)
        if self.calls == self.step:
            out[0, 1] = float("nan")
        self.calls += 1
        return out


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("guided", [False, True])
def test_a_nan_at_step_3_is_reported_as_step_3(backend, guided, monkeypatch):
    if backend == "native" and not NATIVE_CPU:
        pytest.skip("diffcore._C is not built")
    monkeypatch.setenv("DIFFCORE_KERNELS", backend)
    kw = {"cond": torch.zeros(2, 5), "uncond": torch.ones(2, 5), "guidance_scale": 2.0} if guided else {}
    x_T = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteModelOutput, match="step 3"):
        diffcore.sample(_NanAt(3), x_T, sampler="ddim", steps=8, seed=1, **kw)
    out = diffcore.sample(_NanAt(3), x_T, sampler="ddim", steps=8, seed=1, check_finite=False, **kw)
    assert torch.isnan(out).any()  # unchecked, the NaN flows through


def test_the_loop_checks_finiteness_without_a_reduction_per_step(monkeypatch):
    """The fused ops' flags replace the Denoiser's per-step sum: no more sums for more steps."""
    calls = []
    real_sum = torch.Tensor.sum

    def counting_sum(self, *args, **kwargs):
        calls.append(self.numel())
        return real_sum(self, *args, **kwargs)

    x_T = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    counts = []
    for steps in (4, 8):
        calls.clear()
        monkeypatch.setattr(torch.Tensor, "sum", counting_sum)
        diffcore.sample(lambda x, t: torch.tanh(x), x_T, sampler="ddim", steps=steps, seed=1)
        monkeypatch.setattr(torch.Tensor, "sum", real_sum)
        counts.append(len(calls))
    assert counts[0] == counts[1]

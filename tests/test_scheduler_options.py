"""Scheduler options real checkpoints set (issue #15 point 3), reproduced rather than warned about:
a scheduler config with the option goes through ``scheduler_from_config`` into ``diffcore.sample``,
and diffusers' own scheduler stepping the same fixed toy model from the same noise is the oracle
(float32, relative 1e-4)."""

from __future__ import annotations

import warnings

import pytest
import torch

import diffcore
from diffcore.interop.scheduler_config import DiffusersInteropWarning, scheduler_from_config

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
SHAPE = (2, 3, 4, 4)
SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}


def toy(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A fixed smooth 'model' whose output depends on both the input and the time it is given."""
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(0.7 * x + 0.002 * t) * 0.9 + 0.05 * torch.sin(0.01 * t)


@torch.no_grad()
def diffusers_run(scheduler, x_T: torch.Tensor, steps: int, model=toy, **step_kwargs) -> torch.Tensor:
    """diffusers' loop; a stochastic scheduler draws from ``step_kwargs["generator"]``."""
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
    return x


def ours(config: dict, x_T: torch.Tensor, steps: int, model=toy, strict: bool = True, **kw) -> torch.Tensor:
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", DiffusersInteropWarning)  # reproduced: nothing is warned about
        spec = scheduler_from_config(config, strict=strict)
    return diffcore.sample(model, x_T.clone(), steps=steps, **{**spec.sample_kwargs(), **kw})


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


def check(cls_name: str, config: dict, steps: int, model=toy, strict: bool = True, **step_kwargs) -> float:
    scheduler = getattr(diffusers, cls_name).from_config(config)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    kw = {}
    if "generator" in step_kwargs:  # the same torch RNG stream for both
        step_kwargs["generator"], kw["generator"] = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ref = diffusers_run(scheduler, x_T, steps, model, **step_kwargs)
    got = ours({**dict(scheduler.config), "_class_name": cls_name}, x_T, steps, model, strict, **kw)
    err = rel_err(got, ref)
    assert err < TOL, f"{cls_name} {config}: relative error {err:.2e}"
    return err


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_ddim_set_alpha_to_one_false(spacing):
    """SD 1.x's DDIM config: the last step lands on alphas_cumprod[0], not on clean data."""
    config = {**SD15, "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": spacing}
    check("DDIMScheduler", config, 10, eta=0.0)
    spec = scheduler_from_config({**config, "_class_name": "DDIMScheduler"})
    assert spec.schedule.final_sigmas_type == "sigma_min"
    # the option changes the result: with set_alpha_to_one=True the same run differs
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    one = ours({**config, "set_alpha_to_one": True, "_class_name": "DDIMScheduler"}, x_T, 10)
    assert rel_err(one, ours({**config, "_class_name": "DDIMScheduler"}, x_T, 10)) > 3 * TOL


@pytest.mark.parametrize(
    ("cls_name", "extra", "steps"),
    [
        ("DPMSolverMultistepScheduler", {}, 10),
        ("DPMSolverMultistepScheduler", {}, 16),  # >= 15 steps: no lower-order final step with sigma_min
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 12),
        ("EulerDiscreteScheduler", {}, 10),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "timestep_spacing": "leading"}, 10),
        ("UniPCMultistepScheduler", {}, 10),
    ],
)
def test_final_sigmas_type_sigma_min(cls_name, extra, steps):
    config = {**SD15, "final_sigmas_type": "sigma_min", **extra}
    check(cls_name, config, steps)


def test_final_sigmas_type_sigma_min_changes_the_end_level():
    spec = scheduler_from_config({"_class_name": "EulerDiscreteScheduler", "final_sigmas_type": "sigma_min"})
    plan = diffcore.timesteps.make_plan(spec.schedule, 5, "linspace", "karras")
    abar0 = float(spec.schedule.alphas_cumprod[0])
    assert float(plan.sigmas[-1]) == pytest.approx(((1 - abar0) / abar0) ** 0.5, rel=1e-12)
    assert float(plan.alphas[-1]) == 1.0  # Euler returns the VE state x0 + sigma eps there, as diffusers does
    ddim = diffcore.timesteps.make_plan(spec.schedule, 5, "leading", "ddim")
    assert float(ddim.alphas[-1]) == pytest.approx(abar0**0.5, rel=1e-12)  # DDIM's VP state


def test_uni_pc_sigma_min_with_karras_is_named():
    """UniPC then repeats its last spaced sigma (a zero-length step): not reproduced, so named."""
    with pytest.warns(DiffusersInteropWarning, match="final_sigmas_type"):
        scheduler_from_config(
            {"_class_name": "UniPCMultistepScheduler", "final_sigmas_type": "sigma_min", "use_karras_sigmas": True}
        )


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_euler_continuous_timesteps_v_prediction(spacing):
    """EulerDiscreteScheduler(timestep_type='continuous', v_prediction): the model sees 0.25 ln(sigma)."""
    config = {"timestep_type": "continuous", "prediction_type": "v_prediction", "timestep_spacing": spacing}
    check("EulerDiscreteScheduler", config, 8)
    seen: list[float] = []

    def spy(x, t):
        seen.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return toy(x, t)

    spec = scheduler_from_config({**config, "_class_name": "EulerDiscreteScheduler"})
    diffcore.sample(spy, torch.randn(SHAPE), steps=4, **spec.sample_kwargs())
    plan = diffcore.timesteps.make_plan(spec.schedule, 4, spacing, "karras")
    assert seen == pytest.approx((0.25 * plan.sigmas[:-1].log()).tolist(), rel=1e-6)
    assert seen[-1] < 0  # ln of a sigma below 1: not a training timestep


def test_continuous_without_v_prediction_keeps_timesteps():
    """diffusers gives continuous times only to v-prediction (its TODO): epsilon keeps timesteps."""
    config = {"timestep_type": "continuous", "prediction_type": "epsilon"}
    check("EulerDiscreteScheduler", config, 8)
    assert scheduler_from_config({**config, "_class_name": "EulerDiscreteScheduler"}).schedule.timestep_type == (
        "discrete"
    )


def test_schedule_options_round_trip_through_config():
    spec = scheduler_from_config(
        {
            "_class_name": "EulerDiscreteScheduler",
            "final_sigmas_type": "sigma_min",
            "timestep_type": "continuous",
            "prediction_type": "v_prediction",
        }
    )
    cfg = spec.schedule.config()
    assert cfg["final_sigmas_type"] == "sigma_min" and cfg["timestep_type"] == "continuous"
    assert diffcore.schedules.make_schedule(**cfg).config() == cfg
    assert "final_sigmas_type" not in diffcore.get("schedules", "linear")().config()  # default configs unchanged
    with pytest.raises(ValueError, match="final_sigmas_type"):
        diffcore.get("schedules", "linear")(final_sigmas_type="sigma_max")


def big(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A toy whose x0 estimates leave [-1, 1], so clipping and thresholding act."""
    return toy(x, t) * 1.5 - 0.4


@pytest.mark.parametrize(
    ("cls_name", "config", "step_kwargs"),
    [
        ("DDPMScheduler", {"clip_sample": True, "clip_sample_range": 1.0}, {"generator": None}),
        ("DDPMScheduler", {"clip_sample": True, "clip_sample_range": 0.7, "prediction_type": "v_prediction"}, {}),
        ("DDPMScheduler", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5}, {}),
        ("DPMSolverMultistepScheduler", {"thresholding": True, "dynamic_thresholding_ratio": 0.8}, {}),
        ("UniPCMultistepScheduler", {"thresholding": True, "sample_max_value": 2.0}, {}),
        ("HeunDiscreteScheduler", {"clip_sample": True, "clip_sample_range": 0.8}, {}),
    ],
)
def test_x0_clip_and_dynamic_thresholding(cls_name, config, step_kwargs):
    """clip_sample / thresholding become an X0Limit applied inside the fused step."""
    step_kwargs = {**step_kwargs, "generator": None} if cls_name == "DDPMScheduler" else step_kwargs
    check(cls_name, {**config}, 8, big, **step_kwargs)
    spec = scheduler_from_config({**config, "_class_name": cls_name})
    assert spec.x0_limit is not None and spec.sample_kwargs()["x0_limit"] == spec.x0_limit
    # the limit matters: without it the run differs
    free = {k: v for k, v in config.items() if k not in ("clip_sample", "thresholding")}
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    kw = {"generator": torch.Generator().manual_seed(1)} if cls_name == "DDPMScheduler" else {}
    a = ours({**config, "_class_name": cls_name}, x_T, 8, big, **kw)
    kw = {"generator": torch.Generator().manual_seed(1)} if cls_name == "DDPMScheduler" else {}
    b = ours({**free, "clip_sample": False, "_class_name": cls_name}, x_T, 8, big, **kw)
    assert rel_err(a, b) > 10 * TOL


def test_ddim_clip_follows_clipped_model_output():
    """DDIM's x0 limit: diffcore derives the step's direction from the limited x0, which is diffusers'
    use_clipped_model_output=True; DDIMPipeline's default keeps the raw noise estimate, so the spec
    names that difference."""
    config = {"clip_sample": True, "clip_sample_range": 1.0}
    check("DDIMScheduler", config, 8, big, strict=False, eta=0.0, use_clipped_model_output=True)
    with pytest.warns(DiffusersInteropWarning, match="use_clipped_model_output"):
        spec = scheduler_from_config({**config, "_class_name": "DDIMScheduler"})
    assert spec.x0_limit is not None and spec.x0_limit.clip == 1.0


def test_default_ddim_and_ddpm_configs_clip_x0(tmp_path):
    diffusers.DDPMScheduler().save_pretrained(tmp_path)  # clip_sample=True: the google/ddpm-* default
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffusersInteropWarning)
        spec = scheduler_from_config(tmp_path)
    assert spec.x0_limit is not None and spec.x0_limit.clip == 1.0


def learned(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A toy with 2C output channels: an epsilon estimate, then the variance interpolation v in [-1, 1]."""
    return torch.cat([toy(x, t), torch.tanh(0.5 * x - 0.2)], dim=1)


@pytest.mark.parametrize("extra", [{}, {"clip_sample": True}])
def test_ddpm_learned_range_variance(extra):
    """variance_type='learned_range': per-element log-variance between beta_t and beta~_t, drawn
    from the same torch RNG stream as diffusers' DDPMScheduler."""
    config = {"variance_type": "learned_range", "clip_sample": False, **extra}
    scheduler = diffusers.DDPMScheduler.from_config(config)
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    ref = diffusers_run(scheduler, x_T, 10, learned, generator=torch.Generator().manual_seed(1))
    spec = scheduler_from_config({**dict(scheduler.config), "_class_name": "DDPMScheduler"}, strict=True)
    got = diffcore.sample(
        learned, x_T.clone(), steps=10, generator=torch.Generator().manual_seed(1), **spec.sample_kwargs()
    )
    assert rel_err(got, ref) < TOL
    # the learned variance matters: with v = -1 everywhere (beta~ exactly: fixed_small) the run differs
    fixed = diffcore.sample(
        toy, x_T.clone(), steps=10, generator=torch.Generator().manual_seed(1),
        **{**spec.sample_kwargs(), "sampler": "ddpm", "sampler_options": {"variance_type": "fixed_small"}},
    )  # fmt: skip
    assert rel_err(fixed, ref) > 10 * TOL


def test_learned_range_needs_twice_the_channels():
    spec = scheduler_from_config({"_class_name": "DDPMScheduler", "variance_type": "learned_range"})
    with pytest.raises(ValueError, match="2 x 3 channels"):
        diffcore.sample(toy, torch.randn(SHAPE), steps=3, seed=0, **spec.sample_kwargs())


def test_learned_range_ddpm_pipeline_folder_loads_and_matches(tmp_path):
    """A DDPMPipeline folder whose UNet outputs 2C channels (IF / improved-DDPM style) loads and
    generates what diffusers' DDPMPipeline does from the same generator."""
    from diffcore.interop.diffusers import load_diffusers_pipeline

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=6, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip
    scheduler = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=True)
    ref_pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    ref_pipe.save_pretrained(tmp_path)
    ref_pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    ref = ref_pipe(batch_size=2, generator=g, num_inference_steps=6, output_type="np").images
    with warnings.catch_warnings():
        warnings.simplefilter("error", DiffusersInteropWarning)
        pipe = load_diffusers_pipeline(tmp_path)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 3, 8, 8), generator=g)  # DDPMPipeline's draw, then its steps' noise
    got = pipe.sample(
        x_T,
        steps=6,
        generator=g,
        **{k: v for k, v in pipe.spec.sample_kwargs().items() if k in ("sampler", "x0_limit", "timestep_spacing")},
    )
    got = ((got / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1)
    assert pipe.generate(2, steps=6, seed=0).shape == (2, 3, 8, 8)  # generate runs it too
    assert rel_err(got, torch.from_numpy(ref)) < TOL

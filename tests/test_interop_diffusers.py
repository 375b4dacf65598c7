"""diffusers UNet2DModel checkpoints under diffcore samplers: tiny random UNets are saved with
``save_pretrained``, loaded through ``diffcore.interop.diffusers`` and sampled by diffcore; diffusers'
own pipeline / scheduler loop with the same noise is the oracle (relative 1e-4 over 50 float32 steps;
28 for the flow-matching schedulers)."""

from __future__ import annotations

import inspect
import json
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import diffcore
from diffcore.interop.diffusers import (
    DiffusersInteropError,
    DiffusersInteropWarning,
    DiffusersPipeline,
    DiffusersUNet,
    load_diffusers_pipeline,
    load_diffusers_unet,
    scheduler_from_config,
)
from diffcore.interop.scheduler_config import DEFAULTS
from diffcore.schedules import FlowSchedule

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
STEPS = 50
GRID_STEPS = 25  # the scheduler x prediction x spacing grid: a shorter run, to keep this file fast
SHAPE = (2, 3, 8, 8)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny UNets run fastest on one thread, and the cores are shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(seed: int = 0, **config) -> diffusers.UNet2DModel:
    torch.manual_seed(seed)
    cfg = {
        "sample_size": 8,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "attention_head_dim": 8,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    }
    cfg.update(config)
    return diffusers.UNet2DModel(**cfg).eval()


@pytest.fixture(scope="module")
def unet() -> diffusers.UNet2DModel:
    return tiny_unet()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (ours - ref).abs().max().item() / ref.abs().max().item()


@torch.no_grad()
def diffusers_loop(unet, scheduler, x_T: torch.Tensor, steps: int = STEPS, **unet_kwargs) -> torch.Tensor:
    """What a diffusers pipeline does, without its [0, 1] post-processing."""
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(unet(scheduler.scale_model_input(x, t), t, **unet_kwargs).sample, t, x).prev_sample
    return x


def noise(seed: int = 3) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- diffusers' own pipelines


@pytest.mark.slow
def test_ddim_pipeline_folder_matches_diffusers_pipeline(unet, tmp_path: Path) -> None:
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    ref = pipe(
        batch_size=SHAPE[0],
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=STEPS,
        eta=0.0,
        output_type="pt",
    ).images
    loaded = load_diffusers_pipeline(tmp_path)
    assert isinstance(loaded, DiffusersPipeline) and loaded.sampler == "ddim" and loaded.steps == STEPS
    with torch.no_grad():
        out = diffcore.sample(loaded.model, noise(3), steps=STEPS, **loaded.spec.sample_kwargs())
    ours = (out / 2 + 0.5).clamp(0, 1)  # the pipeline's post-processing
    assert (ours - ref).abs().max().item() <= TOL
    raw = diffusers_loop(unet, diffusers.DDIMScheduler(clip_sample=False), noise(3))
    assert rel_err(out, raw) <= TOL


@pytest.mark.slow
def test_ddpm_pipeline_folder_matches_diffusers_pipeline_draw_for_draw(unet, tmp_path: Path) -> None:
    """DDPMPipeline draws x_T and then every step's noise from one generator; so does diffcore."""
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    ref = pipe(
        batch_size=SHAPE[0], generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, output_type="pt"
    ).images
    loaded = load_diffusers_pipeline(tmp_path)
    assert loaded.sampler == "ddpm" and loaded.steps == 1000  # DDPMPipeline's default
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(SHAPE, generator=g)
    with torch.no_grad():
        out = diffcore.sample(loaded.model, x_T, steps=STEPS, generator=g, **loaded.spec.sample_kwargs())
    assert ((out / 2 + 0.5).clamp(0, 1) - ref).abs().max().item() <= TOL
    assert bool(((ref > 0) & (ref < 1)).any())  # not every pixel clamped: the comparison means something


def test_ddim_pipeline_runs_any_saved_scheduler_as_ddim(unet, tmp_path: Path) -> None:
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(clip_sample=False)).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDPMScheduler"]  # as saved by an older diffusers
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    assert load_diffusers_pipeline(tmp_path).sampler == "ddim"


# --------------------------------------------------------------------------- scheduler x prediction x spacing

SCHEDULERS = {
    "ddim": ("DDIMScheduler", {"clip_sample": False}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}
GRID = [
    (s, p, sp)
    for s in ("ddim", "dpmpp_2m")
    for p in ("epsilon", "v_prediction")
    for sp in ("linspace", "leading", "trailing")
] + [("euler", "epsilon", "linspace"), ("euler", "v_prediction", "leading")]


@pytest.mark.parametrize("sampler,prediction,spacing", GRID)
@pytest.mark.slow
def test_unet_folder_with_scheduler_config_matches_diffusers(
    unet, tmp_path: Path, sampler: str, prediction: str, spacing: str
) -> None:
    cls_name, extra = SCHEDULERS[sampler]
    scheduler = getattr(diffusers, cls_name)(
        prediction_type=prediction, timestep_spacing=spacing, steps_offset=1, **extra
    )
    unet.save_pretrained(tmp_path)
    scheduler.save_pretrained(tmp_path)  # scheduler_config.json beside config.json
    loaded = load_diffusers_pipeline(tmp_path, strict=True)
    assert loaded.sampler == sampler and loaded.spec.prediction == prediction
    assert loaded.spec.timestep_spacing == spacing and loaded.schedule.steps_offset == 1
    ref = diffusers_loop(unet, scheduler, noise(), steps=GRID_STEPS)
    with torch.no_grad():
        out = diffcore.sample(loaded.model, noise(), steps=GRID_STEPS, **loaded.spec.sample_kwargs())
    err = rel_err(out, ref)
    assert err <= TOL, f"{sampler} {prediction} {spacing}: relative error {err:.2e}"


def test_any_diffcore_sampler_runs_a_loaded_unet(unet, tmp_path: Path) -> None:
    """A DDIM pipeline sampled by DPM-Solver++ equals diffusers' DPM-Solver++ on the same betas."""
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False)).save_pretrained(tmp_path)
    loaded = load_diffusers_pipeline(tmp_path)
    ref = diffusers_loop(unet, diffusers.DPMSolverMultistepScheduler(timestep_spacing="leading"), noise(), steps=20)
    with torch.no_grad():
        out = diffcore.sample(loaded.model, noise(), **{**loaded.spec.sample_kwargs(), "sampler": "dpmpp_2m"}, steps=20)
    assert rel_err(out, ref) <= TOL


def test_tasks_take_a_loaded_diffusers_pipeline(unet, tmp_path: Path) -> None:
    """A DiffusersPipeline is a diffcore.Pipeline: SDEdit, RePaint, denoising and anomaly scores run on it."""
    from diffcore.tasks import anomaly, denoise, img2img

    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False)).save_pretrained(tmp_path)
    pipe = load_diffusers_pipeline(tmp_path, steps=4)
    images = noise().clamp(-1, 1)
    edited = img2img.sdedit(pipe, images, 0.5, steps=3)
    filled = img2img.repaint(pipe, images, "center", steps=4, jump_length=2, resample=1)
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[2:6, 2:6] = False
    assert edited.shape == filled.shape == images.shape and torch.equal(filled[..., keep], images[..., keep])
    assert denoise.denoise(pipe, images, 0.2).shape == images.shape
    scores = anomaly.detect(pipe, images, depth=0.5, repeats=1, progress=False).scores
    assert scores.shape == (2,) and bool(torch.isfinite(scores).all())


@pytest.mark.slow
def test_class_conditional_unet_matches_diffusers(tmp_path: Path) -> None:
    unet = tiny_unet(seed=1, num_class_embeds=3)
    unet.save_pretrained(tmp_path / "unet")
    model = load_diffusers_unet(tmp_path / "unet")
    assert isinstance(model, DiffusersUNet) and model.num_classes == 3
    labels = torch.tensor([2, 0])
    ref = diffusers_loop(unet, diffusers.DDIMScheduler(clip_sample=False), noise(), class_labels=labels)
    spec = scheduler_from_config({"_class_name": "DDIMScheduler", "clip_sample": False})
    with torch.no_grad():
        as_tensor = diffcore.sample(model, noise(), steps=STEPS, cond=labels, **spec.sample_kwargs())
        as_dict = diffcore.sample(model, noise(), steps=STEPS, cond={"class_labels": labels}, **spec.sample_kwargs())
        other = diffcore.sample(model, noise(), steps=STEPS, cond=torch.tensor([1, 1]), **spec.sample_kwargs())
    assert rel_err(as_tensor, ref) <= TOL and torch.equal(as_tensor, as_dict)
    assert rel_err(other, ref) > 100 * TOL  # the labels reach the UNet
    with pytest.raises(ValueError, match="class_labels"):
        model(noise(), torch.tensor([10, 10]))


def test_pipeline_generate_and_save_load_round_trip(tmp_path: Path) -> None:
    unet = tiny_unet(seed=2, num_class_embeds=2)
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(clip_sample=False)).save_pretrained(
        tmp_path / "d"
    )
    loaded = load_diffusers_pipeline(tmp_path / "d", steps=10)
    assert loaded.sample_shape == (3, 8, 8) and loaded.num_classes == 2
    first = loaded.generate(2, class_labels=[0, 1], seed=4)
    assert first.shape == (2, 3, 8, 8) and torch.isfinite(first).all()
    assert torch.equal(first, loaded.generate(2, class_labels=[0, 1], seed=4))
    loaded.save(tmp_path / "run")  # a diffcore checkpoint, rebuilt through the model registry
    again = diffcore.Pipeline.load(tmp_path / "run")
    assert isinstance(again.model, DiffusersUNet)
    with torch.no_grad():
        x, t = noise(), torch.tensor([999, 500])
        assert torch.equal(again.model(x, t, torch.tensor([0, 1])), loaded.model(x, t, torch.tensor([0, 1])))


def test_registry_builds_a_diffusers_unet_from_its_config(unet) -> None:
    model = diffcore.get("models", "diffusers_unet")(**dict(unet.config))
    assert isinstance(model, DiffusersUNet) and model.name == "diffusers_unet"
    assert json.loads(json.dumps(model.config)) == model.config
    model.unet.load_state_dict(unet.state_dict())
    x, t = noise(), torch.tensor([10, 700])
    with torch.no_grad():
        assert torch.equal(model(x, t), unet(x, t).sample)


# --------------------------------------------------------------------------- scheduler configs


@pytest.mark.parametrize("cls_name", sorted(DEFAULTS))
def test_defaults_table_matches_diffusers(cls_name: str) -> None:
    params = inspect.signature(getattr(diffusers, cls_name).__init__).parameters
    for key, value in DEFAULTS[cls_name].items():
        if key not in params:  # a shared key the class lacks must read as "off"
            assert not value, f"{cls_name} has no option {key!r}, but diffcore assumes {value!r}"
            continue
        assert params[key].default == value, f"{cls_name}.{key}: diffusers default {params[key].default!r} != {value!r}"


@pytest.mark.parametrize(
    "config, sampler, options, eta",
    [
        (
            {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3},
            "dpmpp_3m_sde",
            {"lower_order_final": True},
            0.0,
        ),
        (
            {"_class_name": "DPMSolverMultistepScheduler", "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
            "dpmpp_2m_sde",
            {"solver_type": "heun", "lower_order_final": True},
            1.0,
        ),
        (
            {"_class_name": "UniPCMultistepScheduler", "solver_order": 3},
            "unipc",
            {"order": 3, "lower_order_final": True},
            None,
        ),
        (
            {"_class_name": "DDPMScheduler", "clip_sample": False, "variance_type": "fixed_large"},
            "ddpm",
            {"variance_type": "fixed_large"},
            None,
        ),
        ({"_class_name": "HeunDiscreteScheduler"}, "heun", {}, None),
    ],
)
def test_scheduler_class_maps_to_sampler(config: dict, sampler: str, options: dict, eta: float | None) -> None:
    spec = scheduler_from_config(config, strict=True)
    assert (spec.sampler, spec.sampler_options, spec.eta) == (sampler, options, eta)


def test_karras_and_zero_snr_options_reach_the_schedule(tmp_path: Path) -> None:
    diffusers.EulerDiscreteScheduler(
        use_karras_sigmas=True,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
    ).save_pretrained(tmp_path)
    spec = scheduler_from_config(tmp_path, strict=True)
    assert spec.schedule.sigma_spacing == "karras" and spec.schedule.name == "scaled_linear"
    assert spec.schedule.rescale_betas_zero_snr and spec.timestep_spacing == "linspace"


@pytest.mark.parametrize(
    "options, match",
    [
        ({"clip_sample": True}, "clip_sample=True"),
        ({"thresholding": True}, "thresholding=True"),
        ({"set_alpha_to_one": False}, "set_alpha_to_one=False"),
    ],
)
def test_unreproduced_options_warn_or_raise_in_strict_mode(options: dict, match: str) -> None:
    # EulerDiscrete has none of these three (DDIM's are reproduced: tests/test_scheduler_options.py)
    config = {"_class_name": "EulerDiscreteScheduler", **options}
    with pytest.warns(DiffusersInteropWarning, match=match):
        spec = scheduler_from_config(config)
    assert spec.sampler == "euler" and any(match in p for p in spec.unsupported)
    with pytest.raises(DiffusersInteropError, match=match):
        scheduler_from_config(config, strict=True)


def test_unknown_scheduler_class_falls_back_with_a_warning(tmp_path: Path) -> None:
    diffusers.PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=True).save_pretrained(tmp_path)
    with pytest.warns(DiffusersInteropWarning, match="PNDMScheduler"):
        spec = scheduler_from_config(tmp_path)
    assert spec.sampler == "dpmpp_2m" and spec.timestep_spacing == "leading"


@pytest.mark.parametrize(
    "config, match",
    [
        ({"beta_schedule": "nope"}, "beta_schedule='nope'"),
        ({"prediction_type": "flow"}, "prediction_type='flow'"),
        ({"timestep_spacing": "middle"}, "timestep_spacing='middle'"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start"),
        ({"variance_type": "learned"}, "learned"),  # learned_range is reproduced (tests/test_scheduler_options.py)
    ],
)
def test_bad_scheduler_configs_raise(config: dict, match: str) -> None:
    with pytest.raises(DiffusersInteropError, match=match):
        scheduler_from_config({"_class_name": "DDPMScheduler", "clip_sample": False, **config})


def test_scheduler_config_needs_a_class_and_valid_json(tmp_path: Path) -> None:
    with pytest.raises(DiffusersInteropError, match="_class_name"):
        scheduler_from_config({"beta_schedule": "linear"})
    (tmp_path / "scheduler_config.json").write_text("{not json")
    with pytest.raises(DiffusersInteropError, match="not valid JSON"):
        scheduler_from_config(tmp_path)
    with pytest.raises(DiffusersInteropError, match="no diffusers config"):
        scheduler_from_config(tmp_path / "missing")


# --------------------------------------------------------------------------- flow-matching schedulers

FLOW_STEPS = 28
FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
# (diffusers class, its config, set_timesteps mu, the diffcore sampler that reproduces it)
FLOW_CASES = {
    "euler-shift1": ("FlowMatchEulerDiscreteScheduler", {}, None, "euler"),
    "euler-shift3": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, None, "euler"),
    "euler-dynamic": ("FlowMatchEulerDiscreteScheduler", {"use_dynamic_shifting": True}, 0.9, "euler"),
    "euler-karras": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "use_karras_sigmas": True}, None, "euler"),
    "euler-terminal": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "shift_terminal": 0.1}, None, "euler"),
    "euler-stochastic": ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0, "stochastic_sampling": True}, None, "lcm"),
    "heun": ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, None, "heun"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {**FLOW_SIGMAS, "flow_shift": 3.0}, None, "dpmpp_2m"),
    "dpmpp_2m-dynamic": ("DPMSolverMultistepScheduler", {**FLOW_SIGMAS, "use_dynamic_shifting": True}, 0.9, "dpmpp_2m"),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {**FLOW_SIGMAS, "flow_shift": 3.0, "algorithm_type": "sde-dpmsolver++"},
        None,
        "dpmpp_2m_sde",
    ),
    "dpmpp_3m": (
        "DPMSolverMultistepScheduler",
        {**FLOW_SIGMAS, "flow_shift": 3.0, "solver_order": 3},
        None,
        "dpmpp_3m_sde",
    ),
    "dpmpp_2m-epsilon": ("DPMSolverMultistepScheduler", {"use_flow_sigmas": True, "flow_shift": 3.0}, None, "dpmpp_2m"),
    "unipc": ("UniPCMultistepScheduler", {**FLOW_SIGMAS, "flow_shift": 3.0}, None, "unipc"),
    "unipc-trailing": (  # the beta spacing does not act on flow sigmas
        "UniPCMultistepScheduler",
        {**FLOW_SIGMAS, "flow_shift": 3.0, "timestep_spacing": "trailing"},
        None,
        "unipc",
    ),
    "unipc-dynamic": ("UniPCMultistepScheduler", {**FLOW_SIGMAS, "use_dynamic_shifting": True}, 0.9, "unipc"),
}


@torch.no_grad()
def flow_loop(unet, scheduler, x_T: torch.Tensor, steps: int, mu: float | None, seed: int) -> torch.Tensor:
    """A flow pipeline's loop (SD3, Flux): no input scaling, the scheduler's timesteps as the model time."""
    scheduler.set_timesteps(steps) if mu is None else scheduler.set_timesteps(steps, mu=mu)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": torch.Generator().manual_seed(seed)} if takes_generator else {}
    x = x_T.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, t).sample, t, x, **extra).prev_sample
    return x


@pytest.mark.parametrize("case", list(FLOW_CASES))
def test_flow_scheduler_folder_matches_diffusers(unet, tmp_path: Path, case: str) -> None:
    cls_name, config, mu, sampler = FLOW_CASES[case]
    scheduler = getattr(diffusers, cls_name)(**config)
    unet.save_pretrained(tmp_path)
    scheduler.save_pretrained(tmp_path)
    loaded = load_diffusers_pipeline(tmp_path, strict=True, mu=mu)
    assert isinstance(loaded.schedule, FlowSchedule) and loaded.sampler == sampler
    assert loaded.spec.prediction == ("epsilon" if case.endswith("epsilon") else "flow")
    assert loaded.spec.timestep_spacing == "linspace"
    ref = flow_loop(unet, scheduler, noise(), FLOW_STEPS, mu, seed=7)
    with torch.no_grad():
        out = diffcore.sample(
            loaded.model,
            noise(),
            steps=FLOW_STEPS,
            generator=torch.Generator().manual_seed(7),
            **loaded.spec.sample_kwargs(),
        )
    err = rel_err(out, ref)
    assert err <= TOL, f"{case}: relative error {err:.2e}"


def test_flow_pipeline_generates_saves_loads_and_runs_tasks(unet, tmp_path: Path) -> None:
    from diffcore.tasks import denoise, img2img

    unet.save_pretrained(tmp_path / "d")
    diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).save_pretrained(tmp_path / "d")
    no_mu = load_diffusers_pipeline(tmp_path / "d", steps=4)
    with pytest.raises(ValueError, match="needs mu"):
        no_mu.generate(1)
    loaded = load_diffusers_pipeline(tmp_path / "d", steps=4, mu=0.7)
    first = loaded.generate(2, seed=1)
    assert first.shape == (2, 3, 8, 8) and bool(torch.isfinite(first).all())
    loaded.save(tmp_path / "run")
    again = diffcore.Pipeline.load(tmp_path / "run")
    assert again.schedule == loaded.schedule and again.schedule.mu == 0.7 and again.param.name == "flow"
    images = noise().clamp(-1, 1)
    assert img2img.sdedit(again, images, 0.5, steps=3).shape == images.shape
    assert denoise.denoise(again, images, 0.2).shape == images.shape


@pytest.mark.parametrize(
    "config, match",
    [
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True}, "invert_sigmas=True"),
        ({"_class_name": "DPMSolverMultistepScheduler", **FLOW_SIGMAS, "use_karras_sigmas": True}, "use_karras_sigmas"),
        (
            {"_class_name": "UniPCMultistepScheduler", **FLOW_SIGMAS, "use_exponential_sigmas": True},
            "use_exponential_sigmas",
        ),
        ({"_class_name": "UniPCMultistepScheduler", **FLOW_SIGMAS, "use_beta_sigmas": True}, "use_beta_sigmas"),
        (
            {"_class_name": "DPMSolverMultistepScheduler", **FLOW_SIGMAS, "prediction_type": "v_prediction"},
            "prediction_type='v_prediction'",
        ),
        (
            {"_class_name": "DPMSolverMultistepScheduler", **FLOW_SIGMAS, "final_sigmas_type": "sigma_min"},
            "final_sigmas_type='sigma_min'",
        ),
        (
            {
                "_class_name": "DPMSolverMultistepScheduler",
                **FLOW_SIGMAS,
                "use_dynamic_shifting": True,
                "time_shift_type": "linear",
            },
            "time_shift_type='linear'",
        ),
    ],
)
def test_unreproduced_flow_options_warn_or_raise_in_strict_mode(config: dict, match: str) -> None:
    with pytest.warns(DiffusersInteropWarning, match=match):
        spec = scheduler_from_config(config)
    assert isinstance(spec.schedule, FlowSchedule) and any(match in p for p in spec.unsupported)
    with pytest.raises(DiffusersInteropError, match=match):
        scheduler_from_config(config, strict=True)


def test_flow_configs_map_onto_the_flow_schedule(tmp_path: Path) -> None:
    diffusers.FlowMatchEulerDiscreteScheduler(
        shift=2.0,
        use_dynamic_shifting=True,
        base_shift=0.3,
        max_shift=1.2,
        time_shift_type="linear",
        use_beta_sigmas=True,
    ).save_pretrained(tmp_path)
    spec = scheduler_from_config(tmp_path, strict=True, mu=1.5)
    want = FlowSchedule(
        shift=2.0,
        use_dynamic_shifting=True,
        base_shift=0.3,
        max_shift=1.2,
        time_shift_type="linear",
        sigma_spacing="beta",
        mu=1.5,
    )
    assert spec.schedule == want and spec.sampler == "euler" and spec.prediction == "flow"
    spec = scheduler_from_config(
        {"_class_name": "UniPCMultistepScheduler", **FLOW_SIGMAS, "solver_order": 3}, strict=True
    )
    assert spec.schedule == FlowSchedule() and spec.sampler_options == {"order": 3, "lower_order_final": True}
    # DPM-Solver++ without mu samples with flow_shift, dynamic or not (as diffusers does)
    dpm = {"_class_name": "DPMSolverMultistepScheduler", **FLOW_SIGMAS, "use_dynamic_shifting": True, "flow_shift": 2.0}
    assert scheduler_from_config(dpm, strict=True).schedule == FlowSchedule(shift=2.0)
    assert scheduler_from_config(dpm, strict=True, mu=0.5).schedule.effective_shift() == pytest.approx(math.exp(0.5))


@pytest.mark.parametrize(
    "config, mu, match",
    [
        ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}, 0.5, "mu=0.5 applies only"),
        ({"_class_name": "DDIMScheduler", "clip_sample": False}, 0.5, "mu=0.5 applies only"),
        ({"_class_name": "DPMSolverMultistepScheduler", "prediction_type": "flow_prediction"}, None, "use_flow_sigmas"),
        (
            {"_class_name": "FlowMatchEulerDiscreteScheduler", "use_karras_sigmas": True, "use_beta_sigmas": True},
            None,
            "several sigma spacings",
        ),
        ({"_class_name": "FlowMatchHeunDiscreteScheduler", "shift": -1.0}, None, "shift=-1.0"),
        ({"_class_name": "UniPCMultistepScheduler", **FLOW_SIGMAS, "prediction_type": "nope"}, None, "nope"),
    ],
)
def test_bad_flow_configs_raise(config: dict, mu: float | None, match: str) -> None:
    with pytest.raises(DiffusersInteropError, match=match):
        scheduler_from_config(config, mu=mu)


# --------------------------------------------------------------------------- files that do not load


def test_missing_files_raise_clear_errors(unet, tmp_path: Path) -> None:
    with pytest.raises(DiffusersInteropError, match="not a folder"):
        load_diffusers_unet(tmp_path / "nowhere")
    with pytest.raises(DiffusersInteropError, match="no config.json"):
        load_diffusers_unet(tmp_path)
    unet.save_pretrained(tmp_path / "u")
    (tmp_path / "u" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(DiffusersInteropError, match="no diffusion_pytorch_model.safetensors"):
        load_diffusers_unet(tmp_path / "u")


def test_pickle_checkpoint_is_refused_unread(unet, tmp_path: Path) -> None:
    """A .bin (torch.save / pickle) checkpoint is never unpickled: its payload would create a file."""
    unet.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DiffusersInteropError, match="pickle"):
        load_diffusers_unet(tmp_path)
    assert not marker.exists()


def test_corrupt_weights_and_mismatched_config_raise(unet, tmp_path: Path) -> None:
    unet.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    with pytest.raises(DiffusersInteropError, match="not a valid safetensors"):
        load_diffusers_unet(tmp_path)
    weights.write_bytes(good)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 32]}))
    with pytest.raises(DiffusersInteropError, match="do not fit"):
        load_diffusers_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(DiffusersInteropError, match="UNet2DConditionModel"):
        load_diffusers_unet(tmp_path)


def test_pipelines_with_other_components_are_refused(unet, tmp_path: Path) -> None:
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "LDMPipeline", "vqvae": ["diffusers", "VQModel"]})
    )
    with pytest.raises(DiffusersInteropError, match="LDMPipeline"):
        load_diffusers_pipeline(tmp_path)


def test_unet2d_folders_stay_float32_diffusers_pipelines(unet, tmp_path: Path) -> None:
    """The latent-pipeline options of load_diffusers_pipeline leave DDPM/DDIM folders as they were."""
    diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler()).save_pretrained(tmp_path)
    pipe = load_diffusers_pipeline(tmp_path, device=None, torch_dtype=torch.float32)
    assert isinstance(pipe, DiffusersPipeline) and pipe.device == torch.device("cpu")
    with pytest.raises(DiffusersInteropError, match="torch_dtype"):
        load_diffusers_pipeline(tmp_path, torch_dtype=torch.float16)


def test_unet_folder_without_scheduler_warns_and_uses_the_default(unet, tmp_path: Path) -> None:
    unet.save_pretrained(tmp_path)
    with pytest.warns(DiffusersInteropWarning, match="no scheduler config"):
        loaded = load_diffusers_pipeline(tmp_path)
    assert loaded.sampler == "ddim" and loaded.spec.schedule.name == "linear"
    given = load_diffusers_pipeline(tmp_path, scheduler={"_class_name": "EulerDiscreteScheduler"})
    assert given.sampler == "euler"


@pytest.mark.slow
def test_diffusers_is_imported_lazily_with_a_clear_error() -> None:
    code = (
        "import sys, diffcore, diffcore.interop.diffusers as m; diffcore.available('models'); "
        "assert 'diffusers' not in sys.modules; sys.modules['diffusers'] = None\n"
        "try:\n    m.DiffusersUNet(sample_size=8)\nexcept ImportError as e:\n    print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "pip install 'diffcore[diffusers]'" in out.stdout


# --------------------------------------------------------------------------- CUDA graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_cuda_graph_equals_eager(unet, sampler: str) -> None:
    model = DiffusersUNet(**dict(unet.config))
    model.unet.load_state_dict(unet.state_dict())
    model = model.cuda().eval()
    x_T = noise().cuda()
    kw = {"sampler": sampler, "steps": STEPS, "schedule": "linear", "timestep_spacing": "trailing", "seed": 11}
    with torch.no_grad():
        eager = diffcore.sample(model, x_T, **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed capture falls back with a warning
            graphed = diffcore.sample(model, x_T, cuda_graph=True, **kw)
    assert rel_err(graphed, eager) <= TOL

"""SD-class end to end on a CUDA GPU (issue #15): an SD-1.5-shaped ``UNet2DConditionModel`` (built
from its config with random weights: no download), 64x64x4 latents, 77 x 768 prompt embeddings,
classifier-free guidance 7.5, 50 steps, float16, batch 1 and 4. Skipped without CUDA.

* ``diffusers``: StableDiffusionPipeline's denoising loop (latents doubled, one UNet call,
  ``uncond + w (cond - uncond)``, ``scheduler.step``) with DDIMScheduler (SD 1.5's config:
  ``set_alpha_to_one=False``, ``steps_offset=1``, ``clip_sample=False``) and
  DPMSolverMultistepScheduler (the same betas).
* ``diffcore``: ``diffcore.sample(ConditionUNet, x_T, cond, uncond, guidance_scale=7.5,
  **scheduler_from_config(...).sample_kwargs())``: the fused CFG step, eager.
* ``diffcore-graph``: the same with ``cuda_graph=True`` (the untimed first call captures; timed
  calls replay).

The first run of a case is untimed; a diffcore case's output is compared with the diffusers
output (``extra_info["rel_err_vs_diffusers"]``, float16: about 1e-3). No timing is asserted.
``extra_info`` follows ``benchmarks/test_e2e_speed.py`` (suite ``e2e``), so
``benchmarks/summarize_e2e.py`` tabulates these cases too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import torch

import diffcore
from diffcore import graphs

diffusers = pytest.importorskip("diffusers")
from diffcore.interop.components.unet_condition import ConditionUNet  # noqa: E402
from diffcore.interop.scheduler_config import scheduler_from_config  # noqa: E402

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")
pytestmark = [
    pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA GPU (an SD-1.5-sized UNet)"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

STEPS = 50
ROUNDS = 3
GUIDANCE = 7.5
DTYPE = torch.float16
# runwayml/stable-diffusion-v1-5's unet/config.json (the keys that shape the network)
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": 8,
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "norm_num_groups": 32,
}
SD15_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {**SD15_BETAS, "clip_sample": False, "set_alpha_to_one": False}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", dict(SD15_BETAS)),
}
BATCHES = (1, 4)
IMPLS = ("diffusers", "diffcore", "diffcore-graph")
DEADLINE_ENV = "DIFFCORE_BENCH_DEADLINE"
_state: dict[str, Any] = {}
_reference: dict[tuple[int, str], torch.Tensor] = {}


def _unet() -> Any:
    if "unet" not in _state:
        torch.manual_seed(0)
        with torch.device(DEVICE):
            unet = diffusers.UNet2DConditionModel(**SD15_UNET)
        _state["unet"] = unet.to(DTYPE).eval()
    return _state["unet"]


def _inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    x_T = torch.randn((batch, 4, 64, 64), generator=g)
    cond = torch.randn((batch, 77, 768), generator=g) * 0.5
    uncond = torch.randn((batch, 77, 768), generator=g) * 0.5
    return (x_T.to(DEVICE, DTYPE), cond.to(DEVICE, DTYPE), uncond.to(DEVICE, DTYPE))


def _diffusers_run(unet: Any, scheduler: Any, x_T: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor) -> Any:
    scheduler.set_timesteps(STEPS, device=DEVICE)
    latents = x_T * scheduler.init_noise_sigma
    embeds = torch.cat([uncond, cond])
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        u, c = unet(inp, t, encoder_hidden_states=embeds, return_dict=False)[0].chunk(2)
        latents = scheduler.step(u + GUIDANCE * (c - u), t, latents, return_dict=False)[0]
    return latents


def _cases() -> list[Any]:
    return [pytest.param(b, s, i, id=f"sd15-b{b}-{s}-{i}") for b in BATCHES for s in SCHEDULERS for i in IMPLS]


@pytest.mark.parametrize("batch,sampler,impl", _cases())
def test_sd15_end_to_end(benchmark: Any, batch: int, sampler: str, impl: str) -> None:
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and time.time() > float(deadline):
        pytest.skip(f"{DEADLINE_ENV} passed")
    unet = _unet()
    cls_name, cfg = SCHEDULERS[sampler]
    scheduler = getattr(diffusers, cls_name)(**cfg)
    spec = scheduler_from_config({**scheduler.config, "_class_name": cls_name}, strict=True)
    model = ConditionUNet(unet)
    x_T, cond, uncond = _inputs(batch)
    kwargs: dict[str, Any] = dict(
        steps=STEPS, seed=0, cond={"encoder_hidden_states": cond}, uncond={"encoder_hidden_states": uncond},
        guidance_scale=GUIDANCE, **spec.sample_kwargs(),
    )  # fmt: skip
    graphs.clear_cache()
    if impl == "diffusers":

        def run() -> torch.Tensor:
            return _diffusers_run(unet, scheduler, x_T, cond, uncond)
    else:
        graph = impl == "diffcore-graph"

        def run() -> torch.Tensor:
            return diffcore.sample(model, x_T, cuda_graph=graph, **kwargs)

    def timed() -> torch.Tensor:
        with torch.no_grad():
            out = run()
        torch.cuda.synchronize(DEVICE)
        return out

    start = time.perf_counter()
    first = timed()
    untimed_s = time.perf_counter() - start
    if impl == "diffusers":
        _reference[(batch, sampler)] = first
    ref = None if impl == "diffusers" else _reference.get((batch, sampler))
    rel_err = None if ref is None else float((first.float() - ref.float()).abs().max() / ref.float().abs().max())
    benchmark.group = f"sd15 b{batch} {sampler}"
    benchmark.extra_info.update(
        {
            "suite": "e2e",
            "unet": "sd15",
            "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in SD15_UNET.items()},
            "batch": batch,
            "scheduler": sampler,
            "impl": impl,
            "steps_measured": STEPS,
            "steps_target": STEPS,
            "guidance_scale": GUIDANCE,
            "dtype": str(DTYPE),
            "device": torch.cuda.get_device_name(DEVICE),
            "untimed_first_run_s": untimed_s,
            "rel_err_vs_diffusers": rel_err,
        }
    )
    assert torch.isfinite(first).all(), f"{impl}: non-finite latents"
    captures = graphs.cache_info()["captures"]
    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1, warmup_rounds=0)
    if impl == "diffcore-graph":
        info = graphs.cache_info()
        benchmark.extra_info["graph_cache"] = info
        graphs.clear_cache()
        assert info["captures"] == captures, f"{impl}: a timed call captured the graph again ({info})"
    if rel_err is not None:  # float16 over 50 steps: the same samples up to rounding
        assert rel_err <= 2e-2, f"{impl} differs from diffusers by {rel_err:.2e}"

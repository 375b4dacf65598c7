"""Round trip to diffusers (issue #15 point 5): a diffcore-trained diffusers UNet2DModel and its
schedule written with ``Pipeline.save_pretrained`` / ``diffcore export``; diffusers' DDPMPipeline
and DDIMPipeline load the folder and sample what diffcore samples from the same noise."""

from __future__ import annotations

import json

import pytest
import torch

import diffcore
from diffcore.cli import main
from diffcore.parameterization import make_parameterization

diffusers = pytest.importorskip("diffusers")

UNET = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 8,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
}
STEPS = 10


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny UNets run fastest on one thread, and the cores are shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A UNet2DModel trained by diffcore for a few steps on 8x8 digits."""
    out = tmp_path_factory.mktemp("run")
    pipe = diffcore.train(
        "digits", "diffusers_unet", 3, out, dataset_options={"limit": 64}, model_config=UNET,
        batch_size=8, device="cpu", schedule="scaled_linear", schedule_options={"beta_start": 0.001, "beta_end": 0.02},
    )  # fmt: skip
    return out, pipe


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


@pytest.mark.parametrize("kind", ["DDIMPipeline", "DDPMPipeline"])
def test_diffusers_pipelines_load_the_export_and_sample_the_same(run, tmp_path, kind):
    _, pipe = run
    folder = pipe.save_pretrained(tmp_path / "export")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    ref_pipe = getattr(diffusers, kind).from_pretrained(folder)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS,
                   output_type="np").images  # fmt: skip
    ref = torch.from_numpy(ref).permute(0, 3, 1, 2)
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn((2, 1, 8, 8), generator=g)
    sampler = "ddim" if kind == "DDIMPipeline" else "ddpm"
    with torch.no_grad():
        ours = pipe.sample(x_T, sampler=sampler, steps=STEPS, timestep_spacing="leading", generator=g)
    ours = (ours / 2 + 0.5).clamp(0, 1)
    assert rel_err(ours, ref) < 1e-4


def test_cli_export_writes_a_folder_diffcore_loads_back(run, tmp_path):
    out_dir, pipe = run
    folder = tmp_path / "exported"
    assert main(["export", str(out_dir), "--format", "diffusers", "--out", str(folder)]) == 0
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "scaled_linear" and config["beta_start"] == 0.001
    from diffcore.interop.diffusers import load_diffusers_pipeline

    back = load_diffusers_pipeline(folder)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    a = back.sample(x, sampler="dpmpp_2m", steps=5)
    b = diffcore.Pipeline.load(out_dir).sample(x, sampler="dpmpp_2m", steps=5)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_diffcore_unet_export_is_refused_with_the_reason(tmp_path):
    model = diffcore.get("models", "unet")(in_channels=1, image_size=8, base_channels=16, groups=8)
    pipe = diffcore.Pipeline(model, diffcore.get("schedules", "linear")(), make_parameterization("epsilon"))
    with pytest.raises(TypeError, match="no diffusers equivalent"):
        pipe.save_pretrained(tmp_path)
    flow = diffcore.Pipeline(model, diffcore.get("schedules", "flow")(), make_parameterization("flow"))
    from diffcore.interop.export import scheduler_config

    with pytest.raises(ValueError, match="discrete beta schedule"):
        scheduler_config(flow)

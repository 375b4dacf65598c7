"""Flux on diffcore: a tiny FluxPipeline built from configs (tests/flow_tiny.py) is the oracle;
diffcore samples its FluxTransformer2DModel through :class:`FluxTransformer` on the unpacked latent
with the same noise and prompt embeddings: the embedded guidance of a guidance-distilled model,
true CFG with a negative prompt, the dynamic shift mu of the image size and Flux's evenly spaced
sigmas (``timestep_spacing="trailing"``), relative 1e-4 in float32."""

from __future__ import annotations

import flow_tiny
import pytest
import torch

import diffcore
from diffcore.interop.components.mmdit import FluxTransformer, latent_image_ids, pack_latents, unpack_latents
from diffcore.interop.scheduler_config import scheduler_from_config

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

TOL = 1e-4
STEPS = 5
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return diffusers.FluxPipeline(**flow_tiny.flux_components(tmp_path_factory.mktemp("flux")))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_pack_unpack_and_ids_are_fluxpipelines() -> None:
    x = torch.randn(2, 4, 6, 8)
    tokens = pack_latents(x)
    assert torch.equal(tokens, diffusers.FluxPipeline._pack_latents(x, 2, 4, 6, 8))
    assert torch.equal(unpack_latents(tokens, 6, 8), x)
    want = diffusers.FluxPipeline._prepare_latent_image_ids(2, 3, 4, "cpu", torch.float32)
    assert torch.equal(latent_image_ids(3, 4, device="cpu", dtype=torch.float32), want)
    with pytest.raises(ValueError, match="even, got 5x8"):
        pack_latents(torch.randn(1, 4, 5, 8))
    with pytest.raises(ValueError, match="not the 2x2 patches of a 6x6"):
        unpack_latents(tokens, 6, 6)


@pytest.mark.parametrize("true_cfg", [1.0, 2.5])
def test_flux_transformer_samples_as_the_diffusers_pipeline(flux, true_cfg) -> None:
    pe, pp, _ = flux.encode_prompt(PROMPT, max_sequence_length=16)
    npe, npp, _ = flux.encode_prompt(NEGATIVE, max_sequence_length=16)
    x_T = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    ref = flux(
        prompt_embeds=pe,
        pooled_prompt_embeds=pp,
        negative_prompt_embeds=npe,
        negative_pooled_prompt_embeds=npp,
        true_cfg_scale=true_cfg,
        guidance_scale=3.5,
        latents=pack_latents(x_T),
        num_inference_steps=STEPS,
        height=32,
        width=32,
        output_type="latent",
    ).images
    spec = scheduler_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", **flux.scheduler.config})
    kw = {**spec.sample_kwargs(), "schedule": spec.schedule.with_image_seq_len(64), "timestep_spacing": "trailing"}
    g = torch.full((1,), 3.5)
    cond = {"encoder_hidden_states": pe, "pooled_projections": pp, "guidance": g}
    guided = {
        "uncond": {"encoder_hidden_states": npe, "pooled_projections": npp, "guidance": g},
        "guidance_scale": true_cfg,
    }
    model = FluxTransformer.from_transformer(flux.transformer)
    out = diffcore.sample(model, x_T.clone(), steps=STEPS, cond=cond, **(guided if true_cfg > 1 else {}), **kw)
    assert rel(pack_latents(out), ref) < TOL
    assert rel(ref, pack_latents(x_T)) > 0.1


def test_flux_guidance_embedding_is_checked(flux) -> None:
    model = FluxTransformer.from_transformer(flux.transformer)
    x, t = torch.randn(2, 16, 16, 16), torch.tensor([900.0, 100.0])
    cond = {"encoder_hidden_states": torch.randn(2, 7, 32), "pooled_projections": torch.randn(2, 32)}
    with pytest.raises(ValueError, match="guidance_embeds=True: cond\\['guidance'\\] must be a \\(2,\\)"):
        model(x, t, cond)
    with torch.no_grad():
        weak, strong = (model(x, t, {**cond, "guidance": torch.full((2,), g)}) for g in (1.0, 6.0))
    assert rel(weak, strong) > 1e-3  # the embedded guidance reaches the transformer
    schnell = FluxTransformer.from_transformer(
        diffusers.FluxTransformer2DModel.from_config({**flux.transformer.config, "guidance_embeds": False})
    )
    with pytest.raises(ValueError, match="guidance_embeds=False"):
        schnell(x, t, {**cond, "guidance": torch.ones(2)})
    assert schnell(x, t, cond).shape == x.shape and model.latent_channels == 16

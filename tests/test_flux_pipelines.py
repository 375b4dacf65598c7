"""Flux on diffcore: a tiny FluxPipeline built from configs (tests/flow_tiny.py) and its Img2Img /
Inpaint variants are the oracle. The saved folder loads through ``load_diffusers_pipeline`` as a
LatentPipeline whose text2image / image2image / inpaint equal diffusers' ``output_type="pt"``
images for the same noise: the embedded guidance of a guidance-distilled model (family option
``embedded_guidance``), true CFG with a negative prompt (diffcore's ``guidance_scale``, diffusers'
``true_cfg_scale``), the dynamic shift mu of the image size and Flux's evenly spaced sigmas
(``timestep_spacing="trailing"``), relative 1e-4 in float32. :class:`FluxTransformer` alone, on
the unpacked latent, equals the pipeline's loop on the same prompt embeddings."""

from __future__ import annotations

import flow_tiny
import pytest
import sd_tiny
import torch
from latent_fixtures import flow_fixtures, one_thread  # noqa: F401 - one_thread: autouse
from sd_tiny import diffusers

import diffcore
from diffcore.interop.components.mmdit import FluxTransformer, latent_image_ids, pack_latents, unpack_latents
from diffcore.interop.diffusers import load_diffusers_pipeline
from diffcore.interop.scheduler_config import scheduler_from_config

TOL = 1e-4
STEPS = 5
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


SIZE = flow_tiny.IMAGE_SIZE
TEXT = {"max_sequence_length": 16, "embedded_guidance": 3.5}


components, flux, folder, pipe = flow_fixtures("flux", flow_tiny.flux_components, "FluxPipeline")


def diffusers_kwargs(seed: int, true_cfg: float = 2.0) -> dict:
    return {
        "negative_prompt": NEGATIVE,
        "true_cfg_scale": true_cfg,
        "guidance_scale": TEXT["embedded_guidance"],
        "num_inference_steps": STEPS,
        "height": SIZE,
        "width": SIZE,
        "generator": torch.Generator().manual_seed(seed),
        "max_sequence_length": TEXT["max_sequence_length"],
    }


def diffcore_kwargs(seed: int, true_cfg: float = 2.0) -> dict:
    return {
        "negative_prompt": NEGATIVE,
        "guidance_scale": true_cfg,
        "steps": STEPS,
        "generator": torch.Generator().manual_seed(seed),
        "family_options": TEXT,
    }


rel = sd_tiny.relative_error


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


@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_text2image_equals_flux_pipeline(flux, pipe, true_cfg) -> None:
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(5))
    ref = flux(PROMPT, latents=pack_latents(x_T), output_type="pt", **diffusers_kwargs(0, true_cfg)).images
    out = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **diffcore_kwargs(0, true_cfg))
    assert pipe.family.name == "flux" and out.shape == ref.shape == (1, 3, SIZE, SIZE)
    assert rel(out, ref) < TOL
    spec = pipe.family.scheduler_spec(pipe.scheduler_config, SIZE, SIZE, strict=False)
    assert spec.timestep_spacing == "trailing" and spec.schedule.mu == pytest.approx(0.5 + 0.65 * (64 - 256) / 3840)


def test_image2image_equals_the_img2img_pipeline(components, pipe) -> None:
    image = sd_tiny.images(1, SIZE)
    ref = diffusers.FluxImg2ImgPipeline(**components)(
        PROMPT, image=image, strength=0.6, output_type="pt", **diffusers_kwargs(3)
    ).images
    out = pipe.image2image(image, PROMPT, strength=0.6, **diffcore_kwargs(3))
    assert rel(out, ref) < TOL


def test_inpaint_equals_the_inpaint_pipeline(components, pipe) -> None:
    image, mask = sd_tiny.images(1, SIZE), sd_tiny.center_mask(1, SIZE)
    ref = diffusers.FluxInpaintPipeline(**components)(
        PROMPT, image=image, mask_image=mask, strength=0.7, output_type="pt", **diffusers_kwargs(4)
    ).images
    out = pipe.inpaint(image, mask, PROMPT, strength=0.7, **diffcore_kwargs(4))
    assert rel(out, ref) < TOL
    everything = pipe.inpaint(image, torch.ones_like(mask), PROMPT, strength=0.7, **diffcore_kwargs(4))
    assert rel(out, everything) > 0.01


def test_flux_pipeline_errors_name_the_value(pipe) -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe.text2image(PROMPT, height=SIZE + 2, width=SIZE, steps=1)
    with pytest.raises(ValueError, match="embedded_guidance=-1"):
        pipe.text2image(PROMPT, height=SIZE, width=SIZE, steps=1, family_options={"embedded_guidance": -1})
    with pytest.raises(TypeError, match="unknown family_options \\['clip_skip'\\]"):
        pipe.text2image(PROMPT, height=SIZE, width=SIZE, steps=1, family_options={"clip_skip": 1})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_and_samples(pipe, folder, dtype) -> None:
    half = load_diffusers_pipeline(folder, torch_dtype=dtype)
    assert half.family.model.dtype == dtype and half.family.model.transformer.dtype == dtype
    opts = {"height": SIZE, "width": SIZE, "steps": 2, "seed": 0, "family_options": TEXT}
    out, full = half.text2image(PROMPT, **opts), pipe.text2image(PROMPT, **opts)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert rel(out, full) < 0.1


def test_unipc_with_flow_sigmas_matches(components, folder) -> None:
    """A Flux folder whose scheduler is UniPC on flow sigmas: FluxPipeline then lets the scheduler
    place its own sigmas (no trailing spacing, no mu without dynamic shifting)."""
    config = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}
    scheduler = diffusers.UniPCMultistepScheduler(**config)
    ref_pipe = diffusers.FluxPipeline(**{**components, "scheduler": scheduler})
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(9))
    ref = ref_pipe(PROMPT, latents=pack_latents(x_T), output_type="pt", **diffusers_kwargs(0)).images
    unipc = load_diffusers_pipeline(folder, scheduler={"_class_name": "UniPCMultistepScheduler", **scheduler.config})
    out = unipc.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **diffcore_kwargs(0))
    assert unipc.sampler == "unipc" and rel(out, ref) < TOL


def test_cli_text2image_on_a_flux_folder(folder, pipe, tmp_path, capsys) -> None:
    """``diffcore text2image --pipeline`` runs a Flux folder with the family's defaults (FluxPipeline's
    128 x 128 latents, so 256 px here; T5 length 512, embedded guidance 3.5) and writes what the
    Python API samples; ``--guidance-scale`` is true CFG against the empty prompt."""
    import json

    import numpy as np

    from diffcore.cli import main

    out = tmp_path / "cat.npz"
    argv = ["text2image", "--pipeline", str(folder), PROMPT, "--steps", "2", "--n", "1", "--guidance-scale", "2"]
    code = main([*argv, "--device", "cpu", "--quiet", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert json.loads(stdout)["shape"] == [3, 256, 256]
    want = pipe.text2image(PROMPT, steps=2, seed=0, guidance_scale=2.0)
    assert rel(torch.from_numpy(np.load(out)["samples"]), want) < 1e-5


@pytest.mark.parametrize("kind", ["FluxFillPipeline", "FluxKontextPipeline", "FluxControlPipeline"])
def test_other_flux_pipelines_are_refused_by_name(folder, tmp_path, kind) -> None:
    import json
    import shutil

    from diffcore.interop.errors import DiffusersInteropError

    copy = shutil.copytree(folder, tmp_path / "copy")
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps({**index, "_class_name": kind}))
    with pytest.raises(DiffusersInteropError, match=f"describes a {kind} .* latent pipelines .*FluxPipeline"):
        load_diffusers_pipeline(copy)


def test_registry_builds_the_transformer_wrappers(flux) -> None:
    from diffcore.interop.components.mmdit import SD3Transformer

    model = diffcore.get("models", "diffusers_flux_transformer")(**flux.transformer.config)
    assert isinstance(model, FluxTransformer)
    assert model.config == FluxTransformer.from_transformer(flux.transformer).config
    small = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "num_layers": 1, "pos_embed_max_size": 8}
    small.update(attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=16)
    sd3 = diffcore.get("models", "diffusers_sd3_transformer")(**small, caption_projection_dim=16)
    assert isinstance(sd3, SD3Transformer) and sd3.latent_channels == 4

"""SD3 on diffcore: a tiny StableDiffusion3Pipeline built from configs (tests/flow_tiny.py) and its
Img2Img / Inpaint variants are the oracle. The folder saved with ``save_pretrained`` loads through
``load_diffusers_pipeline`` as a LatentPipeline whose text2image / image2image / inpaint equal
diffusers' ``output_type="pt"`` images for the same noise (relative 1e-4 in float32,
FlowMatchEuler, a negative prompt and guidance_scale > 1); :class:`SD3Transformer` alone equals the
pipeline's loop on the same prompt embeddings."""

from __future__ import annotations

import flow_tiny
import pytest
import sd_tiny
import torch
from latent_fixtures import flow_fixtures, one_thread  # noqa: F401 - one_thread: autouse
from sd_tiny import diffusers

import diffcore
from diffcore.interop.components.mmdit import SD3Transformer
from diffcore.interop.diffusers import load_diffusers_pipeline
from diffcore.interop.errors import DiffusersInteropError
from diffcore.interop.scheduler_config import scheduler_from_config

TOL = 1e-4
STEPS = 6
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


SIZE = flow_tiny.IMAGE_SIZE
TEXT = {"max_sequence_length": 16}  # T5 tokens: diffusers' max_sequence_length, diffcore's family option


components, sd3, folder, pipe = flow_fixtures("sd3", flow_tiny.sd3_components, "StableDiffusion3Pipeline")


def diffusers_kwargs(seed: int) -> dict:
    return {
        "negative_prompt": NEGATIVE,
        "num_inference_steps": STEPS,
        "guidance_scale": 4.0,
        "height": SIZE,
        "width": SIZE,
        "generator": torch.Generator().manual_seed(seed),
        "max_sequence_length": TEXT["max_sequence_length"],
    }


def diffcore_kwargs(seed: int) -> dict:
    return {
        "negative_prompt": NEGATIVE,
        "steps": STEPS,
        "guidance_scale": 4.0,
        "generator": torch.Generator().manual_seed(seed),
        "family_options": TEXT,
    }


rel = sd_tiny.relative_error


def embeddings(pipe) -> dict[str, dict[str, torch.Tensor]]:
    pe, npe, pp, npp = pipe.encode_prompt(
        PROMPT, None, None, negative_prompt=NEGATIVE, do_classifier_free_guidance=True, max_sequence_length=16
    )
    return {
        "cond": {"encoder_hidden_states": pe, "pooled_projections": pp},
        "uncond": {"encoder_hidden_states": npe, "pooled_projections": npp},
    }


def test_sd3_transformer_samples_as_the_diffusers_pipeline(sd3) -> None:
    emb = embeddings(sd3)
    x_T = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = sd3(
        prompt_embeds=emb["cond"]["encoder_hidden_states"],
        pooled_prompt_embeds=emb["cond"]["pooled_projections"],
        negative_prompt_embeds=emb["uncond"]["encoder_hidden_states"],
        negative_pooled_prompt_embeds=emb["uncond"]["pooled_projections"],
        latents=x_T.clone(),
        num_inference_steps=STEPS,
        guidance_scale=4.0,
        output_type="latent",
    ).images
    spec = scheduler_from_config({"_class_name": "FlowMatchEulerDiscreteScheduler", **sd3.scheduler.config})
    model = SD3Transformer.from_transformer(sd3.transformer)
    out = diffcore.sample(model, x_T.clone(), steps=STEPS, guidance_scale=4.0, **emb, **spec.sample_kwargs())
    assert spec.sampler == "euler" and spec.prediction == "flow"
    assert rel(out, ref) < TOL
    assert rel(ref, x_T) > 0.1  # the run moved the latent: the comparison is not vacuous


def test_sd3_transformer_loads_from_a_saved_folder_and_refuses_pickle(sd3, tmp_path) -> None:
    sd3.transformer.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    model = SD3Transformer.from_pretrained(tmp_path / "transformer")
    x, t = torch.randn(2, 16, 16, 16), torch.tensor([500.0, 20.0])
    cond = {"encoder_hidden_states": torch.randn(2, 5, 64), "pooled_projections": torch.randn(2, 64)}
    with torch.no_grad():
        want = sd3.transformer(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
        ).sample
        assert torch.equal(model(x, t, cond), want)
    assert model.latent_channels == 16 and model.config["patch_size"] == 2
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "transformer" / "config.json").read_text())
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(DiffusersInteropError, match="pickle"):
        SD3Transformer.from_pretrained(pickled)


def test_sd3_transformer_names_bad_conditioning(sd3) -> None:
    model = SD3Transformer.from_transformer(sd3.transformer)
    x, t = torch.randn(1, 16, 16, 16), torch.tensor([500.0])
    good = {"encoder_hidden_states": torch.randn(1, 5, 64), "pooled_projections": torch.randn(1, 64)}
    with pytest.raises(TypeError, match="encoder_hidden_states"):
        model(x, t, None)
    with pytest.raises(ValueError, match="pooled_projections"):
        model(x, t, {"encoder_hidden_states": good["encoder_hidden_states"]})
    with pytest.raises(ValueError, match="unknown cond keys \\['guidance'\\]"):
        model(x, t, {**good, "guidance": torch.ones(1)})
    with pytest.raises(ValueError, match="\\(B, 16, H, W\\)"):
        model(torch.randn(1, 4, 16, 16), t, good)
    with pytest.raises(TypeError, match="SD3Transformer2DModel"):
        SD3Transformer.from_transformer(torch.nn.Linear(2, 2))


def test_text2image_equals_stable_diffusion_3_pipeline(sd3, pipe) -> None:
    x_T = torch.randn(2, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(5))
    prompts = [PROMPT, "a red dog"]
    kw = diffusers_kwargs(0)
    kw["negative_prompt"] = [NEGATIVE, ""]
    ref = sd3(prompts, latents=x_T.clone(), output_type="pt", **kw).images
    opts = diffcore_kwargs(0)
    opts["negative_prompt"] = [NEGATIVE, ""]
    out = pipe.text2image(prompts, height=SIZE, width=SIZE, latents=x_T.clone(), **opts)
    assert pipe.family.name == "stable-diffusion-3" and out.shape == ref.shape == (2, 3, SIZE, SIZE)
    assert rel(out, ref) < TOL
    assert rel(out[0], out[1]) > 0.01  # two prompts, two images


def test_image2image_equals_the_img2img_pipeline(components, pipe) -> None:
    image = sd_tiny.images(1, SIZE)
    # 6 * 0.6 = 3.6 steps: SD3 starts at int(6 - 3.6) = level 2, where SD's rule gives level 3
    ref = diffusers.StableDiffusion3Img2ImgPipeline(**components)(
        PROMPT, image=image, strength=0.6, output_type="pt", **diffusers_kwargs(3)
    ).images
    out = pipe.image2image(image, PROMPT, strength=0.6, **diffcore_kwargs(3))
    assert rel(out, ref) < TOL
    assert rel(out, image) > 0.05


@torch.no_grad()
def decoded(vae, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] of SD3 latents, decoded as StableDiffusion3Pipeline does (with the shift factor)."""
    images = vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor).sample
    return (images / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpaint_equals_the_inpaint_pipeline_loop(components, pipe, strength) -> None:
    """diffusers' StableDiffusion3InpaintPipeline decodes without the VAE's shift_factor (its
    text2image and img2img add it), so the oracle is its latents decoded as the other two do."""
    image, mask = sd_tiny.images(1, SIZE), sd_tiny.center_mask(1, SIZE)
    inpaint = diffusers.StableDiffusion3InpaintPipeline(**components)
    latents = inpaint(
        PROMPT, image=image, mask_image=mask, strength=strength, output_type="latent", **diffusers_kwargs(4)
    ).images
    ref = decoded(components["vae"], latents)
    out = pipe.inpaint(image, mask, PROMPT, strength=strength, **diffcore_kwargs(4))
    assert rel(out, ref) < TOL
    everything = pipe.inpaint(image, torch.ones_like(mask), PROMPT, strength=strength, **diffcore_kwargs(4))
    assert rel(out, everything) > 0.01  # the known region was pasted back


def test_dynamic_shift_mu_follows_the_patch_count(components, folder, sd3) -> None:
    config = {**sd3.scheduler.config, "use_dynamic_shifting": True, "base_image_seq_len": 16, "max_image_seq_len": 256}
    shifted = diffusers.StableDiffusion3Pipeline(**{**components, "scheduler": flow_tiny.flow_scheduler(**config)})
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(6))
    ref = shifted(PROMPT, latents=x_T.clone(), output_type="pt", **diffusers_kwargs(0)).images
    pipe = load_diffusers_pipeline(folder, scheduler={"_class_name": "FlowMatchEulerDiscreteScheduler", **config})
    out = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **diffcore_kwargs(0))
    assert rel(out, ref) < TOL
    mu = pipe.family.shift_mu(config, SIZE, SIZE)  # 8 x 8 patches of 2 x 2 latents: 64 tokens
    assert mu == pytest.approx(0.5 + (1.15 - 0.5) * (64 - 16) / (256 - 16))


def test_prompt_embeds_and_other_samplers(pipe) -> None:
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(7))
    base = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **diffcore_kwargs(0))
    cond, uncond = pipe.family.encode_prompt([PROMPT], [NEGATIVE], guidance=True, height=SIZE, width=SIZE, **TEXT)
    opts = {k: v for k, v in diffcore_kwargs(0).items() if k not in ("negative_prompt", "family_options")}
    again = pipe.text2image(
        None, height=SIZE, width=SIZE, latents=x_T.clone(), prompt_embeds=cond, negative_prompt_embeds=uncond, **opts
    )
    assert torch.equal(again, base)
    for sampler in ("dpmpp_2m", "heun"):
        other = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), sampler=sampler, **opts)
        assert other.shape == base.shape and 0 < rel(other, base) < 0.5


def test_sd3_pipeline_errors_name_the_value(pipe) -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe.text2image(PROMPT, height=SIZE + 2, width=SIZE, steps=1)
    with pytest.raises(TypeError, match="unknown family_options \\['embedded_guidance'\\]"):
        pipe.text2image(PROMPT, height=SIZE, width=SIZE, steps=1, family_options={"embedded_guidance": 3.0})
    with pytest.raises(ValueError, match="max_sequence_length=0"):
        pipe.text2image(PROMPT, height=SIZE, width=SIZE, steps=1, family_options={"max_sequence_length": 0})
    with pytest.raises(ValueError, match="pooled_projections"):
        pipe.text2image(None, height=SIZE, width=SIZE, steps=1, prompt_embeds=torch.zeros(1, 4, 64))


def test_without_t5_the_t5_tokens_are_zeros(components, tmp_path) -> None:
    """A folder saved with text_encoder_3 / tokenizer_3 null (SD3 without T5) loads and matches."""
    ref_pipe = diffusers.StableDiffusion3Pipeline(**{**components, "text_encoder_3": None, "tokenizer_3": None})
    ref_pipe.save_pretrained(tmp_path, safe_serialization=True)
    pipe = load_diffusers_pipeline(tmp_path)
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(8))
    ref = ref_pipe(PROMPT, latents=x_T.clone(), output_type="pt", **diffusers_kwargs(0)).images
    out = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **diffcore_kwargs(0))
    assert "text_encoder_3" not in pipe.components and rel(out, ref) < TOL
    cond, _ = pipe.family.encode_prompt([PROMPT], None, guidance=False, height=SIZE, width=SIZE, **TEXT)
    assert cond["encoder_hidden_states"].shape == (1, 77 + 16, 64)
    assert not cond["encoder_hidden_states"][:, 77:].any()


FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        ("DPMSolverMultistepScheduler", FLOW_SIGMAS),
        ("UniPCMultistepScheduler", FLOW_SIGMAS),
        ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}),
    ],
)
def test_other_flow_schedulers_match(components, folder, cls, config) -> None:
    scheduler = getattr(diffusers, cls)(**config)
    ref_pipe = diffusers.StableDiffusion3Pipeline(**{**components, "scheduler": scheduler})
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(9))
    ref = ref_pipe(PROMPT, latents=x_T.clone(), output_type="pt", **diffusers_kwargs(0)).images
    pipe = load_diffusers_pipeline(folder, scheduler={"_class_name": cls, **scheduler.config})
    out = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **diffcore_kwargs(0))
    assert rel(out, ref) < TOL


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_inpainting_transformer_takes_the_mask_channels(tmp_path, strength) -> None:
    """A 33-channel SD3 transformer (16 latent + mask + 16 masked-image channels) equals
    StableDiffusion3InpaintPipeline (no shift-factor blending here: latents are the oracle)."""
    components = flow_tiny.sd3_components(tmp_path, inpainting=True)
    pipe = load_diffusers_pipeline(sd_tiny.save(diffusers.StableDiffusion3Pipeline(**components), tmp_path / "f"))
    assert pipe.family.concat_channels() == 17
    image, mask = sd_tiny.images(1, SIZE), sd_tiny.center_mask(1, SIZE)
    latents = diffusers.StableDiffusion3InpaintPipeline(**components)(
        PROMPT, image=image, mask_image=mask, strength=strength, output_type="latent", **diffusers_kwargs(4)
    ).images
    ref = decoded(components["vae"], latents)
    out = pipe.inpaint(image, mask, PROMPT, strength=strength, **diffcore_kwargs(4))
    assert rel(out, ref) < TOL
    model, x = pipe.family.model, torch.randn(1, 16, 16, 16)
    cond = {"encoder_hidden_states": torch.randn(1, 5, 64), "pooled_projections": torch.randn(1, 64)}
    with pytest.raises(ValueError, match="17 extra input channels"):
        model(x, torch.tensor([500.0]), cond)


def test_clip_skip_and_offload_order(sd3, pipe) -> None:
    """``clip_skip`` reads an earlier CLIP layer for the prompt (not the negative), as diffusers;
    with offload every text encoder, then the transformer, then the VAE runs in turn."""
    x_T = torch.randn(1, 16, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(10))
    ref = sd3(PROMPT, latents=x_T.clone(), clip_skip=1, output_type="pt", **diffusers_kwargs(0)).images
    opts = {**diffcore_kwargs(0), "family_options": {**TEXT, "clip_skip": 1}}
    pipe.placements.clear()
    pipe.enable_model_cpu_offload(device="cpu", offload_device="cpu")
    try:
        out = pipe.text2image(PROMPT, height=SIZE, width=SIZE, latents=x_T.clone(), **opts)
    finally:
        pipe.to("cpu")
    assert rel(out, ref) < TOL
    order = list(dict.fromkeys(name for name, _, _ in pipe.placements))
    assert order == ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"]

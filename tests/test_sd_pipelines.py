"""Stable Diffusion folders on diffcore: text2image / image2image / inpaint equal diffusers'
StableDiffusion(Img2Img|Inpaint)Pipeline for the same noise (tiny components, float32)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import sd_tiny
import torch
from latent_fixtures import gen, one_thread, scheduler_fixtures  # noqa: F401 - one_thread: autouse
from sd_tiny import diffusers, relative_error

from diffcore.interop.diffusers import DiffusersInteropError, load_diffusers_pipeline

TOL = 1e-4
PROMPTS = ["a photo of a cat", "a red dog on the grass"]
NEGATIVES = ["blurry", "dark sky"]


# scheduler name -> (the diffusers pipeline, its saved folder) and its diffcore load; 'inpaint9': the 9-channel UNet
folders, loaded = scheduler_fixtures("sd", sd_tiny.sd_pipeline, inpaint9={"inpaint": True, "sched": "ddim"})


@pytest.mark.parametrize("sched", list(sd_tiny.SCHEDULERS))
def test_text2image_matches_diffusers(sched: str, folders: dict, loaded: dict) -> None:
    ref, _ = folders[sched]
    kw = {"guidance_scale": 3.0, "height": 32, "width": 32}
    want = ref(PROMPTS, negative_prompt=NEGATIVES, generator=gen(0), num_inference_steps=4, output_type="pt", **kw)
    got = loaded[sched].text2image(PROMPTS, NEGATIVES, generator=gen(0), steps=4, **kw)
    assert got.shape == (2, 3, 32, 32) and got.dtype == torch.float32
    assert float(got.min()) >= 0 and float(got.max()) <= 1
    assert relative_error(got, want.images) < TOL


@pytest.mark.parametrize("sched", list(sd_tiny.SCHEDULERS))
def test_image2image_matches_diffusers(sched: str, folders: dict, loaded: dict) -> None:
    ref, _ = folders[sched]
    image = sd_tiny.images(1)
    i2i = diffusers.StableDiffusionImg2ImgPipeline(**ref.components)
    want = i2i(
        PROMPTS[:1],
        image=image,
        strength=0.6,
        generator=gen(1),
        num_inference_steps=5,
        guidance_scale=2.0,
        negative_prompt=NEGATIVES[:1],
        output_type="pt",
    ).images
    got = loaded[sched].image2image(
        image, PROMPTS[:1], NEGATIVES[:1], strength=0.6, generator=gen(1), steps=5, guidance_scale=2.0
    )
    assert relative_error(got, want) < TOL
    # the strength picks the start level: another strength, another image
    other = loaded[sched].image2image(
        image, PROMPTS[:1], NEGATIVES[:1], strength=0.2, generator=gen(1), steps=5, guidance_scale=2.0
    )
    assert relative_error(other, got) > 1e-3


@pytest.mark.parametrize(("sched", "strength"), [("ddim", 1.0), ("euler", 1.0), ("dpmpp_2m", 0.6)])
def test_inpaint_any_unet_matches_diffusers(sched: str, strength: float, folders: dict, loaded: dict) -> None:
    ref, _ = folders[sched]
    image, mask = sd_tiny.images(1, seed=3), sd_tiny.center_mask(1)
    pipe = diffusers.StableDiffusionInpaintPipeline(**ref.components)
    want = pipe(
        PROMPTS[1:],
        image=image,
        mask_image=mask,
        generator=gen(2),
        num_inference_steps=4,
        guidance_scale=2.0,
        strength=strength,
        height=32,
        width=32,
        output_type="pt",
    ).images
    got = loaded[sched].inpaint(
        image, mask, PROMPTS[1:], generator=gen(2), steps=4, guidance_scale=2.0, strength=strength
    )
    assert relative_error(got, want) < TOL


def test_inpaint_nine_channel_unet_matches_diffusers(folders: dict, loaded: dict) -> None:
    ref, _ = folders["inpaint9"]
    image, mask = sd_tiny.images(1, seed=4), sd_tiny.center_mask(1)
    pipe = diffusers.StableDiffusionInpaintPipeline(**ref.components)
    for strength in (1.0, 0.75):
        want = pipe(
            PROMPTS[:1],
            image=image,
            mask_image=mask,
            generator=gen(5),
            num_inference_steps=4,
            guidance_scale=2.5,
            negative_prompt=NEGATIVES[:1],
            strength=strength,
            output_type="pt",
        ).images
        got = loaded["inpaint9"].inpaint(
            image, mask, PROMPTS[:1], NEGATIVES[:1], generator=gen(5), steps=4, guidance_scale=2.5, strength=strength
        )
        assert loaded["inpaint9"].family.concat_channels() == 5
        assert relative_error(got, want) < TOL, strength


def test_no_guidance_and_prompt_embeds(folders: dict, loaded: dict) -> None:
    ref, _ = folders["ddim"]
    pipe = loaded["ddim"]
    want = ref(PROMPTS[:1], generator=gen(7), num_inference_steps=3, guidance_scale=1.0, output_type="pt").images
    got = pipe.text2image(PROMPTS[:1], generator=gen(7), steps=3, guidance_scale=1.0)
    assert relative_error(got, want) < TOL
    embeds = pipe.components["text_encoder"].encode(PROMPTS[:1]).hidden
    again = pipe.text2image(prompt_embeds=embeds, generator=gen(7), steps=3, guidance_scale=1.0)
    assert torch.equal(again, got)
    latents = torch.randn(2, 4, 16, 16, generator=gen(8))
    two = pipe.text2image(prompt_embeds=embeds, num_images_per_prompt=2, latents=latents, steps=3, guidance_scale=1.0)
    listed = pipe.text2image(PROMPTS[:1] * 2, latents=latents, steps=3, guidance_scale=1.0)
    assert two.shape[0] == 2 and torch.equal(two, listed)
    assert not torch.equal(pipe.text2image(PROMPTS[1:], generator=gen(7), steps=3, guidance_scale=1.0), got)


@pytest.mark.parametrize("sampler", ["heun", "unipc", "euler_ancestral", "dpmpp_2m_cfg_pp"])
def test_any_diffcore_sampler(sampler: str, loaded: dict) -> None:
    pipe = loaded["ddim"]
    a = pipe.text2image(PROMPTS[:1], sampler=sampler, steps=3, guidance_scale=2.0, seed=11)
    b = pipe.text2image(PROMPTS[:1], sampler=sampler, steps=3, guidance_scale=2.0, seed=11)
    assert a.shape == (1, 3, 32, 32) and torch.isfinite(a).all()
    assert torch.equal(a, b)  # same seed, same image


def test_latents_and_batch(loaded: dict) -> None:
    pipe = loaded["euler"]
    latents = torch.randn(2, 4, 16, 16, generator=gen(3))
    both = pipe.text2image(PROMPTS[:1], latents=latents, num_images_per_prompt=2, steps=3)
    one = pipe.text2image(PROMPTS[:1], latents=latents[1:], steps=3)
    assert both.shape[0] == 2 and relative_error(both[1:], one) < 1e-5
    with pytest.raises(ValueError, match="latents have shape"):
        pipe.text2image(PROMPTS[:1], latents=latents, steps=3)


def test_offload_places_only_the_running_component(loaded: dict) -> None:
    pipe = loaded["ddim"]
    pipe.placements.clear()
    pipe.enable_model_cpu_offload(device="cpu", offload_device="cpu")
    try:
        pipe.inpaint(sd_tiny.images(1), sd_tiny.center_mask(1), PROMPTS[:1], steps=2)
    finally:
        pipe.to("cpu")
    order = [name for name, _, _ in pipe.placements]
    assert order[0] == "text_encoder" and "unet" in order and order[-1] == "vae"
    assert order.index("text_encoder") < order.index("unet") < len(order) - 1
    # offload moves every other module away before a component runs; the record says which ran where
    assert all(device == "cpu" for _, device, _ in pipe.placements)


def test_offload_moves_components(loaded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = loaded["ddim"]
    moves: list[tuple[str, str]] = []
    names = {id(m): k for k, m in pipe._modules().items()}
    original = torch.nn.Module.to

    def spy(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if id(self) in names:
            moves.append((names[id(self)], str(args[0] if args else kwargs.get("device"))))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", spy)
    pipe.enable_model_cpu_offload(device="meta", offload_device="cpu")
    moves.clear()
    pipe.offload = (torch.device("cpu"), torch.device("cpu"))  # run on CPU; keep the recorded moves
    pipe._use("unet")
    pipe.to("cpu")
    assert ("unet", "cpu") in moves and {"vae", "text_encoder"} <= {n for n, _ in moves if n != "unet"}


def test_torch_dtype_bfloat16(folders: dict) -> None:
    pipe = load_diffusers_pipeline(folders["ddim"][1], torch_dtype=torch.bfloat16)
    for name in ("unet", "vae", "text_encoder"):
        assert next(pipe.components[name].parameters()).dtype == torch.bfloat16, name
    out = pipe.text2image(PROMPTS[:1], steps=2, guidance_scale=2.0, seed=0)
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


def test_pickle_weights_refused(folders: dict, tmp_path: Path) -> None:
    folder = shutil.copytree(folders["ddim"][1], tmp_path / "pickled")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(DiffusersInteropError, match="pickle"):
        load_diffusers_pipeline(folder)


def test_unknown_pipeline_class_named(folders: dict, tmp_path: Path) -> None:
    import json

    folder = shutil.copytree(folders["ddim"][1], tmp_path / "other")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DiffusersInteropError, match="KandinskyPipeline"):
        load_diffusers_pipeline(folder)


def test_bad_inputs_name_the_value(loaded: dict) -> None:
    pipe = loaded["ddim"]
    with pytest.raises(ValueError, match="strength"):
        pipe.image2image(sd_tiny.images(1), PROMPTS[:1], strength=0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe.image2image(sd_tiny.images(1) * 2 - 1, PROMPTS[:1])
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe.text2image(PROMPTS[:1], height=33, width=32, steps=1)
    with pytest.raises(ValueError, match="negative_prompt"):
        pipe.text2image(PROMPTS, ["a", "b", "c"], steps=1)
    with pytest.raises(ValueError, match="cuda_graph"):
        pipe.inpaint(sd_tiny.images(1), sd_tiny.center_mask(1), PROMPTS[:1], steps=1, cuda_graph=True)
    with pytest.raises(ValueError, match="diffusers folder"):
        pipe.save("somewhere")
    with pytest.raises(DiffusersInteropError, match="per call"):
        load_diffusers_pipeline(pipe.run["diffusers"]["source"], steps=3)
    with pytest.raises(TypeError, match="unknown options"):
        pipe.text2image(PROMPTS[:1], stepz=3)


def test_tiled_decode(loaded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    vae = loaded["ddim"].components["vae"]
    latents = torch.randn(1, 4, 16, 16, generator=gen(0))
    calls: list[tuple[int, ...]] = []
    tiled = vae.vae.tiled_decode
    monkeypatch.setattr(vae.vae, "tiled_decode", lambda z, **kw: calls.append(tuple(z.shape)) or tiled(z, **kw))
    vae.tile_size = 8
    try:
        out = vae.decode(latents)
    finally:
        vae.tile_size = None
    assert calls == [(1, 4, 16, 16)] and out.shape == (1, 3, 32, 32)
    assert vae.vae.tile_latent_min_size != 8  # restored
    plain = vae.decode(latents)
    assert calls == [(1, 4, 16, 16)] and plain.shape == out.shape


def test_sd2_v_prediction_zero_snr_guidance_rescale(folders: dict, tmp_path: Path) -> None:
    """SD 2.x-style: v-prediction, zero-terminal-SNR betas on trailing DDIM steps, guidance rescale."""
    ref, _ = folders["ddim"]
    config = {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}
    ref = diffusers.StableDiffusionPipeline(
        **{**ref.components, "scheduler": diffusers.DDIMScheduler(**sd_tiny.SD_SCHEDULER, clip_sample=False, **config)}
    )
    pipe = load_diffusers_pipeline(sd_tiny.save(ref, tmp_path / "sd2"))
    kw = {"guidance_scale": 4.0, "guidance_rescale": 0.7}
    want = ref(
        PROMPTS[:1], negative_prompt=NEGATIVES[:1], generator=gen(9), num_inference_steps=4, output_type="pt", **kw
    ).images
    got = pipe.text2image(PROMPTS[:1], NEGATIVES[:1], generator=gen(9), steps=4, **kw)
    assert pipe.param.name == "v_prediction"
    assert relative_error(got, want) < TOL


def test_stochastic_sampler_matches_diffusers(folders: dict, loaded: dict) -> None:
    """euler_ancestral draws its noise from the same generator as EulerAncestralDiscreteScheduler, after
    the same VAE posterior draws (inpaint encodes the masked image for any UNet, as diffusers does)."""
    ref, _ = folders["euler"]
    ancestral = diffusers.EulerAncestralDiscreteScheduler.from_config(ref.scheduler.config)
    components = {**ref.components, "scheduler": ancestral}
    image, mask = sd_tiny.images(1, seed=6), sd_tiny.center_mask(1)
    kw = {"guidance_scale": 4.0}
    t2i = diffusers.StableDiffusionPipeline(**components)
    want = t2i(PROMPTS[:1], generator=gen(4), num_inference_steps=4, output_type="pt", **kw).images
    got = loaded["euler"].text2image(PROMPTS[:1], generator=gen(4), steps=4, sampler="euler_ancestral", **kw)
    assert relative_error(got, want) < TOL
    inpaint = diffusers.StableDiffusionInpaintPipeline(**components)
    want = inpaint(
        PROMPTS[:1], image=image, mask_image=mask, generator=gen(4), num_inference_steps=4, output_type="pt", **kw
    ).images
    got = loaded["euler"].inpaint(image, mask, PROMPTS[:1], generator=gen(4), steps=4, sampler="euler_ancestral", **kw)
    assert relative_error(got, want) < TOL

"""Stable Diffusion XL folders on diffcore: text2image / image2image / inpaint equal diffusers'
StableDiffusionXL(Img2Img|Inpaint)Pipeline for the same noise (tiny components, float32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sd_tiny
from latent_fixtures import gen, one_thread, scheduler_fixtures  # noqa: F401 - one_thread: autouse
from sd_tiny import diffusers, relative_error

from diffcore.interop.diffusers import load_diffusers_pipeline

TOL = 1e-4
PROMPTS = ["a photo of a cat", "a blue sky"]
NEGATIVES = ["blurry", "dark"]


folders, loaded = scheduler_fixtures("sdxl", sd_tiny.sdxl_pipeline)


@pytest.mark.parametrize("sched", list(sd_tiny.SCHEDULERS))
def test_text2image_matches_diffusers(sched: str, folders: dict, loaded: dict) -> None:
    ref, _ = folders[sched]
    kw = {"guidance_scale": 4.0, "height": 32, "width": 32}
    want = ref(PROMPTS, negative_prompt=NEGATIVES, generator=gen(0), num_inference_steps=4, output_type="pt", **kw)
    got = loaded[sched].text2image(PROMPTS, NEGATIVES, generator=gen(0), steps=4, **kw)
    assert got.shape == (2, 3, 32, 32)
    assert relative_error(got, want.images) < TOL


def test_zero_negative_when_none(folders: dict, loaded: dict) -> None:
    """Without a negative prompt SDXL's unconditional branch is zeros (force_zeros_for_empty_prompt)."""
    ref, _ = folders["euler"]
    want = ref(PROMPTS[:1], generator=gen(1), num_inference_steps=3, guidance_scale=3.0, output_type="pt").images
    got = loaded["euler"].text2image(PROMPTS[:1], generator=gen(1), steps=3, guidance_scale=3.0)
    assert relative_error(got, want) < TOL
    cond, uncond = loaded["euler"].family.encode_prompt(PROMPTS[:1], None, guidance=True, height=32, width=32)
    assert uncond is not None and not uncond["encoder_hidden_states"].any() and not uncond["text_embeds"].any()
    assert cond["time_ids"].tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]]
    assert cond["encoder_hidden_states"].shape == (1, sd_tiny.MAX_LENGTH, 64)


@pytest.mark.parametrize("sched", ["ddim", "dpmpp_2m"])
def test_image2image_matches_diffusers(sched: str, folders: dict, loaded: dict) -> None:
    ref, _ = folders[sched]
    image = sd_tiny.images(1, seed=2)
    i2i = diffusers.StableDiffusionXLImg2ImgPipeline(**ref.components)
    want = i2i(
        PROMPTS[:1],
        image=image,
        strength=0.7,
        generator=gen(3),
        num_inference_steps=5,
        guidance_scale=3.0,
        negative_prompt=NEGATIVES[:1],
        output_type="pt",
    ).images
    got = loaded[sched].image2image(
        image, PROMPTS[:1], NEGATIVES[:1], strength=0.7, generator=gen(3), steps=5, guidance_scale=3.0
    )
    assert relative_error(got, want) < TOL


def test_inpaint_matches_diffusers(folders: dict, loaded: dict) -> None:
    ref, _ = folders["euler"]
    image, mask = sd_tiny.images(1, seed=4), sd_tiny.center_mask(1)
    pipe = diffusers.StableDiffusionXLInpaintPipeline(**ref.components)
    want = pipe(
        PROMPTS[1:],
        image=image,
        mask_image=mask,
        generator=gen(5),
        num_inference_steps=4,
        guidance_scale=3.0,
        strength=1.0,
        height=32,
        width=32,
        negative_prompt=NEGATIVES[1:],
        output_type="pt",
    ).images
    got = loaded["euler"].inpaint(
        image, mask, PROMPTS[1:], NEGATIVES[1:], generator=gen(5), steps=4, guidance_scale=3.0, strength=1.0
    )
    assert relative_error(got, want) < TOL


def test_refiner_matches_diffusers(tmp_path: Path) -> None:
    """A refiner folder (no first text encoder, aesthetic-score time ids, real empty negative)."""
    ref = sd_tiny.sdxl_refiner(tmp_path)
    pipe = load_diffusers_pipeline(sd_tiny.save(ref, tmp_path / "refiner"))
    family = pipe.family
    assert family.time_ids(32, 48, negative=False) == [32.0, 48.0, 0.0, 0.0, 6.0]
    assert family.time_ids(32, 48, negative=True, negative_aesthetic_score=1.5) == [32.0, 48.0, 0.0, 0.0, 1.5]
    image = sd_tiny.images(1, seed=7)
    for negative in (None, NEGATIVES[:1]):
        want = ref(
            PROMPTS[:1],
            image=image,
            strength=0.5,
            negative_prompt=negative,
            generator=gen(6),
            num_inference_steps=4,
            guidance_scale=4.0,
            output_type="pt",
        ).images
        got = pipe.image2image(
            image, PROMPTS[:1], negative, strength=0.5, generator=gen(6), steps=4, guidance_scale=4.0
        )
        assert relative_error(got, want) < TOL, negative

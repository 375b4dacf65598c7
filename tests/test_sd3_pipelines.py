"""SD3 on diffcore: a tiny StableDiffusion3Pipeline built from configs (tests/flow_tiny.py) is the
oracle; diffcore samples its SD3Transformer2DModel through :class:`SD3Transformer` with the same
noise and prompt embeddings (relative 1e-4 in float32, FlowMatchEuler with a negative prompt and
guidance_scale > 1)."""

from __future__ import annotations

import flow_tiny
import pytest
import torch

import diffcore
from diffcore.interop.components.mmdit import SD3Transformer
from diffcore.interop.errors import DiffusersInteropError
from diffcore.interop.scheduler_config import scheduler_from_config

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

TOL = 1e-4
STEPS = 6
PROMPT, NEGATIVE = "a photo of a cat", "blurry"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd3():
    return diffusers.StableDiffusion3Pipeline(**flow_tiny.sd3_components())


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


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
    x_T = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
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
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([500.0, 20.0])
    cond = {"encoder_hidden_states": torch.randn(2, 5, 64), "pooled_projections": torch.randn(2, 64)}
    with torch.no_grad():
        want = sd3.transformer(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
        ).sample
        assert torch.equal(model(x, t, cond), want)
    assert model.latent_channels == 4 and model.config["patch_size"] == 2
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tmp_path / "transformer" / "config.json").read_text())
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(DiffusersInteropError, match="pickle"):
        SD3Transformer.from_pretrained(pickled)


def test_sd3_transformer_names_bad_conditioning(sd3) -> None:
    model = SD3Transformer.from_transformer(sd3.transformer)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500.0])
    good = {"encoder_hidden_states": torch.randn(1, 5, 64), "pooled_projections": torch.randn(1, 64)}
    with pytest.raises(TypeError, match="encoder_hidden_states"):
        model(x, t, None)
    with pytest.raises(ValueError, match="pooled_projections"):
        model(x, t, {"encoder_hidden_states": good["encoder_hidden_states"]})
    with pytest.raises(ValueError, match="unknown cond keys \\['guidance'\\]"):
        model(x, t, {**good, "guidance": torch.ones(1)})
    with pytest.raises(ValueError, match="\\(B, 4, H, W\\)"):
        model(torch.randn(1, 3, 16, 16), t, good)
    with pytest.raises(TypeError, match="SD3Transformer2DModel"):
        SD3Transformer.from_transformer(torch.nn.Linear(2, 2))

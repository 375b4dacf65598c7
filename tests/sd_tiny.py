"""Tiny Stable Diffusion / SDXL components built from configs (no download), shared by the latent
pipeline tests: a CLIP tokenizer written from a small vocabulary, tiny CLIP text models, a tiny
AutoencoderKL and UNet2DConditionModel, saved as diffusers pipeline folders (safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
import torch

WORDS = ("a", "cat", "dog", "red", "blue", "photo", "of", "the", "sky", "on", "grass", "blurry", "dark")
MAX_LENGTH = 77
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
}


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (what CLIP's BPE works on)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tokenizer(folder: Path) -> Path:
    """A CLIPTokenizer folder: every byte char (alone and word-final), merges for :data:`WORDS`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for c in _byte_chars():
        vocab.setdefault(c, len(vocab))
    for c in _byte_chars():
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab.setdefault(pieces[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n", encoding="utf-8")
    tok = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH
    )
    tok.save_pretrained(folder)
    return folder


def tokenizer(folder: Path) -> Any:
    return transformers.CLIPTokenizer.from_pretrained(write_tokenizer(folder))


def clip(tok: Any, *, projection: bool = False, seed: int = 0, hidden: int = 32) -> Any:
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(config).eval()


def vae(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=32,
    ).eval()


def unet(*, in_channels: int = 4, cross: int = 32, sdxl: bool = False, time_ids: int = 6, seed: int = 0) -> Any:
    """A tiny UNet2DConditionModel; ``sdxl``: with SDXL's added conditions (``time_ids`` of them:
    6 for the base model, 5 for a refiner)."""
    torch.manual_seed(seed)
    extra: dict[str, Any] = {}
    if sdxl:
        extra = {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 8 * time_ids + 32,
            "use_linear_projection": True,
        }
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross,
        attention_head_dim=(2, 4),
        norm_num_groups=32,
        **extra,
    ).eval()


def scheduler(name: str) -> Any:
    cls, options = SCHEDULERS[name]
    return getattr(diffusers, cls)(**SD_SCHEDULER, **options)


def sd_pipeline(root: Path, *, inpaint: bool = False, sched: str = "ddim") -> Any:
    """A tiny StableDiffusionPipeline (9-channel inpainting UNet with ``inpaint``), not yet saved."""
    tok = tokenizer(root / "_tok")
    return diffusers.StableDiffusionPipeline(
        vae=vae(),
        text_encoder=clip(tok),
        tokenizer=tok,
        unet=unet(in_channels=9 if inpaint else 4),
        scheduler=scheduler(sched),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(root: Path, *, sched: str = "euler") -> Any:
    tok = tokenizer(root / "_tok")
    return diffusers.StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=clip(tok, seed=1),
        text_encoder_2=clip(tok, projection=True, seed=2),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet(cross=64, sdxl=True),
        scheduler=scheduler(sched),
    )


def sdxl_refiner(root: Path, *, sched: str = "euler") -> Any:
    """A tiny SDXL refiner: only the projection text encoder, aesthetic-score time ids."""
    tok = tokenizer(root / "_tok")
    return diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae(),
        text_encoder=None,
        text_encoder_2=clip(tok, projection=True, seed=2),
        tokenizer=None,
        tokenizer_2=tok,
        unet=unet(cross=32, sdxl=True, time_ids=5),
        scheduler=scheduler(sched),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def save(pipe: Any, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def images(n: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth test images (n, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


def center_mask(n: int = 1, size: int = 32) -> torch.Tensor:
    mask = torch.zeros(n, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return mask


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())

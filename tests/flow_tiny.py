"""Tiny SD3 and Flux pipelines built from configs, with no download: random-weight transformers,
CLIP and T5 text encoders, tokenizers written from a small vocabulary, and an AutoencoderKL.

``sd3_components()`` / ``flux_components()`` give the keyword arguments of diffusers'
StableDiffusion3Pipeline / FluxPipeline (and their Img2Img / Inpaint variants, which take the same
components); ``save_pipeline`` writes one as a diffusers folder (safetensors).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

# tokens every tiny vocabulary holds: letters, so any lower-case ASCII prompt tokenizes
LETTERS = string.ascii_lowercase
IMAGE_SIZE = 32  # pixels; the VAE halves it, so latents are 16 x 16


def clip_tokenizer() -> Any:
    """A byte-level BPE CLIPTokenizer over single letters (and their word-final forms), no merges."""
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"]
    words = [*LETTERS, *(f"{c}</w>" for c in LETTERS)]
    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer over single letters and a few whole words, without extra ids."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in ("a", "cat", "dog", "photo", "of", "blurry", "red")]
    pieces += [(c, -3.0) for c in LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def clip_encoder(seed: int, *, projection: bool = True) -> Any:
    """A random CLIPTextModelWithProjection (SD3) or CLIPTextModel (Flux, ``projection=False``)
    for :func:`clip_tokenizer`'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=2 + 2 * len(LETTERS),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=32,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def t5_encoder(seed: int, d_model: int = 32) -> Any:
    """A random T5EncoderModel for :func:`t5_tokenizer`'s vocabulary."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(t5_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def autoencoder(seed: int, latent_channels: int) -> Any:
    """A random AutoencoderKL with a scale factor of 2, SD3/Flux-style scaling and shift factors."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=IMAGE_SIZE,
        scaling_factor=1.5035,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def flow_scheduler(**config: Any) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


def sd3_components(seed: int = 0, *, shift: float = 3.0) -> dict[str, Any]:
    """StableDiffusion3Pipeline's components: CLIP-L (32) + CLIP-G (32) padded to T5's 64, pooled 64."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
    ).eval()
    return {
        "transformer": transformer,
        "scheduler": flow_scheduler(shift=shift),
        "vae": autoencoder(seed + 1, 4),
        "text_encoder": clip_encoder(seed + 2),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": clip_encoder(seed + 3),
        "tokenizer_2": clip_tokenizer(),
        "text_encoder_3": t5_encoder(seed + 4, d_model=64),
        "tokenizer_3": t5_tokenizer(),
    }


def flux_components(seed: int = 0, *, guidance_embeds: bool = True) -> dict[str, Any]:
    """FluxPipeline's components: CLIP-L pooled (32), T5 tokens (32), a dynamic-shift scheduler."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    ).eval()
    scheduler = flow_scheduler(
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=16, max_image_seq_len=256, max_shift=1.15
    )
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": autoencoder(seed + 1, 4),
        "text_encoder": clip_encoder(seed + 2, projection=False),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": t5_encoder(seed + 3),
        "tokenizer_2": t5_tokenizer(),
    }


def save_pipeline(pipe: Any, folder: Path) -> Path:
    """``pipe.save_pretrained(folder)`` with safetensors weights; returns the folder."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder

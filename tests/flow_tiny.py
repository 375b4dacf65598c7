"""Tiny SD3 and Flux pipelines built from configs, with no download: random-weight transformers,
a T5 encoder with a Unigram tokenizer written from a small vocabulary, an AutoencoderKL with a
shift factor, and tests/sd_tiny.py's CLIP tokenizer and text models.

``sd3_components(root)`` / ``flux_components(root)`` give the keyword arguments of diffusers'
StableDiffusion3Pipeline / FluxPipeline (their Img2Img / Inpaint variants take the same components).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sd_tiny
import torch

# the T5 vocabulary holds every letter, so any lower-case ASCII prompt tokenizes
LETTERS = string.ascii_lowercase
IMAGE_SIZE = 32  # pixels; the VAE halves it, so latents are 16 x 16
LATENT_CHANNELS = 16  # as SD3's and Flux's VAEs (diffusers' SD3 inpainting needs 16)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside (tiny models run fastest so, and the cores are shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def t5_tokenizer() -> Any:
    """A Unigram T5 tokenizer over single letters and a few whole words, without extra ids."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -1.0) for w in ("a", "cat", "dog", "photo", "of", "blurry", "red")]
    pieces += [(c, -3.0) for c in LETTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


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


def sd3_components(root: Path, seed: int = 0, *, shift: float = 3.0, inpainting: bool = False) -> dict[str, Any]:
    """StableDiffusion3Pipeline's components: CLIP-L (32) + CLIP-G (32) padded to T5's 64, pooled 64;
    ``inpainting``: a transformer taking the mask and masked-image latents too (2 C + 1 channels)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=IMAGE_SIZE // 2,
        patch_size=2,
        in_channels=2 * LATENT_CHANNELS + 1 if inpainting else LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
    ).eval()
    tok = sd_tiny.tokenizer(root / "_tok")
    return {
        "transformer": transformer,
        "scheduler": flow_scheduler(shift=shift),
        "vae": autoencoder(seed + 1, LATENT_CHANNELS),
        "text_encoder": sd_tiny.clip(tok, projection=True, seed=seed + 2),
        "tokenizer": tok,
        "text_encoder_2": sd_tiny.clip(tok, projection=True, seed=seed + 3),
        "tokenizer_2": tok,
        "text_encoder_3": t5_encoder(seed + 4, d_model=64),
        "tokenizer_3": t5_tokenizer(),
    }


def flux_components(root: Path, seed: int = 0, *, guidance_embeds: bool = True) -> dict[str, Any]:
    """FluxPipeline's components: CLIP-L pooled (32), T5 tokens (32), a dynamic-shift scheduler."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
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
        shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096, max_shift=1.15
    )
    tok = sd_tiny.tokenizer(root / "_tok")
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": autoencoder(seed + 1, LATENT_CHANNELS),
        "text_encoder": sd_tiny.clip(tok, seed=seed + 2),
        "tokenizer": tok,
        "text_encoder_2": t5_encoder(seed + 3),
        "tokenizer_2": t5_tokenizer(),
    }

"""diffusers ``AutoencoderKL`` as a diffcore autoencoder: images in [-1, 1] <-> scaled latents.

Latents are what a latent diffusion model samples: ``(z - shift_factor) * scaling_factor`` of the
VAE's posterior ``z`` (Rombach et al. 2022, Sec. 4.3; SD3/Flux add the shift), and
:meth:`decode` undoes that before the VAE decoder. Large latents decode in overlapping tiles
(diffusers' ``tiled_decode``, blended at the seams) so memory stays bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffcore.interop.components import safetensors_only
from diffcore.interop.errors import DiffusersInteropError
from diffcore.interop.scheduler_config import read_config

__all__ = ["Autoencoder"]


class Autoencoder(nn.Module):
    """An ``AutoencoderKL`` with its ``scaling_factor`` / ``shift_factor`` applied.

    ``tile_size``: decode latents larger than this many latent pixels (either side) in tiles
    (None: the VAE's ``sample_size`` over its downsampling factor; 0 disables tiling).
    """

    name = "autoencoder_kl"

    def __init__(self, vae: nn.Module, *, tile_size: int | None = None) -> None:
        super().__init__()
        if type(vae).__name__ != "AutoencoderKL" or not hasattr(vae, "config"):
            raise TypeError(f"expected a diffusers AutoencoderKL, got {type(vae).__name__}")
        self.vae: Any = vae
        config: Any = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.get("shift_factor") or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        if tile_size is not None and (isinstance(tile_size, bool) or tile_size < 0):
            raise ValueError(f"tile_size={tile_size!r} must be a number of latent pixels >= 0 (0: no tiling)")
        self.tile_size = tile_size

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None) -> Autoencoder:
        """Load a ``vae/`` folder (config.json + safetensors); pickle weights are refused."""
        from diffcore.interop.diffusers import import_diffusers

        folder = Path(path)
        safetensors_only(folder)
        if torch_dtype == torch.float16 and read_config(folder, "config.json").get("force_upcast", False):
            torch_dtype = torch.float32  # an fp16 VAE that overflows (SDXL's): diffusers upcasts it too
        try:
            vae = import_diffusers().AutoencoderKL.from_pretrained(
                folder, torch_dtype=torch_dtype, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
            )
        except (OSError, ValueError, TypeError) as exc:
            raise DiffusersInteropError(f"{folder}: not a loadable AutoencoderKL: {exc}") from exc
        return cls(vae.eval())

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None, *, sample: bool = True) -> Tensor:
        """Scaled latents (B, latent_channels, H/f, W/f) of ``images`` (B, C, H, W) in [-1, 1]:
        a draw from the posterior with ``generator`` (diffusers' ``latent_dist.sample``), or its
        mean with ``sample=False``."""
        if not isinstance(images, Tensor) or images.dim() != 4:
            raise ValueError(f"images must be a (B, C, H, W) tensor, got {getattr(images, 'shape', images)!r}")
        f = self.downsample
        if images.shape[-1] % f or images.shape[-2] % f:
            raise ValueError(f"image size {tuple(images.shape[-2:])} must be a multiple of {f}")
        posterior = self.vae.encode(images.to(self.dtype)).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Images (B, C, H*f, W*f), about [-1, 1], of scaled ``latents``; tiled when large."""
        z = latents.to(self.dtype) / self.scaling_factor + self.shift_factor
        limit = self.tile_size if self.tile_size is not None else int(getattr(self.vae, "tile_latent_min_size", 0))
        if limit and max(z.shape[-2:]) > limit:
            return self._tiled(z, limit)
        return self.vae.decode(z, return_dict=False)[0]

    def _tiled(self, z: Tensor, limit: int) -> Tensor:
        """diffusers' blended tiled decode with tiles of ``limit`` latent pixels."""
        vae: Any = self.vae
        saved = vae.tile_latent_min_size, vae.tile_sample_min_size
        vae.tile_latent_min_size, vae.tile_sample_min_size = limit, limit * self.downsample
        try:
            return vae.tiled_decode(z, return_dict=False)[0]
        finally:
            vae.tile_latent_min_size, vae.tile_sample_min_size = saved

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction ``decode(encode(images))`` (posterior mean)."""
        return self.decode(self.encode(images, sample=False))


def load_autoencoder(path: str | Path, *, torch_dtype: torch.dtype | None = None) -> Autoencoder:
    """The registered factory: :meth:`Autoencoder.from_pretrained`."""
    return Autoencoder.from_pretrained(path, torch_dtype=torch_dtype)

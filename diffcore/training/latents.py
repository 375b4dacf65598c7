"""Latent training (Rombach et al. 2022, Sec. 3): a diffusion model trained on the scaled latents of
a frozen autoencoder instead of pixels.

:func:`latent_dataset` encodes an image dataset once with a diffusers ``AutoencoderKL`` folder
(:class:`diffcore.interop.components.autoencoder.Autoencoder`: the posterior mean, with the VAE's
``scaling_factor`` / ``shift_factor`` applied) and caches the latents in the run folder
(``latents.safetensors``, keyed by the images and the autoencoder's files), so a resumed or
repeated run does not encode again. The run records the autoencoder (``run["autoencoder"]``) and
:meth:`diffcore.Pipeline.generate` of such a run decodes its samples back to images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcore.data.base import DiffusionDataset

__all__ = ["CACHE_NAME", "autoencoder_record", "latent_dataset", "load_autoencoder"]

CACHE_NAME = "latents.safetensors"


def load_autoencoder(path: str | Path) -> Any:
    """The autoencoder of folder ``path`` (a diffusers ``AutoencoderKL`` ``vae/`` folder), eval mode."""
    from diffcore.interop.components.autoencoder import Autoencoder

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"autoencoder={str(path)!r}: expected an AutoencoderKL folder with a config.json")
    return Autoencoder.from_pretrained(folder).eval()


def autoencoder_record(path: str | Path, autoencoder: Any, image_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a run stores about its autoencoder: where it is, its latent scaling and the image shape."""
    return {
        "path": str(Path(path).resolve()),
        "scaling_factor": autoencoder.scaling_factor,
        "shift_factor": autoencoder.shift_factor,
        "image_shape": list(image_shape),
    }


def _key(data: DiffusionDataset, folder: Path) -> str:
    """A digest of the images and of the autoencoder's config and weight files (size, mtime)."""
    h = hashlib.sha256()
    for split in (data.train, data.test):
        h.update(str(tuple(split.shape)).encode())
        h.update(split.contiguous().numpy().tobytes())
    for file in sorted(folder.iterdir()):
        if file.is_file():
            st = file.stat()
            h.update(f"{file.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update((folder / "config.json").read_bytes())
    return h.hexdigest()


@torch.no_grad()
def _encode(autoencoder: Any, images: Tensor, batch_size: int) -> Tensor:
    if images.shape[0] == 0:
        return images.new_zeros(0, 0, 0, 0)
    parts = [
        autoencoder.encode(images[i : i + batch_size], sample=False).float() for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts).contiguous()


def latent_dataset(
    data: DiffusionDataset, autoencoder: str | Path, cache_dir: str | Path | None, *, batch_size: int = 16
) -> tuple[DiffusionDataset, dict[str, Any]]:
    """``data`` with its images replaced by their scaled latents, and the run's autoencoder record.

    ``cache_dir``: where ``latents.safetensors`` is kept (the run folder; None: no cache). The
    images must be 3-channel if the VAE takes 3 (grayscale is repeated), with sides divisible by
    the VAE's downsampling factor."""
    from safetensors.torch import load_file, save_file

    if data.kind != "image":
        raise ValueError(f"dataset {data.name!r} is {data.kind}: latent training needs images")
    folder = Path(autoencoder)
    vae = load_autoencoder(folder)
    want = int(vae.vae.config.in_channels)
    train, test = data.train, data.test
    if train.shape[1] != want:
        if train.shape[1] != 1:
            raise ValueError(f"dataset {data.name!r} has {train.shape[1]} channels; the autoencoder takes {want}")
        train, test = train.repeat(1, want, 1, 1), test.repeat(1, want, 1, 1)
    key = _key(data, folder)
    cache = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    latents: dict[str, Tensor] | None = None
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            if (f.metadata() or {}).get("key") == key:
                latents = load_file(str(cache))
    if latents is None:
        latents = {"train": _encode(vae, train, batch_size), "test": _encode(vae, test, batch_size)}
        if latents["test"].numel() == 0:
            latents["test"] = latents["train"][:0].clone()
        if cache is not None:
            from diffcore.io.files import temporary_path

            cache.parent.mkdir(parents=True, exist_ok=True)
            with temporary_path(cache) as tmp:
                save_file(latents, str(tmp), metadata={"key": key, "autoencoder": str(folder.resolve())})
    c, h, w = latents["train"].shape[1:]
    meta = {**data.meta, "channels": int(c), "height": int(h), "width": int(w), "latent": True}
    json.dumps(meta)
    out = replace(data, train=latents["train"], test=latents["test"], meta=meta)
    return out, autoencoder_record(folder, vae, tuple(data.shape))

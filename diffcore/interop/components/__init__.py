"""The components of a diffusers pipeline folder (``vae/``, ``text_encoder/``, ``tokenizer/``,
``unet/``, ...) loaded from local files into diffcore wrappers.

:data:`COMPONENT_LOADERS` maps the class name that ``model_index.json`` gives a component
(``["diffusers", "AutoencoderKL"]``) to ``loader(folder, torch_dtype) -> object``; pipeline
families add their model classes to it. Weights load from safetensors only
(:func:`safetensors_only` refuses a folder holding only pickle files), and nothing is downloaded
(``local_files_only=True``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffcore.interop.errors import DiffusersInteropError

__all__ = ["COMPONENT_LOADERS", "load_component", "safetensors_only"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
Loader = Callable[[Path, "torch.dtype | None"], Any]


def safetensors_only(folder: Path) -> None:
    """Raise :class:`DiffusersInteropError` unless ``folder`` holds safetensors weights; a folder
    with only pickle weights is refused unread (unpickling can run arbitrary code)."""
    if not folder.is_dir():
        raise DiffusersInteropError(f"{folder} is not a folder (expected a diffusers component folder)")
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise DiffusersInteropError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); diffcore loads safetensors only, since "
            "unpickling can run arbitrary code. Convert it once where you trust the file: "
            "from_pretrained(dir).save_pretrained(dir, safe_serialization=True)"
        )
    raise DiffusersInteropError(f"{folder} has no .safetensors weights")


def _autoencoder(folder: Path, torch_dtype: torch.dtype | None) -> Any:
    from diffcore.plugins import get

    return get("autoencoders", "autoencoder_kl")(folder, torch_dtype=torch_dtype)


def _text_model(folder: Path, torch_dtype: torch.dtype | None) -> Any:
    from diffcore.interop.components.text_encoders import load_text_model

    return load_text_model(folder, torch_dtype=torch_dtype)


def _tokenizer(class_name: str) -> Loader:
    def load(folder: Path, torch_dtype: torch.dtype | None) -> Any:
        from diffcore.interop.components.text_encoders import load_tokenizer

        return load_tokenizer(folder, class_name)

    return load


def _unet(folder: Path, torch_dtype: torch.dtype | None) -> Any:
    from diffcore.interop.components.unet_condition import ConditionUNet

    return ConditionUNet.from_pretrained(folder, torch_dtype=torch_dtype)


COMPONENT_LOADERS: dict[str, Loader] = {
    "AutoencoderKL": _autoencoder,
    "CLIPTextModel": _text_model,
    "CLIPTextModelWithProjection": _text_model,
    "T5EncoderModel": _text_model,
    **{name: _tokenizer(name) for name in ("CLIPTokenizer", "CLIPTokenizerFast", "T5Tokenizer", "T5TokenizerFast")},
    "UNet2DConditionModel": _unet,
}


def load_component(root: Path, name: str, class_name: str, torch_dtype: torch.dtype | None = None) -> Any:
    """Component ``name`` of the pipeline folder ``root``, of diffusers/transformers class ``class_name``."""
    loader = COMPONENT_LOADERS.get(class_name)
    if loader is None:
        raise DiffusersInteropError(
            f"{root}: component {name!r} is a {class_name}, which diffcore does not load "
            f"(known: {', '.join(sorted(COMPONENT_LOADERS))})"
        )
    folder = root / name
    if not folder.is_dir():
        raise DiffusersInteropError(f"{root}/model_index.json names component {name!r}, but {folder} is missing")
    return loader(folder, torch_dtype)

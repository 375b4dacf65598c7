"""Safe, atomic checkpoint files: safetensors tensors + JSON metadata, never pickle.

A checkpoint is ONE ``.safetensors`` file whose header metadata holds a JSON document (key
``"diffcore"``). It is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one (``os.replace`` is atomic on POSIX and Windows), so a process killed at
any moment leaves the previous checkpoint intact. Loading goes through the safetensors parser
only: a pickle file (``torch.save`` output) is refused before anything in it is executed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

META_KEY = "diffcore"
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ opcode; torch.save's zip container


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a safetensors file, truncated or inconsistent."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies are made) and JSON ``meta`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(cpu, tmp, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _sniff(path: Path) -> None:
    """Refuse pickle files before any parser reads them.

    A safetensors file starts with its header length (u64, little endian) followed by the JSON
    header, so byte 8 is ``{``; a pickle starts with PROTO (0x80, protocol 2-5) and a torch.save
    file is a zip archive. The header-length bytes may be anything, 0x80 included, so the
    safetensors layout is checked first.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise CheckpointError(f"{path} is truncated ({len(head)} bytes): not a safetensors checkpoint")
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return
    if head[:4] == _PICKLE_MAGIC[1] or (head[:1] == _PICKLE_MAGIC[0] and head[1] in (2, 3, 4, 5)):
        raise CheckpointError(
            f"{path} is a pickle / torch.save file; diffcore only loads safetensors checkpoints "
            "(pickle can run arbitrary code, so it is refused without being read)"
        )


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    _sniff(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file (corrupt or truncated): {exc}") from exc
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without diffcore metadata")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: its diffcore metadata is not valid JSON: {exc}") from exc


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint; never unpickles. Raises :class:`CheckpointError`."""
    path = Path(path)
    meta = read_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file (corrupt or truncated): {exc}") from exc
    return tensors, meta

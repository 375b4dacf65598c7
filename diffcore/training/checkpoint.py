"""Safe, atomic checkpoint files: safetensors tensors + JSON metadata, never pickle.

A checkpoint is ONE ``.safetensors`` file whose header metadata holds a JSON document (key
``"diffcore"``). It is written to a temporary file in the same folder, flushed and fsynced, then
renamed over the old one (``os.replace`` is atomic on POSIX and Windows), so a process killed at
any moment leaves the previous checkpoint intact; the temporary's name ends in
:data:`TEMP_SUFFIX` and carries the writer's pid, so :func:`remove_stale_temporaries` finds those
of dead writers. Files get mode 0666 minus the umask, as ``open()`` gives.

Loading reads the file through one descriptor (a concurrent ``os.replace`` cannot mix two
versions), checks the header and metadata before reading any weight
(:mod:`diffcore.training.checkpoint_checks`), and goes through the safetensors parser only: a
pickle file (``torch.save`` output) is refused before anything in it is executed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import Tensor

from diffcore.io.files import TEMP_SUFFIX, atomic_write_bytes, remove_stale_temporaries, temporary_path
from diffcore.training.checkpoint_checks import CheckpointError, check_header, check_meta, check_values, parse_meta

__all__ = [
    "META_KEY",
    "TEMP_SUFFIX",
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_checkpoint",
    "read_meta",
    "remove_stale_temporaries",
    "save_checkpoint",
    "temporary_path",
]

META_KEY = "diffcore"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+ opcode; torch.save's zip container


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Atomically write ``tensors`` (contiguous CPU copies are made) and JSON ``meta`` to ``path``."""
    path = Path(path)
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with temporary_path(path) as tmp:
        save_file(cpu, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    return path


def _sniff(head: bytes, size: int, path: Path) -> None:
    """Refuse pickle files before any parser reads them.

    A safetensors file starts with its header length (u64, little endian) followed by the JSON
    header, so byte 8 is ``{``; a pickle starts with PROTO (0x80, protocol 2-5) and a torch.save
    file is a zip archive. The header-length bytes may be anything, 0x80 included, so the
    safetensors layout is checked first.
    """
    if len(head) < 9:
        raise CheckpointError(f"{path} is truncated ({len(head)} bytes): not a safetensors checkpoint")
    if head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return
    if head[:4] == _PICKLE_MAGIC[1] or (head[:1] == _PICKLE_MAGIC[0] and head[1] in (2, 3, 4, 5)):
        raise CheckpointError(
            f"{path} is a pickle / torch.save file; diffcore only loads safetensors checkpoints "
            "(pickle can run arbitrary code, so it is refused without being read)"
        )


def _read(path: Path, *, data: bool) -> tuple[dict[str, Any], bytes | None]:
    """``(meta, whole file or None)``, read through ONE file descriptor (a checkpoint replaced
    meanwhile by ``os.replace`` is read whole, old or new) after the header and metadata pass the
    checks of :mod:`diffcore.training.checkpoint_checks`."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist")
    corrupt = f"{path} is not a valid safetensors file (corrupt or truncated)"
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(9)
            _sniff(head, size, path)
            n = int.from_bytes(head[:8], "little")
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise CheckpointError(f"{corrupt}: a header of {n} bytes in a file of {size}")
            f.seek(8)
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise CheckpointError(f"{corrupt}: its header is not JSON ({exc})") from exc
            check_header(header, size - 8 - n, path)
            raw = header.get("__metadata__", {}).get(META_KEY)
            if raw is None:
                raise CheckpointError(f"{path} is a safetensors file without diffcore metadata")
            meta = parse_meta(raw, path)
            check_meta(meta, header, path)
            if not data:
                return meta, None
            f.seek(0)
            blob = f.read()
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    if len(blob) != size:
        raise CheckpointError(f"{corrupt}: it changed size while being read ({size} -> {len(blob)} bytes)")
    return meta, blob


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a checkpoint (checked), without loading its tensors."""
    return _read(Path(path), data=False)[0]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of a checkpoint; never unpickles. Raises :class:`CheckpointError`
    naming the key or tensor when the header, the metadata or a weight is malformed (see
    :mod:`diffcore.training.checkpoint_checks`)."""
    path = Path(path)
    meta, blob = _read(path, data=True)
    try:
        tensors = load_bytes(blob)  # type: ignore[arg-type]
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file (corrupt or truncated): {exc}") from exc
    check_values(tensors, path)
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta

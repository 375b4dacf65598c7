"""Which torch device to run on: ``auto`` (CUDA, then Apple MPS, then CPU), ``cpu``, ``cuda``,
``cuda:N`` or ``mps``, checked against what this machine has.

:func:`resolve_device` is what ``diffcore.train(device=...)`` and the CLI's ``--device`` use; it
raises ValueError naming the device and what is available instead of letting torch fail later
(``meta``, a missing GPU, a GPU index past the last one).
"""

from __future__ import annotations

import re

import torch

__all__ = ["DEVICE_CHOICES", "available_devices", "resolve_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The devices this machine can run on, best first (e.g. ``["cuda:0", "cuda:1", "cpu"]``)."""
    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name`` (see the module docstring); ``None`` means ``auto``.

    ``auto`` gives the current CUDA device (``cuda:LOCAL_RANK`` under torchrun once the rank has
    called ``torch.cuda.set_device``), else ``mps``, else ``cpu``. ``cuda`` is the current CUDA
    device, ``cuda:N`` the N-th. Raises ValueError for any other name and for a device this
    machine does not have."""
    if name is None:
        name = "auto"
    text = str(name).strip().lower() if isinstance(name, (str, torch.device)) else None
    if text is None:
        raise ValueError(f"device={name!r}: expected a device name, one of {', '.join(DEVICE_CHOICES)}")
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if _mps_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text in ("mps", "mps:0"):
        if not _mps_available():
            raise ValueError(f"device {text!r}: Apple MPS is not available here; available: {_listed()}")
        return torch.device("mps")
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ValueError(f"device {str(name)!r} is not supported; expected one of {', '.join(DEVICE_CHOICES)}")
    if not torch.cuda.is_available():
        why = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise ValueError(f"device {text!r}: CUDA is not available ({why}); available: {_listed()}")
    index = torch.cuda.current_device() if match.group(1) is None else int(match.group(1))
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def _listed() -> str:
    return ", ".join(["auto", *available_devices()])

"""The per-call setup cache of :func:`diffcore.sample`: plans, coefficient programs and run tables.

A 20-step call spends most of its host time before the first model call: placing the levels
(the plan), authoring the sampler's float64 coefficient program, converting it to one device
table. These depend only on the schedule, step count, spacing, sampler and its options, the
parameterization and the batch layout, so :func:`diffcore.sample` keeps them in three
least-recently-used caches of :data:`MAXSIZE` entries each.

Keys are built from values, never from object identity alone: a schedule's key holds its scalar
fields and a hash of the bytes of each of its tensors (computed on every call, a few
microseconds), so a schedule mutated in place, or rebuilt with another option, never hits a
stale entry, while two equal schedules share one. Sampler options are keyed with their types
(``order=2`` and ``order=2.0`` are different keys). A value that cannot be keyed (an unhashable
option, an unknown schedule type) turns the cache off for that call: it is computed as before.
Cached plans and programs are shared by later calls and must not be modified; programs' rows are
made read-only numpy arrays. A run's tables include the (B,) time tensors the model receives; a
run whose model writes into them drops its entry (the tensors' version counter is read after the
loop), so the next call makes them anew.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

MAXSIZE = 64
T = TypeVar("T")
_MISSING = object()


class LRUCache:
    """A thread-safe mapping of at most ``maxsize`` entries; the least recently used one goes first."""

    def __init__(self, name: str, maxsize: int = MAXSIZE) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize={maxsize} must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._data: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable | None, make: Callable[[], T]) -> T:
        """The value of ``key``, made with ``make()`` and kept on a miss; ``key`` None: just ``make()``."""
        if key is None:
            return make()
        with self._lock:
            found = self._data.get(key, _MISSING)  # one lookup: keys compare in Python (Key.__eq__)
            if found is not _MISSING:
                self._data.move_to_end(key)
                self.hits += 1
                return found
        value = make()  # outside the lock: making may take milliseconds (and may raise)
        with self._lock:
            self.misses += 1
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
        return value

    def discard(self, key: Hashable) -> None:
        """Forget ``key`` (e.g. an entry whose shared tensors were written to)."""
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits = self.misses = 0

    def info(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "size": len(self._data), "maxsize": self.maxsize}


plans = LRUCache("plans")
programs = LRUCache("programs")
runs = LRUCache("runs")
CACHES = (plans, programs, runs)


def cache_info() -> dict[str, dict[str, int]]:
    """Hits, misses and size of each cache (``plans``, ``programs``, ``runs``)."""
    return {c.name: c.info() for c in CACHES}


def clear_cache() -> None:
    """Empty every setup cache (and reset its counters)."""
    for c in CACHES:
        c.clear()


class Key:
    """A cache key with its hash computed once: keys nest (a program's key holds its plan's, which
    holds its schedule's), and a plain tuple would be hashed through every level on every lookup."""

    __slots__ = ("parts", "_hash")

    def __init__(self, *parts: Hashable) -> None:
        self.parts = parts
        self._hash = hash(parts)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Key) and self._hash == other._hash and self.parts == other.parts)

    def __repr__(self) -> str:
        return f"Key{self.parts!r}"


class _Unkeyable(Exception):
    """A value that cannot be part of a cache key."""


def tensor_key(t: Tensor) -> tuple[Any, ...]:
    """Dtype, shape, device and a hash of the contents of ``t`` (read on the host)."""
    data = t.detach()
    if data.device.type != "cpu":
        data = data.cpu()
    raw = data.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b""
    return ("tensor", str(t.dtype), tuple(t.shape), str(t.device), hash(raw))


def _freeze(value: Any) -> Hashable:
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return (type(value).__name__, value)
    if isinstance(value, Tensor):
        return tensor_key(value)
    if isinstance(value, np.ndarray):
        return tensor_key(torch.from_numpy(np.ascontiguousarray(value)))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        items = sorted(((type(k).__name__, str(k)), _freeze(v)) for k, v in value.items())
        return ("dict", tuple(items))
    raise _Unkeyable(type(value).__name__)


def freeze(value: Any) -> Hashable | None:
    """A hashable key of ``value`` (numbers with their type, containers, tensors by content), or
    None when some part of it cannot be keyed."""
    try:
        return _freeze(value)
    except _Unkeyable:
        return None


def object_key(obj: Any) -> Hashable | None:
    """The key of a dataclass-like object (a schedule): its type and every attribute by value,
    tensors by content; None when an attribute cannot be keyed."""
    attrs = getattr(obj, "__dict__", None)
    if attrs is None:
        return None
    frozen = freeze(attrs)
    return None if frozen is None else Key(type(obj).__module__, type(obj).__qualname__, frozen)


def parameterization_key(param: Any) -> Hashable | None:
    """A parameterization by value (frozen dataclasses hash their fields), or None if unhashable."""
    try:
        hash(param)
    except TypeError:
        return None
    return (type(param), param)


_KEY_ATTR = "_diffcore_cache_key"


def tag(obj: T, key: Hashable) -> T:
    """Mark ``obj`` (a cached plan or program, shared from now on) with the key it is cached under;
    an attribute, not a dataclass field, so ``dataclasses.replace`` copies do not inherit it."""
    object.__setattr__(obj, _KEY_ATTR, key)
    return obj


def key_of(obj: Any) -> Hashable | None:
    """The key :func:`tag` gave ``obj``, or None for an object that did not come from a cache."""
    return getattr(obj, _KEY_ATTR, None)


def readonly(array: np.ndarray) -> np.ndarray:
    """``array`` marked read-only (it is shared by every later call that hits the cache)."""
    array.flags.writeable = False
    return array

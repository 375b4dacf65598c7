"""Whole-loop CUDA graphs of a sampling run (model + fused steps), captured once and replayed.

The loop is capturable because coefficient tables live on the device, history and noise are
preallocated or generated in-kernel from (seed, offset), and nothing in it reads values back to
the host. A model that cannot be captured (it syncs, or changes shapes) makes the capture fail;
the run then falls back to eager execution with one warning (and later identical calls run
eagerly without trying again).

**The graph cache.** A captured graph is kept in a bounded LRU :class:`GraphCache` (8 graphs,
``DIFFCORE_GRAPH_CACHE_SIZE`` or :func:`set_cache_size`; 0 turns caching off). A later
``cuda_graph=True`` call with the same model object, the same program (plan, parameterization,
coefficients and CFG++ factors), the same shape / stride / dtype / device of the state, the same
conditioning structure (tensor shapes and dtypes, plus every non-tensor value), the same guidance
(a :class:`~diffcore.guidance.Guidance`: method and settings) and backend, and, for a stochastic
sampler, the same ``seed``, replays it: the new state and conditioning tensors are copied into the
graph's static input buffers, the graph is replayed and its output copied into the caller's state.
Nothing is allocated per replay.

What a replay cannot see, by construction of CUDA graphs:

* **The seed of a stochastic sampler.** The fused ops take the Philox seed as a host scalar that
  the capture bakes into the kernel arguments: a new seed captures again, and the new graph
  replaces the one of the old seed (one graph per configuration, so a seed per call does not
  fill the cache). Pass a fixed ``seed=`` to reuse one (a deterministic sampler never depends
  on it).
* **Replaced tensors.** Weights updated in place (an optimizer step between calls) are seen,
  since their addresses do not change. A parameter or buffer *replaced* by a new tensor
  (``load_state_dict(assign=True)``, ``module.weight = nn.Parameter(...)``, a model that
  reallocates a cached tensor it reads) is not: call :func:`clear_cache` after such a change.
* **Python-side effects of the model**: it runs once, at capture time.

Graphs hold no reference to the model: entries of a model are dropped once it is garbage
collected. Replays of one graph from several streams at once are not supported.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffcore import ops
from diffcore.denoiser import NonFiniteModelOutput

CACHE_SIZE_ENV = "DIFFCORE_GRAPH_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 8

Loop = Callable[[Tensor], None]


@dataclass(eq=False)
class Captured:
    """A captured sampling loop: ``replay()`` runs it on its static buffers.

    ``inputs[0]`` is the state (read at the start and updated in place, so it is also the output),
    then the conditioning tensors in :func:`tensor_leaves` order. ``flags`` holds, per model
    evaluation, whether its output was finite (steps ``flag_steps``); ``keep`` the tensors the
    graph reads that were allocated outside its memory pool (they must outlive it).
    """

    replay: Callable[[], None]
    inputs: tuple[Tensor, ...]
    flags: Tensor | None = None
    flag_steps: tuple[int, ...] = ()
    keep: tuple[Any, ...] = ()


@dataclass(eq=False)
class CaptureFailed:
    """A loop whose capture failed: identical later calls run eagerly without trying again."""

    reason: str


CaptureFn = Callable[[Loop, tuple[Tensor, ...], Any, tuple[Any, ...]], Captured]


def capture_cuda(loop: Loop, inputs: tuple[Tensor, ...], denoiser: Any, keep: tuple[Any, ...]) -> Captured:
    """Warm ``loop`` up on a side stream, then capture ``loop(inputs[0])`` in a CUDA graph."""
    x = inputs[0]
    side = torch.cuda.Stream(device=x.device)
    side.wait_stream(torch.cuda.current_stream(x.device))
    with torch.cuda.stream(side):  # warm-up: lazy initialisation must not happen during capture
        loop(x.clone())
    torch.cuda.current_stream(x.device).wait_stream(side)
    denoiser.reset_deferred()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loop(x)
        deferred = denoiser.take_deferred()  # (step, finite) per model output, made inside the graph
        flags = torch.stack([ok for _, ok in deferred]) if deferred else None
    # the denoiser's constants were made during the warm-up, outside the graph's pool
    keep = (*keep, *denoiser.constants)
    return Captured(graph.replay, inputs, flags, tuple(s for s, _ in deferred), keep)


def _cache_size_from_env() -> int:
    raw = os.environ.get(CACHE_SIZE_ENV, str(DEFAULT_CACHE_SIZE))
    try:
        size = int(raw)
    except ValueError:
        raise ValueError(f"{CACHE_SIZE_ENV}={raw!r}: expected a non-negative integer") from None
    if size < 0:
        raise ValueError(f"{CACHE_SIZE_ENV}={raw!r}: expected a non-negative integer")
    return size


class GraphCache:
    """A bounded LRU of captured loops, keyed by :func:`graph_key`, with entries dropped when
    their model is garbage collected.

    Args:
        capacity: graphs kept (each holds its own memory pool); 0 keeps none. None: from
            ``DIFFCORE_GRAPH_CACHE_SIZE``, default 8.
        capture: ``capture(loop, static_inputs, denoiser, keep) -> Captured``; tests inject a fake.
        device_type: the device the state must be on.
    """

    def __init__(
        self, capacity: int | None = None, *, capture: CaptureFn = capture_cuda, device_type: str = "cuda"
    ) -> None:
        self.capture = capture
        self.device_type = device_type
        self._entries: OrderedDict[Hashable, tuple[Hashable, Captured | CaptureFailed]] = OrderedDict()
        self._owners: dict[int, weakref.ref[Any]] = {}
        self._dead: list[int] = []  # ids of collected owners, purged on the next operation
        self._lock = threading.Lock()
        self._capacity = 0
        self.capacity = _cache_size_from_env() if capacity is None else capacity
        self.hits = self.misses = self.captures = self.evictions = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"graph cache capacity={value!r} must be a non-negative integer")
        with self._lock:
            self._capacity = value
            self._trim()

    def __len__(self) -> int:
        with self._lock:
            self._purge()
            return len(self._entries)

    def info(self) -> dict[str, int]:
        """Counters since the last :meth:`clear`: hits, misses, captures, evictions, size, capacity."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "captures": self.captures,
            "evictions": self.evictions,
            "size": len(self),
            "capacity": self.capacity,
        }

    def clear(self) -> None:
        """Drop every graph (their memory pools are freed) and reset the counters."""
        with self._lock:
            self._entries.clear()
            self._owners.clear()
            self._dead.clear()
            self.hits = self.misses = self.captures = self.evictions = 0

    def lookup(self, key: Hashable, variant: Hashable = None) -> Captured | CaptureFailed | None:
        """The entry for ``key`` (now the most recently used) if it was stored with ``variant``,
        else None (a miss)."""
        with self._lock:
            self._purge()
            found = self._entries.get(key)
            if found is None or found[0] != variant:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[1]

    def store(self, key: Hashable, owner: Any, entry: Captured | CaptureFailed, variant: Hashable = None) -> None:
        """Keep ``entry`` under ``key``, replacing any other ``variant`` of it (a stochastic
        sampler's seed); ``key[0]`` is ``id(owner)``, and the entry goes when ``owner`` is
        collected. Evicts the least recently used entries beyond the capacity."""
        with self._lock:
            self._purge()
            if self._capacity == 0:
                return
            oid = id(owner)
            known = self._owners.get(oid)
            if known is None or known() is not owner:
                self._owners[oid] = weakref.ref(owner, functools.partial(self._collected, oid))
            self._entries[key] = (variant, entry)
            self._entries.move_to_end(key)
            self._trim()

    def last(self) -> Captured | CaptureFailed | None:
        """The most recently used entry (for benchmarks and debugging)."""
        with self._lock:
            self._purge()
            last = next(reversed(self._entries.values()), None)
            return None if last is None else last[1]

    def _trim(self) -> None:
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)
            self.evictions += 1

    def _collected(self, oid: int, _ref: object) -> None:
        """weakref callback: the owner ``oid`` is gone; its graphs go on the next operation."""
        self._dead.append(oid)

    def _purge(self) -> None:
        while self._dead:
            oid = self._dead.pop()
            ref = self._owners.get(oid)
            if ref is not None and ref() is None:
                del self._owners[oid]
                for key in [k for k in self._entries if k[0] == oid]:  # type: ignore[index]
                    del self._entries[key]


cache = GraphCache()


def clear_cache() -> None:
    """Drop every cached CUDA graph of ``cuda_graph=True`` sampling (e.g. after replacing weights)."""
    cache.clear()


def set_cache_size(size: int) -> None:
    """Keep at most ``size`` captured graphs (0: capture on every call, keep none)."""
    cache.capacity = size


def cache_info() -> dict[str, int]:
    """Hits, misses, captures and evictions of the graph cache, and its size and capacity."""
    return cache.info()


# --------------------------------------------------------------------------- keys


class Uncacheable(Exception):
    """A call whose inputs cannot be keyed: it is captured and replayed once, as without a cache."""


def _owner(model: Any) -> tuple[Any, int | None]:
    """The object whose lifetime bounds a graph, and the function id for a bound method."""
    if inspect.ismethod(model):  # a new bound-method object per attribute access: key on its parts
        return model.__self__, id(model.__func__)
    return model, None


def structure(tree: Any) -> Hashable:
    """A hashable description of conditioning: tensors by shape, stride, dtype and device, every
    other leaf (str, int, float, bool, None) by value; dicts, lists and tuples recursively."""
    if tree is None or isinstance(tree, (str, bytes, int, float, bool)):
        return (type(tree).__name__, tree)
    if isinstance(tree, Tensor):
        return ("T", tuple(tree.shape), tree.stride(), tree.dtype, tree.device)
    if type(tree) is dict:
        return ("dict", tuple((k, structure(v)) for k, v in tree.items()))
    if type(tree) in (list, tuple) or (isinstance(tree, tuple) and hasattr(tree, "_fields")):
        return (type(tree).__qualname__, tuple(structure(v) for v in tree))
    raise Uncacheable(f"conditioning of type {type(tree).__name__}")


def tensor_leaves(tree: Any) -> list[Tensor]:
    """The tensors of ``tree`` in :func:`structure` order."""
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensor_leaves(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in tensor_leaves(v)]
    return []


def replace_leaves(tree: Any, leaves: Iterator[Tensor]) -> Any:
    """``tree`` with its tensors taken in order from ``leaves``."""
    if isinstance(tree, Tensor):
        return next(leaves)
    if isinstance(tree, dict):
        return {k: replace_leaves(v, leaves) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(replace_leaves(v, leaves) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(replace_leaves(v, leaves) for v in tree)
    return tree


def _autocast(device_type: str) -> Hashable:
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # older torch
        return torch.is_autocast_enabled()


def graph_key(denoiser: Any, x: Tensor, program: Hashable, seed: int | None) -> tuple[Hashable, Any, Hashable]:
    """``(key, owner, variant)`` of a run of ``program`` (a hashable of the coefficients, model
    times, input scales and structure) on ``x``; the variant is ``(seed, sample_index)``, given
    only for a stochastic program (``seed`` None otherwise). Raises :class:`Uncacheable` when the
    model cannot be weak-referenced or the conditioning is opaque."""
    owner, func = _owner(denoiser.model)
    try:
        weakref.ref(owner)
    except TypeError:
        raise Uncacheable(f"model of type {type(owner).__name__} cannot be weak-referenced") from None
    key = (
        id(owner),
        func,
        getattr(owner, "training", None),
        program,
        tuple(x.shape),
        x.stride(),
        x.dtype,
        x.device,
        denoiser.timestep_dtype,
        denoiser.guidance,
        denoiser.check_finite,
        getattr(denoiser, "x0_limit", None),
        getattr(denoiser, "noise_mode", None),
        structure(denoiser.cond),
        structure(denoiser.uncond),
        ops.backend(x.device),
        torch.is_grad_enabled(),
        _autocast(x.device.type),
    )
    # the noise keys a stochastic capture bakes in: a new seed or first sample index captures again
    return key, owner, None if seed is None else (seed, getattr(denoiser, "sample_index", 0))


# --------------------------------------------------------------------------- running


def check_capturable(
    x: Tensor, *, stochastic: bool, seed: int | None, callback: Any, graph_cache: GraphCache | None = None
) -> None:
    """Raise unless a run on ``x`` can be captured: device, no callback, in-kernel noise."""
    device_type = (graph_cache if graph_cache is not None else cache).device_type
    if x.device.type != device_type:
        raise ValueError(f"cuda_graph=True needs {device_type.upper()} tensors, got x on {x.device}")
    if callback is not None:
        raise ValueError("cuda_graph=True cannot call a per-step callback; pass callback=None")
    if stochastic and seed is None:
        raise ValueError("cuda_graph=True with a stochastic sampler needs seed= (in-kernel Philox noise)")


def run_cached(
    denoiser: Any,
    x: Tensor,
    build: Callable[[], tuple[Loop, tuple[Any, ...]]],
    key_fn: Callable[[], tuple[Hashable, Any, Hashable]],
    *,
    graph_cache: GraphCache | None = None,
) -> Tensor:
    """Run the sampling loop on ``x`` (updated in place and returned) from a cached graph, or
    capture it first. ``build()`` makes the loop's buffers and returns ``(loop, keep)``, where
    ``loop(state)`` runs every step on ``state`` with ``denoiser``'s current conditioning and
    ``keep`` lists the tensors it reads; ``key_fn()`` returns :func:`graph_key`."""
    store = graph_cache if graph_cache is not None else cache
    leaves = [*tensor_leaves(denoiser.cond), *tensor_leaves(denoiser.uncond)]
    try:
        key, owner, variant = key_fn()
    except Uncacheable:
        key = owner = variant = None
    entry = store.lookup(key, variant) if key is not None and store.capacity else None
    if entry is None:
        static = (x.clone(), *(t.clone() for t in leaves))
        it = iter(static[1:])  # the graph reads the conditioning from static buffers
        denoiser.cond, denoiser.uncond = replace_leaves(denoiser.cond, it), replace_leaves(denoiser.uncond, it)
        loop, keep = build()
        try:
            entry = store.capture(loop, static, denoiser, keep)
            store.captures += 1
        except Exception as exc:  # noqa: BLE001 - a model that cannot be captured runs eagerly
            reason = f"{type(exc).__name__}: {exc}"
            warnings.warn(
                f"diffcore: CUDA graph capture failed ({reason}); running eagerly", RuntimeWarning, stacklevel=4
            )
            entry = CaptureFailed(reason)
        if key is not None:
            store.store(key, owner, entry, variant)
    if isinstance(entry, CaptureFailed):
        denoiser.reset_deferred()
        it = iter(leaves)  # the caller's own conditioning
        denoiser.cond, denoiser.uncond = replace_leaves(denoiser.cond, it), replace_leaves(denoiser.uncond, it)
        loop, _ = build()
        loop(x)
        denoiser.raise_deferred()
        return x
    return replay(entry, x, leaves)


def replay(entry: Captured, x: Tensor, leaves: list[Tensor]) -> Tensor:
    """Copy ``x`` and the conditioning ``leaves`` into ``entry``'s static inputs, replay, and copy
    the result into ``x``; raises :class:`NonFiniteModelOutput` for the first non-finite model output."""
    if len(leaves) != len(entry.inputs) - 1:
        raise ValueError(f"got {len(leaves)} conditioning tensors for a graph that reads {len(entry.inputs) - 1}")
    for dst, src in zip(entry.inputs, (x, *leaves)):
        if dst is not src:
            dst.copy_(src)
    entry.replay()
    x.copy_(entry.inputs[0])
    if entry.flags is not None:
        ok = entry.flags.cpu()  # one device->host read for every step
        if not bool(ok.all()):
            bad = int((~ok.bool()).nonzero()[0, 0])
            raise NonFiniteModelOutput(f"step {entry.flag_steps[bad]}: model output contains NaN or inf")
    return x

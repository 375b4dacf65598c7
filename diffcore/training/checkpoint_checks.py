"""Checks of a checkpoint's header and metadata, done before any weight is read or model built.

A checkpoint is trusted only as far as these checks go: :func:`check_header` validates the
safetensors header (dtype, shape and byte range of every tensor, read from the header alone),
:func:`parse_meta` the diffcore JSON (an object, bounded nesting), and :func:`check_meta` the run
it describes: each section has the JSON type :class:`~diffcore.pipeline.Pipeline.load` expects,
sample shapes, timestep counts and step counts are bounded, the schedule and parameterization
rebuild, and the model config is built on the ``meta`` device (no memory) and compared tensor by
tensor with the header, so a config that does not describe the stored weights (``base_channels``
8192 in a file of a small UNet) is refused before a byte of model is allocated.
:func:`check_values` then refuses non-finite or absurd weights and names the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = [
    "DTYPE_SIZES",
    "CheckpointError",
    "MAX_ABS_WEIGHT",
    "MAX_JSON_DEPTH",
    "MAX_SAMPLER_STEPS",
    "MAX_SAMPLE_VALUES",
    "MAX_TRAIN_TIMESTEPS",
    "check_header",
    "check_meta",
    "check_values",
    "parse_meta",
]


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a safetensors file, truncated or inconsistent."""


# bytes per element of each safetensors dtype
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
MAX_SAMPLE_VALUES = 2**26  # values per sample a run may declare: a 4096 x 4096 RGBA image is 2**26
MAX_TRAIN_TIMESTEPS = 100_000  # diffusers' schedules use 1000; 1e12 would allocate terabytes of tables
MAX_SAMPLER_STEPS = 100_000
MAX_ABS_WEIGHT = 1e8  # no trained network holds weights this large (fp16 tops out at 65504)
MAX_JSON_DEPTH = 64


def _kind(dtype: str | torch.dtype) -> str:
    """``float`` / ``int`` / ``bool`` / ``complex`` of a safetensors dtype string or torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool:
            return "bool"
        return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else "int"
    return {"B": "bool", "F": "float", "C": "complex"}.get(dtype[0], "int")


# --------------------------------------------------------------------------- the safetensors header


def check_header(header: Any, data_size: int, path: Path) -> None:
    """Every tensor entry of the parsed safetensors ``header`` has a known dtype, a shape of
    non-negative ints and a byte range of exactly its size inside the ``data_size`` data bytes;
    the ranges tile the data. ``__metadata__`` maps strings to strings."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path}: the safetensors header's __metadata__ must map names to strings")
    ranges = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: tensor {name!r}: expected dtype, shape and data_offsets, got {entry!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise CheckpointError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise CheckpointError(f"{path}: tensor {name!r} has shape {shape!r}; expected a list of integers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {offsets!r}; expected [begin, end]")
        begin, end = offsets
        want = math.prod(shape) * DTYPE_SIZES[dtype]
        if not 0 <= begin <= end <= data_size or end - begin != want:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype} {shape}, {want} bytes) has byte range [{begin}, {end}) in "
                f"{data_size} bytes of data: corrupt or truncated"
            )
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise CheckpointError(f"{path}: tensor {name!r} starts at byte {begin}, expected {position}: corrupt")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path}: the tensors cover {position} of {data_size} data bytes: corrupt or truncated")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- the diffcore metadata


def parse_meta(raw: str, path: Path) -> dict[str, Any]:
    """The diffcore JSON document: an object nested at most :data:`MAX_JSON_DEPTH` deep (json's own
    recursion limit stops a deeper document with a RecursionError, refused here)."""
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: its diffcore metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: its diffcore metadata is a JSON {type(meta).__name__}, expected an object")
    if _depth(meta) > MAX_JSON_DEPTH:
        raise CheckpointError(f"{path}: its diffcore metadata is nested deeper than {MAX_JSON_DEPTH} levels")
    return meta


def _depth(value: Any, level: int = 0) -> int:
    """Nesting depth of a parsed JSON value (stops counting past :data:`MAX_JSON_DEPTH`)."""
    if level > MAX_JSON_DEPTH or not isinstance(value, (dict, list)):
        return level
    items = value.values() if isinstance(value, dict) else value
    return max((_depth(v, level + 1) for v in items), default=level + 1)


def _bad(path: Path, key: str, value: Any, what: str) -> CheckpointError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return CheckpointError(f"{path}: metadata {key}={shown}: {what}")


def _need(ok: bool, path: Path, key: str, value: Any, what: str) -> None:
    if not ok:
        raise _bad(path, key, value, what)


def _section(parent: Mapping[str, Any], key: str, path: Path, where: str) -> dict[str, Any] | None:
    """``parent[key]``: None when absent, else it must be an object."""
    if key not in parent:
        return None
    value = parent[key]
    _need(isinstance(value, dict), path, f"{where}{key}", value, "expected a JSON object")
    return value


def check_meta(meta: dict[str, Any], header: dict[str, Any], path: Path) -> None:
    """The run and sampler the metadata describe are well-typed and bounded, and its model
    config describes the header's ``model.`` / ``ema.`` tensors (see the module docstring)."""
    fmt = meta.get("format", 1)
    _need(fmt == 1 and _is_int(fmt), path, "format", fmt, "this diffcore reads format 1 (a newer diffcore wrote it?)")
    _need(isinstance(meta.get("kind", ""), str), path, "kind", meta.get("kind"), "expected a string")
    _check_sampler(_section(meta, "sampler", path, ""), path, "sampler.")
    run = _section(meta, "run", path, "")
    if run is None:
        return
    _check_sampler(_section(run, "sampler", path, "run."), path, "run.sampler.")
    _section(run, "train", path, "run.")
    model = _section(run, "model", path, "run.")
    dataset = _section(run, "dataset", path, "run.")
    if dataset is not None:
        _check_dataset(dataset, model, path)
    schedule = _section(run, "schedule", path, "run.")
    if schedule is not None:
        _check_schedule(schedule, path)
    prediction = _section(run, "prediction", path, "run.")
    if prediction is not None:
        _check_prediction(prediction, path)
    if model is not None:
        _check_model(model, header, path)


def _check_sampler(sampler: dict[str, Any] | None, path: Path, where: str) -> None:
    if not sampler:
        return
    name, steps = sampler.get("name", "dpmpp_2m"), sampler.get("steps", 20)
    _need(isinstance(name, str), path, f"{where}name", name, "expected a sampler name")
    _need(_is_int(steps) and 1 <= steps <= MAX_SAMPLER_STEPS, path, f"{where}steps", steps,
          f"expected an integer in [1, {MAX_SAMPLER_STEPS}]")  # fmt: skip


def _check_dataset(dataset: dict[str, Any], model: dict[str, Any] | None, path: Path) -> None:
    classes = dataset.get("num_classes", 0)
    _need(_is_int(classes) and classes >= 0, path, "run.dataset.num_classes", classes, "expected an integer >= 0")
    if "shape" not in dataset:
        return
    shape = dataset["shape"]
    _need(
        isinstance(shape, list) and 1 <= len(shape) <= 4 and all(_is_int(s) and s >= 1 for s in shape),
        path, "run.dataset.shape", shape, "expected 1 to 4 integers >= 1",
    )  # fmt: skip
    _need(math.prod(shape) <= MAX_SAMPLE_VALUES, path, "run.dataset.shape", shape,
          f"{math.prod(shape):.3g} values per sample; at most {MAX_SAMPLE_VALUES} are allowed")  # fmt: skip
    config = (model or {}).get("config")
    if not isinstance(config, dict):
        return
    if _is_int(config.get("dim")):
        _need(shape == [config["dim"]], path, "run.dataset.shape", shape,
              f"the model takes vectors of run.model.config.dim={config['dim']}")  # fmt: skip
    elif _is_int(config.get("in_channels")):
        _need(len(shape) == 3 and shape[0] == config["in_channels"], path, "run.dataset.shape", shape,
              f"the model takes images of run.model.config.in_channels={config['in_channels']}")  # fmt: skip


def _check_schedule(schedule: dict[str, Any], path: Path) -> None:
    from diffcore.schedules import make_schedule

    name, steps = schedule.get("name"), schedule.get("num_train_timesteps", 1000)
    _need(isinstance(name, str), path, "run.schedule.name", name, "expected a schedule name")
    _need(_is_int(steps) and steps <= MAX_TRAIN_TIMESTEPS, path, "run.schedule.num_train_timesteps", steps,
          f"expected an integer <= {MAX_TRAIN_TIMESTEPS}")  # fmt: skip
    try:
        make_schedule(**schedule)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: metadata run.schedule does not rebuild: {_one_line(exc)}") from exc


def _check_prediction(prediction: dict[str, Any], path: Path) -> None:
    from diffcore.parameterization import make_parameterization

    options = dict(prediction)
    name = options.pop("name", "epsilon")
    _need(isinstance(name, str), path, "run.prediction.name", name, "expected a prediction name")
    try:
        make_parameterization(name, **options)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata run.prediction does not rebuild: {_one_line(exc)}") from exc


def _check_model(model: dict[str, Any], header: dict[str, Any], path: Path) -> None:
    from diffcore.plugins import get

    name, config = model.get("name"), model.get("config", {})
    if not isinstance(name, str):
        raise _bad(path, "run.model.name", name, "expected a model name")
    _need(isinstance(config, dict), path, "run.model.config", config, "expected a JSON object")
    try:
        factory = get("models", name)
    except KeyError as exc:
        raise CheckpointError(f"{path}: metadata run.model.name: {_one_line(exc)}") from exc
    stored = sum(1 for k in header if k != "__metadata__")
    budget = _Budget(100 * stored + 10_000)  # ~6 torch calls per parameter: a config far beyond the file stops early
    try:
        with torch.device("meta"), budget:  # parameters without storage: any size costs no memory
            net = factory(**config)
    except _TooBig as exc:
        raise CheckpointError(
            f"{path}: metadata run.model.config builds a model {name!r} of far more tensors than the {stored} "
            "the file holds"
        ) from exc
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: metadata run.model.config does not fit model {name!r}: {_one_line(exc)}"
        ) from exc
    except Exception:  # noqa: BLE001 - a model that cannot be built on the meta device is checked at load
        return
    state = net.state_dict() if isinstance(net, torch.nn.Module) else {}
    _compare_weights(name, state, header, path)


class _TooBig(Exception):
    pass


class _Budget(TorchFunctionMode):
    """Counts torch calls while a model is built; raises :class:`_TooBig` past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.calls, self.limit = 0, limit

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += 1
        if self.calls > self.limit:
            raise _TooBig(func)
        return func(*args, **(kwargs or {}))


def _compare_weights(name: str, state: dict[str, Tensor], header: dict[str, Any], path: Path) -> None:
    """The header's ``model.`` (and ``ema.``) tensors are exactly ``state``'s keys, shapes and dtype kinds."""
    prefixes = [p for p in ("model.", "ema.") if any(k.startswith(p) for k in header)]
    if state and not prefixes:
        raise CheckpointError(f"{path} holds no weights of model {name!r} (no 'model.' tensors)")
    want = sum(t.numel() for t in state.values())
    for prefix in prefixes:
        stored = {k[len(prefix) :]: v for k, v in header.items() if k.startswith(prefix)}
        have = sum(math.prod(v["shape"]) for v in stored.values())
        missing, extra = sorted(set(state) - set(stored)), sorted(set(stored) - set(state))
        if missing or extra:
            key = prefix + (missing or extra)[0]
            raise CheckpointError(
                f"{path}: tensor {key!r} is {'missing' if missing else 'not part of the model'} "
                f"({len(missing)} missing, {len(extra)} unexpected for model {name!r} with metadata run.model.config)"
            )
        for key, tensor in state.items():
            entry = stored[key]
            if list(tensor.shape) != entry["shape"]:
                raise CheckpointError(
                    f"{path}: tensor {prefix + key!r} has shape {entry['shape']}, metadata run.model.config "
                    f"makes it {list(tensor.shape)} (the config describes {want:.3g} values, the file holds {have:.3g})"
                )
            if _kind(entry["dtype"]) != _kind(tensor.dtype):
                raise CheckpointError(
                    f"{path}: tensor {prefix + key!r} is {entry['dtype']}; model {name!r} holds {tensor.dtype} there"
                )


# --------------------------------------------------------------------------- the values


def check_values(tensors: Mapping[str, Tensor], path: Path) -> None:
    """Every floating tensor is finite; model and EMA weights are at most :data:`MAX_ABS_WEIGHT`."""
    for key, t in tensors.items():
        if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0:
            continue
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {int(bad.sum())} non-finite value(s), first {t[index].item()} "
                f"at {list(index)}"
            )
        if key.startswith(("model.", "ema.")):
            peak = float(t.abs().max())
            if peak > MAX_ABS_WEIGHT:
                raise CheckpointError(
                    f"{path}: tensor {key!r} holds a weight of magnitude {peak:.3g} (at most {MAX_ABS_WEIGHT:.0e})"
                )


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())

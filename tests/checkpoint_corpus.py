"""A corpus of malformed checkpoints, and the verdict of loading each one.

:func:`corpus` derives every variant from one good checkpoint (a small tabular MLP pipeline, or a
UNet one for image shapes): bytes of the safetensors header flipped, truncations, wrong dtypes,
missing / extra / reshaped tensors, huge shapes, non-finite and absurd weights, and metadata of
the wrong JSON type, with unknown keys or absurd sizes. :func:`verdict` loads one with
``Pipeline.load`` and classifies the outcome: ``clear`` (a ValueError, CheckpointError included,
with a one-line message), ``raw`` (any other exception: a traceback for a CLI user) or ``silent``
(it loaded). Used by tests/test_checkpoint_faults.py and benchmarks/faults/checkpoints.py.
"""

from __future__ import annotations

import json
import pickle
import struct
import tempfile
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import torch

import diffcore
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.schedules import make_schedule

Variant = Callable[[], bytes]
MLP_CONFIG = {"dim": 4, "hidden": 8, "depth": 1, "num_classes": 0}
UNET_CONFIG = {
    "in_channels": 1,
    "image_size": 8,
    "base_channels": 8,
    "channel_mult": [1],
    "num_res_blocks": 1,
    "attention_resolutions": [],
    "groups": 4,
    "num_classes": 0,
}


def good_checkpoint(model: str = "mlp") -> bytes:
    """The bytes of a valid pipeline checkpoint of a freshly initialized ``mlp`` or ``unet``."""
    torch.manual_seed(0)
    config = MLP_CONFIG if model == "mlp" else UNET_CONFIG
    shape = [4] if model == "mlp" else [1, 8, 8]
    net = diffcore.get("models", model)(**config)
    run = {
        "dataset": {"name": "toy", "kind": "tabular" if model == "mlp" else "image", "shape": shape, "num_classes": 0},
        "model": {"name": model, "config": dict(net.config)},
        "schedule": make_schedule("linear").config(),
        "prediction": {"name": "epsilon"},
    }
    pipe = Pipeline(net, make_schedule("linear"), make_parameterization("epsilon"), run=run, sampler="ddim", steps=4)
    with tempfile.TemporaryDirectory() as tmp:
        return pipe.save(Path(tmp) / "good.safetensors").read_bytes()


# --------------------------------------------------------------------------- the file's parts


def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """(header dict, data bytes) of a safetensors file."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict[str, Any] | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def meta_of(blob: bytes) -> dict[str, Any]:
    return json.loads(split(blob)[0]["__metadata__"]["diffcore"])


def with_meta(blob: bytes, edit: Callable[[dict[str, Any]], Any]) -> bytes:
    """The checkpoint with its diffcore metadata replaced by ``edit(meta)`` (or edited in place)."""
    header, data = split(blob)
    meta = meta_of(blob)
    new = edit(meta)
    header["__metadata__"]["diffcore"] = json.dumps(meta if new is None else new)
    return join(header, data)


def with_raw_meta(blob: bytes, text: str) -> bytes:
    header, data = split(blob)
    header["__metadata__"]["diffcore"] = text
    return join(header, data)


def tensors_of(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return dict(load(blob))


def with_tensors(blob: bytes, edit: Callable[[dict[str, torch.Tensor]], None]) -> bytes:
    """The checkpoint with its tensors edited (the metadata kept), re-serialized by safetensors."""
    from safetensors.torch import save

    tensors = tensors_of(blob)
    edit(tensors)
    header, _ = split(blob)
    return save(tensors, metadata=header["__metadata__"])


def with_header(blob: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """The checkpoint with its safetensors header dict edited (the data bytes kept)."""
    header, data = split(blob)
    edit(header)
    return join(header, data)


def first_weight(blob: bytes) -> str:
    """The name of the first 2-D, non-square float weight (transposing it changes its shape)."""
    header, _ = split(blob)
    return next(
        k for k, v in header.items() if k != "__metadata__" and len(v["shape"]) == 2 and len(set(v["shape"])) == 2
    )


def flip(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + bytes([value]) + blob[offset + 1 :]


def header_offset(blob: bytes, needle: bytes, shift: int = 0) -> int:
    n = int.from_bytes(blob[:8], "little")
    at = blob[8 : 8 + n].index(needle)
    return 8 + at + shift


def _set(path: list[str], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        node = meta
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


def _drop(path: list[str]) -> Callable[[dict[str, Any]], None]:
    def edit(meta: dict[str, Any]) -> None:
        node = meta
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return edit


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- the corpus


def corpus() -> dict[str, Variant]:
    """Name -> a function returning the bytes of that malformed checkpoint (all must be refused)."""
    good, unet = good_checkpoint("mlp"), good_checkpoint("unet")
    w = first_weight(good)
    n_header = int.from_bytes(good[:8], "little")
    v: dict[str, Variant] = {}

    # whole-file damage
    v["empty file"] = lambda: b""
    v["three bytes"] = lambda: b"abc"
    v["random bytes"] = lambda: bytes(range(256)) * 8
    v["pickle"] = lambda: pickle.dumps({"w": [1.0, 2.0]})
    v["zip archive"] = lambda: _zip()
    v["text file"] = lambda: b"not a checkpoint\n" * 10
    for frac in (0.01, 0.3, 0.6, 0.9, 0.999):
        v[f"truncated to {frac:.1%}"] = lambda frac=frac: good[: max(9, int(len(good) * frac))]
    v["truncated inside the header length"] = lambda: good[:6]
    v["truncated right after the header"] = lambda: good[: 8 + n_header]
    v["last byte missing"] = lambda: good[:-1]
    v["trailing garbage"] = lambda: good + b"\x00garbage"

    # header bytes
    v["header length huge"] = lambda: struct.pack("<Q", 2**63) + good[8:]
    v["header length zero"] = lambda: struct.pack("<Q", 0) + good[8:]
    v["header length off by one"] = lambda: struct.pack("<Q", n_header + 1) + good[8:]
    v["header length short"] = lambda: struct.pack("<Q", n_header - 7) + good[8:]
    v["header opening brace flipped"] = lambda: flip(good, 8, ord("["))
    v["header closing brace flipped"] = lambda: flip(good, 8 + len(good[8 : 8 + n_header].rstrip()) - 1, ord("]"))
    v["dtype string flipped"] = lambda: flip(good, header_offset(good, b'"F32"', 1), ord("X"))
    v["dtype F32 -> F64"] = lambda: flip(good, header_offset(good, b'"F32"', 2), ord("6"))
    v["dtype F32 -> I32"] = lambda: flip(good, header_offset(good, b'"F32"', 1), ord("I"))
    v["metadata key flipped"] = lambda: flip(good, header_offset(good, b'"diffcore"', 1), ord("D"))
    v["metadata JSON quote flipped"] = lambda: flip(good, header_offset(good, b'\\"run\\"', 1), ord("x"))
    v["shape digit flipped"] = lambda: flip(good, header_offset(good, b'"shape":[', 9), ord("9"))
    v["offset digit flipped"] = lambda: flip(good, header_offset(good, b'"data_offsets":[0,', 18), ord("7"))
    v["non-utf8 header byte"] = lambda: flip(good, header_offset(good, b'"dtype"', 2), 0xFF)

    # the safetensors header's own entries
    v["huge shape"] = lambda: with_header(good, lambda h: h[w].update(shape=[10**6, 10**6]))
    v["negative shape"] = lambda: with_header(good, lambda h: h[w].update(shape=[-1, 4]))
    v["shape not a list"] = lambda: with_header(good, lambda h: h[w].update(shape="8x4"))
    v["offsets past the end"] = lambda: with_header(good, lambda h: h[w].update(data_offsets=[0, 10**9]))
    v["offsets reversed"] = lambda: with_header(good, lambda h: h[w].update(data_offsets=h[w]["data_offsets"][::-1]))
    v["unknown dtype"] = lambda: with_header(good, lambda h: h[w].update(dtype="Q8"))
    v["metadata not a map"] = lambda: with_header(good, lambda h: h.update(__metadata__=["diffcore"]))
    v["metadata value not a string"] = lambda: with_header(good, lambda h: h["__metadata__"].update(diffcore=5))
    v["no diffcore metadata"] = lambda: with_header(good, lambda h: h.update(__metadata__={"other": "x"}))

    # the diffcore metadata: JSON types and values
    v["metadata not JSON"] = lambda: with_raw_meta(good, "{run: nope")
    v["metadata a list"] = lambda: with_raw_meta(good, "[1, 2, 3]")
    v["metadata a string"] = lambda: with_raw_meta(good, '"run"')
    v["metadata a number"] = lambda: with_raw_meta(good, "1e999")
    v["metadata null"] = lambda: with_raw_meta(good, "null")
    v["metadata deeply nested"] = lambda: with_raw_meta(good, _nested(100_000))
    v["model config deeply nested"] = lambda: with_meta(
        good, _set(["run", "model", "config", "dim"], json.loads(_nested(500)))
    )
    v["format from the future"] = lambda: with_meta(good, _set(["format"], 99))
    v["run missing"] = lambda: with_meta(good, _drop(["run"]))
    v["run a list"] = lambda: with_meta(good, _set(["run"], [1, 2]))
    v["model missing"] = lambda: with_meta(good, _drop(["run", "model"]))
    v["model a string"] = lambda: with_meta(good, _set(["run", "model"], "mlp"))
    v["model name unknown"] = lambda: with_meta(good, _set(["run", "model", "name"], "nope"))
    v["model name a number"] = lambda: with_meta(good, _set(["run", "model", "name"], 7))
    v["model config a list"] = lambda: with_meta(good, _set(["run", "model", "config"], [4, 8]))
    v["model config unknown key"] = lambda: with_meta(good, _set(["run", "model", "config", "banana"], 1))
    v["model config wrong type"] = lambda: with_meta(good, _set(["run", "model", "config", "hidden"], "wide"))
    v["model config huge width"] = lambda: with_meta(good, _set(["run", "model", "config", "hidden"], 8192))
    v["model config huge dim"] = lambda: with_meta(good, _set(["run", "model", "config", "dim"], 10**9))
    v["model config huge depth"] = lambda: with_meta(good, _set(["run", "model", "config", "depth"], 10**6))
    v["unet base_channels 8192"] = lambda: with_meta(unet, _set(["run", "model", "config", "base_channels"], 8192))
    v["dataset shape 1e5 x 1e5"] = lambda: with_meta(unet, _set(["run", "dataset", "shape"], [1, 10**5, 10**5]))
    v["dataset shape floats"] = lambda: with_meta(good, _set(["run", "dataset", "shape"], [1e30]))
    v["dataset shape negative"] = lambda: with_meta(good, _set(["run", "dataset", "shape"], [-4]))
    v["dataset shape a string"] = lambda: with_meta(good, _set(["run", "dataset", "shape"], "4"))
    v["dataset shape not the model's"] = lambda: with_meta(good, _set(["run", "dataset", "shape"], [5]))
    v["dataset a list"] = lambda: with_meta(good, _set(["run", "dataset"], [4]))
    v["dataset classes negative"] = lambda: with_meta(good, _set(["run", "dataset", "num_classes"], -3))
    v["schedule missing"] = lambda: with_meta(good, _drop(["run", "schedule"]))
    v["schedule a string"] = lambda: with_meta(good, _set(["run", "schedule"], "linear"))
    v["schedule name unknown"] = lambda: with_meta(good, _set(["run", "schedule", "name"], "nope"))
    v["schedule unknown key"] = lambda: with_meta(good, _set(["run", "schedule", "banana"], 1))
    v["schedule 1e12 timesteps"] = lambda: with_meta(good, _set(["run", "schedule", "num_train_timesteps"], 10**12))
    v["prediction a list"] = lambda: with_meta(good, _set(["run", "prediction"], ["epsilon"]))
    v["prediction unknown"] = lambda: with_meta(good, _set(["run", "prediction"], {"name": "banana"}))
    v["prediction unknown key"] = lambda: with_meta(good, _set(["run", "prediction"], {"name": "epsilon", "k": 1}))
    v["sampler a list"] = lambda: with_meta(good, _set(["sampler"], ["ddim", 4]))
    v["sampler steps a string"] = lambda: with_meta(good, _set(["sampler"], {"name": "ddim", "steps": "many"}))
    v["sampler steps huge"] = lambda: with_meta(good, _set(["sampler"], {"name": "ddim", "steps": 10**12}))
    v["sampler name a number"] = lambda: with_meta(good, _set(["sampler"], {"name": 3, "steps": 4}))

    # the tensors
    def put(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
        return lambda t: t[w].view(-1).__setitem__(0, value)

    v["NaN weight"] = lambda: with_tensors(good, put(float("nan")))
    v["+inf weight"] = lambda: with_tensors(good, put(float("inf")))
    v["-inf weight"] = lambda: with_tensors(good, put(float("-inf")))
    v["1e30 weight"] = lambda: with_tensors(good, put(1e30))
    v["int64 weight"] = lambda: with_tensors(good, lambda t: t.update({w: t[w].round().long()}))
    v["bool weight"] = lambda: with_tensors(good, lambda t: t.update({w: t[w] > 0}))
    v["uint8 weight"] = lambda: with_tensors(good, lambda t: t.update({w: t[w].to(torch.uint8)}))
    v["weight missing"] = lambda: with_tensors(good, lambda t: t.pop(w))
    v["extra weight"] = lambda: with_tensors(good, lambda t: t.update({"model.extra": torch.zeros(3)}))
    v["weight transposed"] = lambda: with_tensors(good, lambda t: t.update({w: t[w].T.contiguous()}))
    v["weight reshaped"] = lambda: with_tensors(good, lambda t: t.update({w: t[w].reshape(-1)}))
    v["weight renamed"] = lambda: with_tensors(good, lambda t: t.update({w + "_": t.pop(w)}))
    v["no weights"] = lambda: with_tensors(good, lambda t: t.clear() or t.update({"other": torch.zeros(1)}))
    v["ema weights half there"] = lambda: with_tensors(
        good, lambda t: t.update({"ema." + w[len("model.") :]: t[w].clone()})
    )
    return v


def _zip() -> bytes:
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    return buf.getvalue()


# --------------------------------------------------------------------------- the verdict


def verdict(path: Path) -> tuple[str, str]:
    """``("clear" | "raw" | "silent", message)`` of ``Pipeline.load(path)`` (then a 1-step sample when it
    loads: a checkpoint that loads is only fine if it samples finite values)."""
    try:
        pipe = Pipeline.load(path)
    except ValueError as exc:
        message = str(exc)
        return ("clear" if message and "\n" not in message else "raw", f"{type(exc).__name__}: {message}")
    except Exception as exc:  # noqa: BLE001 - what is counted is precisely the unexpected kind
        return "raw", f"{type(exc).__name__}: {exc}"
    try:
        out = pipe.generate(1, steps=1, sampler="ddim")
    except Exception as exc:  # noqa: BLE001
        return "raw", f"loaded, then sampling raised {type(exc).__name__}: {exc}"
    return "silent", "loaded" + ("" if bool(torch.isfinite(out).all()) else ", and sampled non-finite values")


def run_corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """Write each variant to ``folder`` and load it: name -> (verdict, message)."""
    folder.mkdir(parents=True, exist_ok=True)
    results = {}
    for i, (name, make) in enumerate(corpus().items()):
        path = folder / f"{i:03d}.safetensors"
        path.write_bytes(make())
        results[name] = verdict(path)
    return results


def counts(results: dict[str, tuple[str, str]]) -> dict[str, int]:
    tally = {"tried": len(results), "clear": 0, "raw": 0, "silent": 0}
    for kind, _ in results.values():
        tally[kind] += 1
    return tally


__all__ = ["corpus", "counts", "good_checkpoint", "run_corpus", "verdict"]

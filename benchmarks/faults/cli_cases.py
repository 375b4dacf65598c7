"""The bad-input corpus of benchmarks/faults/cli_inputs.py: tiny checkpoints and input files, and
the cases (a category, a command line, what should happen) over every CLI verb.

Categories: bad numbers (unparsable), NaN/inf, negative, huge, wrong types, files (missing,
empty, garbage, oversized, NaN pixels, a folder), paths (unwritable, a folder, too long), unknown
options and values, and valid controls (``expect="ok"``) that show the harness passes good input.
"""

from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TINY_UNET = {
    "base_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [4],
    "groups": 8,
}
TINY_TEXT = {
    "unet": {"in_channels": 1, "image_size": 8, **TINY_UNET},
    "encoder": {"name": "builtin", "config": {"dim": 32, "layers": 1, "heads": 2, "max_length": 8}},
}
CATEGORIES = (
    "bad numbers",
    "NaN/inf",
    "negative",
    "huge",
    "wrong types",
    "files",
    "paths",
    "unknown options",
    "valid controls",
)


@dataclass
class Case:
    """One command line; ``expect`` is "error" (bad input) or "ok" (a valid control)."""

    category: str
    verb: str
    argv: list[str]
    expect: str = "error"
    label: str = field(default="")


@dataclass
class Fixtures:
    root: Path
    run: Path  # class-conditional digits UNet
    text: Path  # text_unet with the built-in encoder
    table: Path  # tabular MLP
    image: Path  # one 8x8 uint8 .npy
    images: Path  # 6 images .npy
    png: Path
    csv: Path
    files: dict[str, Path]  # bad input files by name


def build_fixtures(root: Path) -> Fixtures:
    """Train the three tiny models (a few steps each) and write the input files."""
    import diffcore

    common = {"batch_size": 8, "warmup_steps": 1, "log_every": 1, "device": "cpu"}
    diffcore.train("digits", "unet", 2, root / "run", dataset_options={"limit": 64}, model_config=TINY_UNET, **common)
    diffcore.train(
        "digits",
        "text_unet",
        2,
        root / "text",
        dataset_options={"limit": 64},
        captions="digits",
        model_config=TINY_TEXT,
        **common,
    )
    rng = np.random.default_rng(0)
    table = root / "table.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c"])
        writer.writerows(rng.normal(size=(64, 3)).round(4).tolist())
    mlp = {"hidden": 16, "depth": 1}
    data = {"path": str(table)}
    diffcore.train("tabular", "mlp", 2, root / "table", dataset_options=data, model_config=mlp, **common)
    digits = diffcore.get("datasets", "digits")(limit=64).test[:6]
    images = ((digits.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()[:, 0]
    np.save(root / "image.npy", images[0])
    np.save(root / "images.npy", images[:, None])  # (N, 1, H, W): no doubt about the channel axis
    from PIL import Image

    Image.fromarray(images[0]).save(root / "image.png")
    return Fixtures(
        root, root / "run", root / "text", root / "table", root / "image.npy", root / "images.npy",
        root / "image.png", table, _bad_files(root),
    )  # fmt: skip


def _bad_files(root: Path) -> dict[str, Path]:
    bad = root / "bad"
    bad.mkdir()
    rng = np.random.default_rng(1)
    files = {
        "empty.png": b"",
        "garbage.png": rng.bytes(300),
        "garbage.npy": rng.bytes(300),
        "garbage.npz": rng.bytes(300),
        "garbage.csv": b"\x00\xff\x00" * 50,
        "text.safetensors": b"not a checkpoint",
        "truncated.png": (root / "image.png").read_bytes()[:40],
    }
    out = {}
    for name, data in files.items():
        (bad / name).write_bytes(data)
        out[name] = bad / name
    arrays = {
        "nan.npy": np.full((8, 8), np.nan, dtype=np.float32),
        "range.npy": np.full((8, 8), 5.0, dtype=np.float32),
        "five_d.npy": np.zeros((1, 1, 1, 8, 8), dtype=np.uint8),
        "empty_array.npy": np.zeros((0, 8, 8), dtype=np.uint8),
        "complex.npy": np.zeros((8, 8), dtype=np.complex64),
        "big_image.npy": np.zeros((64, 64), dtype=np.uint8),
        "rgb.npy": np.zeros((8, 8, 3), dtype=np.uint8),
        "strings.npy": np.array([["a"] * 8] * 8),
    }
    for name, arr in arrays.items():
        np.save(bad / name, arr)
        out[name] = bad / name
    np.save(bad / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    out["objects.npy"] = bad / "objects.npy"
    np.savez(bad / "two_arrays.npz", a=np.zeros((8, 8)), b=np.zeros((8, 8)))
    out["two_arrays.npz"] = bad / "two_arrays.npz"
    header = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1, 10**5, 10**5)})
    with zipfile.ZipFile(bad / "bomb.npz", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", header.getvalue() + bytes(4096))
    out["bomb.npz"] = bad / "bomb.npz"
    out["bomb.png"] = _png_bomb(bad / "bomb.png", 20000, 20000)
    (bad / "folder.png").mkdir()
    out["folder.png"] = bad / "folder.png"
    (bad / "wrong_columns.csv").write_text("x,y\n1,2\n3,4\n")
    out["wrong_columns.csv"] = bad / "wrong_columns.csv"
    (bad / "nan.csv").write_text("a,b,c\nnan,1,2\n1,inf,2\n")
    out["nan.csv"] = bad / "nan.csv"
    (bad / "calibration.json").write_text(json.dumps({"threshold": "high"}))
    out["calibration.json"] = bad / "calibration.json"
    (bad / "config.json").write_text("[1, 2")
    out["config.json"] = bad / "config.json"
    return out


def _png_bomb(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose IHDR claims width x height (a header-only decompression bomb)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------- the cases

# per numeric option: the values tried, by category
BAD_VALUES = {
    "bad numbers": ["abc"],
    "NaN/inf": ["nan", "inf"],
    "negative": ["-1"],
    "huge": ["99999999999999999999999"],
}
INT_ONLY = {"wrong types": ["1.5"]}
FLOAT_ONLY = {"huge": ["1e30"]}


def _base(verb: str, fx: Fixtures, out: str) -> list[str]:
    tiny = [a for k, v in TINY_UNET.items() for a in ("--model-opt", f"{k}={json.dumps(v)}")]
    return {
        "generate": ["generate", "--checkpoint", str(fx.run), "--n", "2", "--steps", "2", "--out", f"{out}/g.png"],
        "sample": ["sample", "--checkpoint", str(fx.run), "--n", "2", "--steps", "2", "--npz", f"{out}/g.npz"],
        "text2image": ["text2image", "a seven", "--checkpoint", str(fx.text), "--n", "1", "--steps", "2",
                       "--out", f"{out}/t.png"],
        "translate": ["translate", "--checkpoint", str(fx.run), "--input", str(fx.image), "--steps", "2",
                      "--out", f"{out}/tr"],
        "inpaint": ["translate", "--checkpoint", str(fx.run), "--input", str(fx.image), "--mode", "inpaint",
                    "--mask", "center", "--steps", "2", "--resample", "1", "--jump-length", "1", "--out", f"{out}/ip"],
        "denoise": ["denoise", "--checkpoint", str(fx.run), "--input", str(fx.image), "--sigma", "25",
                    "--output", f"{out}/d.png"],
        "detect": ["detect", "--checkpoint", str(fx.run), "--input", str(fx.images), "--repeats", "1", "--steps", "1",
                   "--output", f"{out}/s.json"],
        "detect-table": ["detect", "--checkpoint", str(fx.table), "--input", str(fx.csv), "--repeats", "1",
                         "--steps", "1", "--output", f"{out}/s.csv"],
        "train": ["train", "--out", f"{out}/r", "--steps", "1", "--batch-size", "4", "--dataset-opt", "limit=16",
                  "--warmup-steps", "1", "--device", "cpu", *tiny],
        "run": ["run", "generate", "--checkpoint", str(fx.run), "--n", "2", "--steps", "2", "--out", f"{out}/g.png"],
    }[verb]  # fmt: skip


NUMERIC: dict[str, list[tuple[str, str, list[str]]]] = {
    # verb -> (option, int | float, extra arguments the option needs)
    "generate": [
        ("--n", "int", []),
        ("--steps", "int", []),
        ("--batch-size", "int", []),
        ("--seed", "int", []),
        ("--guidance-scale", "float", ["--class-label", "1"]),
        ("--guidance-rescale", "float", ["--class-label", "1", "--guidance-scale", "3"]),
    ],
    "sample": [("--steps", "int", [])],
    "text2image": [
        ("--n", "int", []),
        ("--steps", "int", []),
        ("--guidance-scale", "float", []),
        ("--guidance-rescale", "float", []),
    ],
    "translate": [
        ("--strength", "float", []),
        ("--steps", "int", []),
        ("--guidance-scale", "float", ["--class-label", "1"]),
        ("--class-label", "int", []),
    ],
    "inpaint": [("--resample", "int", []), ("--jump-length", "int", [])],
    "denoise": [
        ("--sigma", "float", []),
        ("--sigma-scale", "float", []),
        ("--samples", "int", []),
        ("--steps", "int", ["--mode", "sample"]),
        ("--tile-overlap", "int", []),
    ],
    "detect": [
        ("--depth", "float", []),
        ("--repeats", "int", []),
        ("--smooth", "float", []),
        ("--levels", "int", ["--method", "dte"]),
        ("--quantile", "float", ["--calibrate", "{images}"]),
    ],
    "train": [
        ("--steps", "int", []),
        ("--batch-size", "int", []),
        ("--lr", "float", []),
        ("--ema-decay", "float", []),
        ("--grad-clip", "float", []),
        ("--label-dropout", "float", []),
        ("--checkpoint-every", "int", []),
    ],
}


# huge values that are valid requests: clip gradients at 1e30 (= off), checkpoint only at the end
VALID_HUGE = {("train", "--grad-clip"), ("train", "--checkpoint-every")}


def numeric_cases(fx: Fixtures, out: str) -> list[Case]:
    cases = []
    for verb, options in NUMERIC.items():
        for option, kind, extra in options:
            extra = [e.replace("{images}", str(fx.images)) for e in extra]
            values = {**BAD_VALUES, **(INT_ONLY if kind == "int" else {})}
            if kind == "float":
                values = {**values, "huge": values["huge"] + FLOAT_ONLY["huge"]}
            for category, items in values.items():
                for value in items:
                    argv = [*_base(verb, fx, out), *extra, option, value]
                    expect = "ok" if category == "huge" and (verb, option) in VALID_HUGE else "error"
                    cases.append(Case(category, verb, argv, expect, label=f"{option} {value}"))
    return cases


def file_cases(fx: Fixtures, out: str) -> list[Case]:
    f = fx.files
    missing = str(fx.root / "missing.npy")
    inputs = ["garbage.png", "empty.png", "truncated.png", "garbage.npy", "garbage.npz", "nan.npy", "range.npy",
              "five_d.npy", "empty_array.npy", "complex.npy", "strings.npy", "objects.npy", "two_arrays.npz",
              "bomb.npz", "bomb.png", "folder.png", "rgb.npy"]  # fmt: skip
    few = ["garbage.png", "nan.npy", "range.npy", "bomb.npz", "bomb.png", "folder.png", "missing"]
    cases = []
    for verb, option, names in (
        ("translate", "--input", [*inputs, "missing"]),
        ("denoise", "--input", few),
        ("detect", "--input", few),
    ):
        for name in names:
            path = missing if name == "missing" else str(f[name])
            cases.append(Case("files", verb, [*_base(verb, fx, out), option, path], label=f"{option} {name}"))
    for name in ("text.safetensors", "garbage.npz", "missing", "folder.png"):
        path = missing if name == "missing" else str(f[name])
        for verb in ("generate", "text2image", "translate", "denoise", "detect"):
            cases.append(Case("files", verb, [*_base(verb, fx, out), "--checkpoint", path], label=f"checkpoint {name}"))
    mask = _base("inpaint", fx, out)
    for name in ("garbage.png", "nan.npy", "empty_array.npy", "big_image.npy", "missing"):
        path = missing if name == "missing" else str(f[name])
        cases.append(Case("files", "inpaint", [*mask, "--mask", path], label=f"--mask {name}"))
    for name in ("garbage.csv", "wrong_columns.csv", "nan.csv", "garbage.npz", "missing"):
        path = missing if name == "missing" else str(f[name])
        cases.append(Case("files", "detect-table", [*_base("detect-table", fx, out), "--input", path], label=name))
    detect = _base("detect", fx, out)
    cases.append(Case("files", "detect", [*detect, "--calibrate", str(f["calibration.json"])], label="bad calibration"))
    cases.append(Case("files", "detect", [*detect, "--calibrate", str(f["garbage.npy"])], label="garbage calibration"))
    cases.append(Case("files", "train", [*_base("train", fx, out), "--config", str(f["config.json"])], label="config"))
    cases.append(Case("files", "train", [*_base("train", fx, out), "--config", missing], label="config missing"))
    cases.append(Case("files", "translate", [*_base("translate", fx, out), "--input", str(f["big_image.npy"])],
                      label="input of another size"))  # fmt: skip
    return cases


def path_cases(fx: Fixtures, out: str) -> list[Case]:
    blocker = fx.root / "bad" / "garbage.png"  # a file used as a folder
    long = "x" * 300
    targets = {
        "generate": ("--out", "g.png"),
        "sample": ("--npz", "g.npz"),
        "text2image": ("--out", "t.png"),
        "translate": ("--out", "tr"),
        "denoise": ("--output", "d.png"),
        "detect": ("--output", "s.json"),
        "train": ("--out", "r"),
    }
    cases = []
    for verb, (option, name) in targets.items():
        for label, path in (
            ("under a file", f"{blocker}/{name}"),
            ("in /proc", f"/proc/diffcore/{name}"),
            ("name too long", f"{out}/{long}{Path(name).suffix}"),
        ):
            cases.append(Case("paths", verb, [*_base(verb, fx, out), option, path], label=f"{option} {label}"))
        if Path(name).suffix:  # a folder where a file is expected
            cases.append(Case("paths", verb, [*_base(verb, fx, out), option, str(fx.root)], label=f"{option} folder"))
    for verb in ("generate", "denoise", "detect"):
        option, name = targets[verb]
        cases.append(Case("paths", verb, [*_base(verb, fx, out), option, f"{out}/x.bmp"], label="wrong suffix"))
    return cases


def option_cases(fx: Fixtures, out: str) -> list[Case]:
    cases = []
    for verb in ("generate", "text2image", "translate", "denoise", "detect", "train", "run"):
        base = _base(verb, fx, out)
        cases.append(Case("unknown options", verb, [*base, "--no-such-option", "1"], label="unknown flag"))
        cases.append(Case("unknown options", verb, [*base, "--device", "meta"], label="--device meta"))
        cases.append(Case("unknown options", verb, [*base, "--device", "tpu"], label="--device tpu"))
        if verb != "train":
            cases.append(Case("unknown options", verb, [*base, "--sampler", "nope"], label="--sampler nope"))
    train = _base("train", fx, out)
    for flag, value in (
        ("--model-opt", "bogus=3"),
        ("--model-opt", "base_channels=abc"),
        ("--model-opt", "novalue"),
        ("--schedule-opt", "bogus=3"),
        ("--dataset-opt", "bogus=3"),
        ("--dataset", "nope"),
        ("--model", "nope"),
        ("--schedule", "nope"),
        ("--prediction", "nope"),
        ("--sampler", "nope"),
        ("--bf16", "banana"),
        ("--lr-schedule", "nope"),
        ("--loss-weighting", "nope"),
        ("--task-condition", "nope"),
    ):
        cases.append(Case("unknown options", "train", [*train, flag, value], label=f"{flag} {value}"))
    gen = _base("generate", fx, out)
    for flag, value in (("--timestep-spacing", "sideways"), ("--class-label", "ten"), ("--class-label", "all,1")):
        cases.append(Case("unknown options", "generate", [*gen, flag, value], label=f"{flag} {value}"))
    tr = _base("translate", fx, out)
    for flag, value in (("--mode", "nope"), ("--mask", "middle"), ("--resize", "banana")):
        cases.append(Case("unknown options", "translate", [*tr, flag, value], label=f"{flag} {value}"))
    cases.append(Case("unknown options", "denoise", [*_base("denoise", fx, out), "--mode", "nope"], label="--mode"))
    cases.append(Case("unknown options", "detect", [*_base("detect", fx, out), "--method", "nope"], label="--method"))
    cases.append(Case("unknown options", "detect", [*_base("detect", fx, out), "--noise", "nope"], label="--noise"))
    for argv in (["list", "nope"], ["run", "nope"], ["nope"], ["generate"], ["denoise", "--checkpoint", str(fx.run)]):
        cases.append(Case("unknown options", argv[0], argv, label=" ".join(argv[:2])))
    return cases


def control_cases(fx: Fixtures, out: str) -> list[Case]:
    verbs = ("generate", "sample", "text2image", "translate", "inpaint", "denoise", "detect", "detect-table", "run")
    cases = [Case("valid controls", verb, _base(verb, fx, out), expect="ok", label="baseline") for verb in verbs]
    cases.append(Case("valid controls", "train", _base("train", fx, out), expect="ok", label="baseline"))
    cases.append(Case("valid controls", "translate", [*_base("translate", fx, out), "--input", str(fx.png)],
                      expect="ok", label="png input"))  # fmt: skip
    return cases


def all_cases(fx: Fixtures, out: str) -> list[Case]:
    """Every case; ``out`` is a placeholder for the case's own output folder."""
    return [
        *numeric_cases(fx, out),
        *file_cases(fx, out),
        *path_cases(fx, out),
        *option_cases(fx, out),
        *control_cases(fx, out),
    ]

"""The command line under bad input and everyday use (issue #18): plugin isolation of
register_commands, --device, strict train flags, finite and clipped outputs, PNG metadata,
--out-dir, size bounds before allocation and outputs written whole or not at all."""

from __future__ import annotations

import io as io_module
import json
import struct
import sys
import types
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from diffcore import cli as diffcore_cli
from diffcore import plugins
from diffcore.plugins import PluginWarning, hookimpl


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFCORE_LOAD_PLUGINS", raising=False)
    plugins.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        plugins.get_plugin_manager()
    yield
    plugins.reset()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = diffcore_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _commands_plugin(name: str, fn: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.register_commands = hookimpl(fn)  # type: ignore[attr-defined]
    return module


# --------------------------------------------------------------------------- plugin isolation


@pytest.mark.parametrize("exit_with", [SystemExit(4), SystemExit("bye"), GeneratorExit()])
def test_register_commands_raising_base_exception_is_reported_and_skipped(
    capsys: pytest.CaptureFixture[str], exit_with: BaseException
) -> None:
    def register_commands(cli: Any) -> None:
        cli.add_command("quitter", help="never added")
        raise exit_with

    plugins.register_plugin(_commands_plugin("quitting_plugin", register_commands))
    code, out, err = run_cli(capsys, "list", "samplers")
    assert code == 0 and "euler" in out
    assert "diffcore: warning:" in err and "quitting_plugin" in err
    code, _, err = run_cli(capsys, "quitter")
    assert code == 2 and "invalid choice" in err


def test_register_commands_keyboard_interrupt_propagates(capsys: pytest.CaptureFixture[str]) -> None:
    def register_commands(cli: Any) -> None:
        raise KeyboardInterrupt

    plugins.register_plugin(_commands_plugin("interrupting_plugin", register_commands))
    code, _, err = run_cli(capsys, "list", "samplers")
    assert code == 130 and "interrupted" in err


@pytest.mark.slow  # a fresh interpreter (imports torch); the in-process test above covers the same path
def test_sys_exit_in_register_commands_subprocess(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    (tmp_path / "exit_cmds.py").write_text(
        "import sys\nfrom diffcore.plugins import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    sys.exit(0)\n"
    )
    env = {
        **__import__("os").environ,
        "PYTHONPATH": str(tmp_path),
        "DIFFCORE_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    code = (
        "import sys, exit_cmds; from diffcore import plugins, cli; "
        "plugins.register_plugin(exit_cmds); sys.exit(cli.main(['list', 'schedules']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "linear" in proc.stdout
    assert "exit_cmds" in proc.stderr and "SystemExit" in proc.stderr


# --------------------------------------------------------------------------- a tiny checkpoint

TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class-conditional tiny digits model trained for two steps."""
    import diffcore

    out = tmp_path_factory.mktemp("rel") / "run"
    diffcore.train(
        "digits",
        "unet",
        2,
        out,
        dataset_options={"limit": 64},
        model_config=TINY,
        batch_size=8,
        log_every=1,
        warmup_steps=1,
        device="cpu",
    )
    return out


@pytest.fixture(scope="module")
def zero_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with every weight zero: a freshly initialized UNet's exact-zero output."""
    from diffcore.pipeline import Pipeline

    pipe = Pipeline.load(run_dir, device="cpu")
    with torch.no_grad():
        for p in pipe.model.parameters():
            p.zero_()
    out = tmp_path_factory.mktemp("rel") / "zero"
    pipe.save(out)
    return out


def _one_line_error(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("diffcore: warning:")]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("diffcore: error:"), err
    assert "Traceback" not in err


def _gen(run: Path, *argv: object) -> list[str]:
    return ["generate", "--checkpoint", str(run), "--steps", "2", "--n", "2", *map(str, argv)]


# --------------------------------------------------------------------------- devices, bounds


def test_every_sampling_verb_takes_device_auto_by_default() -> None:
    import dataclasses

    from diffcore.tasks.anomaly.task import DetectParams
    from diffcore.tasks.denoise import DenoiseParams
    from diffcore.tasks.generation import GenerateParams
    from diffcore.tasks.img2img import TranslateParams
    from diffcore.tasks.text2image import Text2ImageParams

    for params in (GenerateParams, Text2ImageParams, TranslateParams, DenoiseParams, DetectParams):
        defaults = {f.name: f.default for f in dataclasses.fields(params)}
        assert defaults.get("device") == "auto", params.__name__
        assert defaults.get("quiet") is False, params.__name__


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--device", "meta"], "device 'meta'"),
        (["--seed", "99999999999999999999999"], "seed="),
        (["--guidance-scale", "nan", "--class-label", "1"], "guidance_scale=nan"),
        (["--guidance-scale", "-1", "--class-label", "1"], "guidance_scale=-1"),
        (["--steps", "1001"], "steps=1001"),
        (["--steps", "0"], "steps=0"),
        (["--n", "100000000"], "MAX_OUTPUT_BYTES"),
        (["--batch-size", "99999999999999999999999"], "batch_size="),
        (["--guidance-scale", "1e30", "--class-label", "1"], "guidance_scale=1e+30"),
    ],
)
def test_generate_bad_values_are_one_line(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], text: str
) -> None:
    code, _, err = run_cli(capsys, *_gen(run_dir, "--out", tmp_path / "g.png"), *argv)
    _one_line_error(code, err)
    assert text in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_sample_steps_zero_is_refused_not_defaulted(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    code, _, err = run_cli(
        capsys, "sample", "--checkpoint", str(run_dir), "--steps", "0", "--out", str(tmp_path / "s.png")
    )
    _one_line_error(code, err)
    assert "steps=0" in err


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--steps", "100000"], "steps=100000"),
        (["--mode", "inpaint", "--mask", "center", "--resample", "1000000"], "resample=1000000"),
        (["--mode", "inpaint", "--mask", "center", "--steps", "5000", "--resample", "100"], "MAX_REPAINT_STEPS"),
        (["--guidance-scale", "-2"], "guidance_scale=-2"),
        (["--seed", "-1"], "seed=-1"),
    ],
)
def test_translate_bounds(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], text: str
) -> None:
    image = tmp_path / "in.npy"
    np.save(image, np.zeros((8, 8), dtype=np.uint8))
    code, _, err = run_cli(
        capsys, "translate", "--checkpoint", str(run_dir), "--input", str(image), "--out", str(tmp_path / "o"), *argv
    )
    _one_line_error(code, err)
    assert text in err


def test_denoise_refuses_an_unknown_sampler_in_every_mode(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    image = tmp_path / "in.npy"
    np.save(image, np.zeros((8, 8), dtype=np.uint8))
    argv = ["denoise", "--checkpoint", str(run_dir), "--input", str(image), "--sigma", "25"]
    code, _, err = run_cli(capsys, *argv, "--output", str(tmp_path / "d.png"), "--sampler", "nope")
    _one_line_error(code, err)
    assert "'nope'" in err and not (tmp_path / "d.png").exists()


@pytest.mark.parametrize(
    ("argv", "text"),
    [(["--repeats", "99999999999999999999999"], "repeats="), (["--smooth", "1e30"], "smooth=1e+30")],
)
def test_detect_bounds(run_dir: Path, tmp_path: Path, capsys: Any, argv: list[str], text: str) -> None:
    images = tmp_path / "in.npy"
    np.save(images, np.zeros((2, 1, 8, 8), dtype=np.uint8))
    base = ["detect", "--checkpoint", str(run_dir), "--input", str(images), "--output", str(tmp_path / "s.json")]
    code, _, err = run_cli(capsys, *base, *argv)
    _one_line_error(code, err)
    assert text in err


# --------------------------------------------------------------------------- train flags


def test_train_bool_flags_are_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--steps", "1", "--bf16", "banana")
    _one_line_error(code, err)
    assert "'banana'" in err and not (tmp_path / "r").exists()


def test_train_device_and_sampler_are_checked_before_training(tmp_path: Path, capsys: Any) -> None:
    for argv, text in ((["--device", "meta"], "device 'meta'"), (["--sampler", "nope"], "'nope'")):
        code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--steps", "1", *argv)
        _one_line_error(code, err)
        assert text in err
        assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_train_overwrite_replaces_a_finished_run(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    argv = ["train", "--out", str(target), "--steps", "1", "--batch-size", "8", "--dataset-opt", "limit=16"]
    argv += ["--device", "cpu", "--warmup-steps", "1"]
    for key, value in TINY.items():
        argv += ["--model-opt", f"{key}={json.dumps(value)}"]
    code, _, err = run_cli(capsys, *argv)
    _one_line_error(code, err)
    assert "--overwrite" in err
    code, out, err = run_cli(capsys, *argv, "--overwrite")
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["steps"] == 1


# --------------------------------------------------------------------------- outputs


def _fake_generate(value: float) -> Any:
    def generate(self: Any, n: int, **kwargs: Any) -> torch.Tensor:
        callback = kwargs.get("callback")
        for i in range(kwargs.get("steps") or 2):
            if callback is not None:
                callback({"i": i})
        x = torch.linspace(-1.5, 1.5, n * 64).reshape(n, 1, 8, 8)
        return x if value == 0 else torch.full((n, 1, 8, 8), value)

    return generate


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_samples_fail_and_write_nothing(
    run_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, value: float
) -> None:
    from diffcore.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "generate", _fake_generate(value))
    out, npz = tmp_path / "g.png", tmp_path / "g.npz"
    code, _, err = run_cli(capsys, *_gen(run_dir, "--out", out, "--npz", npz, "--out-dir", tmp_path / "each"))
    _one_line_error(code, err)
    assert "NaN or inf" in err
    assert not out.exists() and not npz.exists() and not (tmp_path / "each").exists()


def test_guidance_rescale_on_a_zero_output_model_is_finite(zero_dir: Path, tmp_path: Path, capsys: Any) -> None:
    npz = tmp_path / "g.npz"
    argv = ["generate", "--checkpoint", str(zero_dir), "--n", "2", "--class-label", "1", "--npz", str(npz)]
    for steps in ("1", "3"):
        code, _, err = run_cli(capsys, *argv, "--guidance-scale", "3", "--guidance-rescale", "0.7", "--steps", steps)
        assert code == 0, err
        assert np.isfinite(np.load(npz)["samples"]).all()


def test_images_are_clipped_unless_no_clip(
    run_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffcore.pipeline import Pipeline

    monkeypatch.setattr(Pipeline, "generate", _fake_generate(0.0))
    npz = tmp_path / "g.npz"
    code, _, err = run_cli(capsys, *_gen(run_dir, "--npz", npz))
    assert code == 0, err
    clipped = np.load(npz)["samples"]
    assert clipped.min() == -1.0 and clipped.max() == 1.0
    code, _, err = run_cli(capsys, *_gen(run_dir, "--npz", npz, "--no-clip"))
    assert code == 0, err
    raw = np.load(npz)["samples"]
    assert raw.min() == pytest.approx(-1.5) and raw.max() == pytest.approx(1.5)


def test_png_metadata_and_out_dir(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    import diffcore
    from diffcore.io import read_png_info

    out, each = tmp_path / "g.png", tmp_path / "each"
    argv = _gen(run_dir, "--out", out, "--out-dir", each, "--seed", "7", "--class-label", "3", "--sampler", "euler")
    code, stdout, err = run_cli(capsys, *argv, "--guidance-scale", "2")
    assert code == 0, err
    assert json.loads(stdout)["out_dir"] == str(each)
    info = read_png_info(out)
    assert info["checkpoint"] == str(run_dir) and info["sampler"] == "euler" and info["steps"] == "2"
    assert info["seed"] == "7" and info["guidance_scale"] == "2.0" and info["class_label"] == "3"
    assert info["diffcore_version"] == diffcore.__version__
    files = sorted(p.name for p in each.iterdir())
    assert files == ["00000.png", "00001.png"]
    assert read_png_info(each / "00001.png")["index"] == "1"
    assert not [p for p in tmp_path.rglob("*.diffcore.tmp")]


def test_translate_and_denoise_pngs_carry_their_parameters(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from diffcore.io import read_png_info

    image = tmp_path / "in.npy"
    np.save(image, np.full((8, 8), 128, dtype=np.uint8))
    argv = ["translate", "--checkpoint", str(run_dir), "--input", str(image), "--steps", "2", "--seed", "5"]
    code, _, err = run_cli(capsys, *argv, "--out", str(tmp_path / "tr"))
    assert code == 0, err
    info = read_png_info(tmp_path / "tr" / "output.png")
    assert info["mode"] == "sdedit" and info["seed"] == "5" and info["checkpoint"] == str(run_dir)
    argv = ["denoise", "--checkpoint", str(run_dir), "--input", str(image), "--sigma", "25"]
    code, _, err = run_cli(capsys, *argv, "--output", str(tmp_path / "d.png"))
    assert code == 0, err
    info = read_png_info(tmp_path / "d.png")
    assert info["mode"] == "mmse" and info["sigma"] == "25.0" and "sampler" not in info


class _Terminal(io_module.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_unless_quiet(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = _gen(run_dir, "--npz", tmp_path / "g.npz", *(["--quiet"] if quiet else []))
    assert diffcore_cli.main(argv) == 0
    assert ("generate" in terminal.getvalue()) is not quiet


def test_no_progress_bar_when_stderr_is_not_a_terminal(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    code, _, err = run_cli(capsys, *_gen(run_dir, "--npz", tmp_path / "g.npz"))
    assert code == 0 and err == ""


# --------------------------------------------------------------------------- unwritable / full outputs


def test_unwritable_output_is_one_line_before_sampling(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, *_gen(run_dir, "--out", blocker / "g.png"))
    _one_line_error(code, err)
    assert str(blocker) in err


def test_full_disk_leaves_no_half_written_file(
    run_dir: Path, tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    npz = tmp_path / "g.npz"
    npz.write_bytes(b"previous")
    monkeypatch.setattr(np, "savez", full)
    code, _, err = run_cli(capsys, *_gen(run_dir, "--npz", npz))
    _one_line_error(code, err)
    assert "No space left" in err
    assert npz.read_bytes() == b"previous"  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.npz"]  # no temporary left


# --------------------------------------------------------------------------- sizes before allocation


def _npz_announcing(path: Path, shape: tuple[int, ...]) -> None:
    """An NPZ whose 'images' member's header announces ``shape`` float32 (the data is absent)."""
    header = io_module.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("images.npy", header.getvalue() + bytes(1024))


def test_npz_expanding_past_the_bound_is_refused_from_its_header(tmp_path: Path) -> None:
    from diffcore import io

    path = tmp_path / "bomb.npz"
    _npz_announcing(path, (1, 100_000, 100_000))
    assert path.stat().st_size < 10_000
    with pytest.raises(ValueError, match=r"37.3 GiB.*MAX_ARRAY_BYTES"):
        io.load_images(path)
    small = tmp_path / "small.npy"
    np.save(small, np.zeros((2, 8, 8), dtype=np.uint8))
    assert io.load_images(small).shape == (2, 1, 8, 8)


def _png_announcing(path: Path, width: int, height: int) -> None:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (CRC fixed): header-only bomb."""
    from PIL import Image

    buf = io_module.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))


def test_huge_png_is_refused_before_decoding(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    from diffcore import io

    path = tmp_path / "bomb.png"
    _png_announcing(path, 20000, 20000)
    with pytest.raises(ValueError, match=r"400000000 pixels.*MAX_PIXELS"):
        io.load_images(path)
    _png_announcing(path, 9000, 9000)  # under PIL's own bound, over diffcore's
    with pytest.raises(ValueError, match=r"9000x9000 pixels.*MAX_PIXELS"):
        io.load_images(path)
    code, _, err = run_cli(
        capsys, "translate", "--checkpoint", str(run_dir), "--input", str(path), "--out", str(tmp_path / "o")
    )
    _one_line_error(code, err)
    assert "MAX_PIXELS" in err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--lr", "inf"),
        ("--lr", "1e30"),
        ("--grad-clip", "inf"),
        ("--steps", "99999999999999999999999"),
        ("--seed", "1e30"),
    ],
)
def test_train_refuses_values_that_cannot_train(tmp_path: Path, capsys: Any, flag: str, value: str) -> None:
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), flag, value)
    _one_line_error(code, err)
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_a_diverged_training_is_one_line(tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffcore.training.api

    def diverge(**kwargs: Any) -> None:
        raise FloatingPointError("the loss is nan at step 3: lower --lr")

    monkeypatch.setattr(diffcore.training.api, "train", diverge)
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), "--lr", "0.5")
    _one_line_error(code, err)
    assert "the loss is nan at step 3" in err

"""``diffcore text2image --pipeline``, ``diffcore image2image`` and ``diffcore inpaint`` on a tiny
Stable Diffusion folder; bad inputs are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sd_tiny
import torch
from PIL import Image

from diffcore.cli import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sd_cli")
    return sd_tiny.save(sd_tiny.sd_pipeline(root, sched="euler"), root / "sd")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pictures")
    image = (sd_tiny.images(1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mask = (sd_tiny.center_mask(1)[0, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(image).save(root / "in.png")
    Image.fromarray(mask).save(root / "mask.png")
    return root / "in.png", root / "mask.png"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_text2image_pipeline(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cat.png"
    common = ("--steps", "2", "--n", "2", "--guidance-scale", "2", "--device", "cpu", "--quiet")
    result = _run(capsys, "text2image", "--pipeline", str(folder), "a photo of a cat", *common, "--out", str(out))
    assert result["shape"] == [3, 32, 32] and result["n"] == 2
    assert Image.open(out).size == (2 * 32 + 3, 32 + 2)  # two images, one row, 1-pixel padding
    arrays = tmp_path / "cat.npz"
    _run(capsys, "text2image", "--pipeline", str(folder), "a photo of a cat", *common, "--out", str(arrays))
    from diffcore.interop.diffusers import load_diffusers_pipeline

    want = load_diffusers_pipeline(folder).text2image(
        ["a photo of a cat"], num_images_per_prompt=2, steps=2, guidance_scale=2.0, seed=0
    )
    assert torch.allclose(torch.from_numpy(np.load(arrays)["samples"]), want, atol=1e-6)


def test_image2image_and_inpaint(
    folder: Path, pictures: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = pictures
    common = ("--pipeline", str(folder), "--image", str(image), "--steps", "3", "--device", "cpu")
    result = _run(capsys, "image2image", "a red dog", *common, "--strength", "0.5", "--out", str(tmp_path / "a.npz"))
    assert result["shape"] == [1, 3, 32, 32]
    result = _run(capsys, "inpaint", "a red dog", *common, "--mask", str(mask), "--out", str(tmp_path / "b.npz"))
    kept = np.load(tmp_path / "b.npz")["samples"]
    assert kept.shape == (1, 3, 32, 32) and kept.min() >= 0 and kept.max() <= 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("image2image", "x", "--image", "IMG", "--strength", "1.5"), "strength"),
        (("image2image", "x", "--strength", "0.5"), "--image"),
        (("inpaint", "x", "--image", "IMG"), "--mask"),
        (("image2image", "x", "--image", "IMG", "--dtype", "float64"), "dtype"),
    ],
)
def test_bad_inputs_are_one_line(
    argv: tuple[str, ...], message: str, folder: Path, pictures: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = tuple(str(pictures[0]) if a == "IMG" else a for a in argv)
    code = main([*argv, "--pipeline", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and len(err.splitlines()) == 1, err


def test_not_a_pipeline_folder(tmp_path: Path, pictures: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["image2image", "x", "--image", str(pictures[0]), "--pipeline", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and "model_index.json" in err


def test_text2image_pipeline_defaults_and_size(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --guidance-scale the folder's own default applies (SD: 7.5), not the diffcore text
    model's 3; --negative-prompt, --height and --width reach the pipeline."""
    common = ("--pipeline", str(folder), "a photo of a cat", "--steps", "2", "--n", "1", "--device", "cpu", "--quiet")
    _run(capsys, "text2image", *common, "--out", str(tmp_path / "a.npz"))
    _run(capsys, "text2image", *common, "--guidance-scale", "7.5", "--out", str(tmp_path / "b.npz"))
    _run(capsys, "text2image", *common, "--guidance-scale", "3", "--out", str(tmp_path / "c.npz"))
    a, b, c = (np.load(tmp_path / f"{k}.npz")["samples"] for k in "abc")
    assert np.array_equal(a, b) and not np.allclose(a, c)
    sized = ("--negative-prompt", "a dog", "--height", "48", "--width", "40")
    result = _run(capsys, "text2image", *common, *sized, "--out", str(tmp_path / "d.npz"))
    assert result["shape"] == [3, 48, 40]
    assert not np.allclose(np.load(tmp_path / "d.npz")["samples"][..., :32, :32], a)


def test_pipeline_only_options_need_a_pipeline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["text2image", "a cat", "--height", "64"]) == 2
    assert "height=64 needs --pipeline" in capsys.readouterr().err

"""Latent training on your own images (issue #15 point 6): ``diffcore train --dataset image-folder
--autoencoder DIR`` encodes the images once with a tiny AutoencoderKL (built from a config,
``save_pretrained``, no download), trains in latent space and generation decodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import diffcore
from diffcore.cli import main
from diffcore.training.latents import CACHE_NAME, latent_dataset

diffusers = pytest.importorskip("diffusers")
PIL = pytest.importorskip("PIL.Image")

TINY = ["--model-opt", "base_channels=16", "--model-opt", "channel_mult=[1,2]", "--model-opt", "groups=8"]
TINY += ["--model-opt", "num_res_blocks=1", "--model-opt", "attention_resolutions=[]"]
SCALE = 0.5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the cores are shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=SCALE,
    )
    out = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(10):
        pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        PIL.fromarray(pixels).save(root / f"img{i}.png")
    return root


def test_latents_are_the_scaled_posterior_mean_and_cached(vae_dir, images, tmp_path, monkeypatch):
    data = diffcore.get("datasets", "image-folder")(root=images, holdout=0.2)
    latent, record = latent_dataset(data, vae_dir, tmp_path)
    vae = diffusers.AutoencoderKL.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        want = vae.encode(data.train).latent_dist.mode() * SCALE
    assert latent.train.shape == (len(data.train), 4, 8, 8) and latent.shape == (4, 8, 8)
    torch.testing.assert_close(latent.train, want, rtol=1e-5, atol=1e-5)
    assert record["scaling_factor"] == SCALE and record["image_shape"] == [3, 16, 16]
    assert (tmp_path / CACHE_NAME).is_file()
    # encoded once: a second call reads the cache instead of encoding
    from diffcore.interop.components import autoencoder as ae

    def refuse(*a, **k):
        raise AssertionError("encoded again")

    monkeypatch.setattr(ae.Autoencoder, "encode", refuse)
    again, _ = latent_dataset(data, vae_dir, tmp_path)
    assert torch.equal(again.train, latent.train)
    # other images: the cache key differs, so it is not reused
    other = diffcore.get("datasets", "image-folder")(root=images, holdout=0.2, seed=1)
    with pytest.raises(AssertionError, match="encoded again"):
        latent_dataset(other, vae_dir, tmp_path)


def test_train_cli_with_autoencoder_trains_in_latent_space_and_generates_images(vae_dir, images, tmp_path):
    out = tmp_path / "run"
    code = main(
        ["train", "--dataset", "image-folder", "--dataset-opt", f"root={images}", "--autoencoder", str(vae_dir),
         "--steps", "2", "--batch-size", "4", "--out", str(out), "--device", "cpu", *TINY]
    )  # fmt: skip
    assert code == 0
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else None
    pipe = diffcore.Pipeline.load(out)
    assert pipe.run["autoencoder"]["path"] == str(vae_dir.resolve())
    assert tuple(pipe.run["dataset"]["shape"]) == (4, 8, 8)  # the model was trained on latents
    assert pipe.model.config["in_channels"] == 4
    assert config is None or "autoencoder" in json.dumps(config)
    images_out = pipe.generate(2, steps=3, seed=0)
    assert images_out.shape == (2, 3, 16, 16)  # decoded by the VAE
    assert torch.isfinite(images_out).all()
    png = tmp_path / "samples.png"
    assert main(["generate", "--checkpoint", str(out), "--n", "1", "--steps", "3", "--out", str(png)]) == 0
    assert PIL.open(png).size[0] >= 16  # the decoded image (with the grid's padding), not an 8x8 latent


def test_autoencoder_refuses_a_folder_without_config(images, tmp_path):
    data = diffcore.get("datasets", "image-folder")(root=images)
    with pytest.raises(ValueError, match="AutoencoderKL folder"):
        latent_dataset(data, tmp_path, None)

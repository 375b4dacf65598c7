"""Flow checkpoints through every task (issue #14): a tiny flow-matching UNet (digits), a text
UNet, a paired inpainting UNet and an MLP on a table, each trained a few steps, run through
generate, text2image, translate (SDEdit, RePaint, paired), denoise and detect (recon, dte), in
Python and on the command line; closed-form checks with the exact velocity of a Gaussian show
that the tasks' levels land where the flow path puts them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import TINY_CLI

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.cli import main
from diffcore.schedules import FlowSchedule
from diffcore.tasks import anomaly, denoise, img2img
from diffcore.tasks.anomaly.dte import _levels as dte_levels
from diffcore.tasks.levels import FLOW_T_MAX, fraction_of_sigma, fraction_to_time, sigma_range
from diffcore.tasks.noise_level import match_level
from diffcore.tasks.text2image import generate_from_prompts

TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}
DATA = {"limit": 64}
SHIFT = 3.0
FLOW = {"schedule": "flow", "schedule_options": {"shift": SHIFT}, "prediction": "flow"}
TRAIN = {"batch_size": 8, "warmup_steps": 1, "log_every": 1, "checkpoint_every": 3, "ema_decay": 0.0}


def _train_images(out: Path, **kw: object) -> Path:
    diffcore.train("digits", "unet", 3, out, dataset_options=DATA, model_config=TINY, **FLOW, **TRAIN, **kw)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return _train_images(tmp_path_factory.mktemp("flow") / "run", timestep_sampling="logit_normal")


@pytest.fixture(scope="module")
def pipe(run):
    return diffcore.Pipeline.load(run)


@pytest.fixture(scope="module")
def images(pipe) -> torch.Tensor:
    return torch.rand((3, *pipe.sample_shape), generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> tuple[Path, np.ndarray]:
    root = tmp_path_factory.mktemp("flow_table")
    z = np.random.default_rng(0).normal(size=(80, 1))
    values = np.hstack([10 + 2 * z, -3 + 0.5 * z, 100 + 20 * z])
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c"])
        writer.writerows(values.tolist())
    opts = {"path": str(root / "train.csv")}
    diffcore.train(
        "tabular",
        "mlp",
        3,
        root / "run",
        dataset_options=opts,
        model_config={"hidden": 16, "depth": 1},
        **FLOW,
        **TRAIN,
    )
    return root, values


def _finite(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert tuple(x.shape) == shape and bool(torch.isfinite(x).all())


def _cli(capsys, *argv: object) -> dict:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out) if out.strip() else {}


# --------------------------------------------------------------------------- the checkpoint


def test_the_checkpoint_is_a_flow_model(pipe):
    assert isinstance(pipe.schedule, FlowSchedule) and pipe.schedule.shift == SHIFT
    assert pipe.param.name == "flow" and pipe.run["train"]["timestep_sampling"] == "logit_normal"


# --------------------------------------------------------------------------- generate and text2image


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m", "unipc", "ddim", "ddpm", "euler_ancestral"])
def test_generate_with_any_sampler(pipe, sampler):
    _finite(pipe.generate(3, sampler=sampler, steps=3, class_labels=[0, 1, 2], guidance_scale=2.0), (3, 1, 8, 8))


def test_generate_command(run, tmp_path, capsys):
    result = _cli(
        capsys,
        "generate",
        "--checkpoint",
        run,
        "--n",
        4,
        "--steps",
        3,
        "--class-label",
        "all",
        "--out",
        tmp_path / "g.png",
        "--npz",
        tmp_path / "g.npz",
    )
    assert result["n"] == 4 and (tmp_path / "g.png").exists()
    _finite(torch.from_numpy(np.load(tmp_path / "g.npz")["samples"]), (4, 1, 8, 8))


def test_text2image_on_a_flow_text_model(tmp_path, capsys):
    encoder = {"name": "builtin", "config": {"dim": 32, "layers": 1, "heads": 2, "max_length": 8}}
    unet = {"in_channels": 1, "image_size": 8, **TINY}
    config = {"unet": unet, "encoder": encoder}
    run = tmp_path / "t"
    diffcore.train(
        "digits", "text_unet", 3, run, dataset_options=DATA, captions="digits", model_config=config, **FLOW, **TRAIN
    )
    text_pipe = diffcore.Pipeline.load(run)
    assert isinstance(text_pipe.schedule, FlowSchedule)
    _finite(generate_from_prompts(text_pipe, ["seven", "two"], n=2, steps=3, guidance_scale=3.0), (4, 1, 8, 8))
    _cli(capsys, "text2image", "seven", "--checkpoint", run, "--n", 2, "--steps", 3, "--out", tmp_path / "t.npz")
    _finite(torch.from_numpy(np.load(tmp_path / "t.npz")["samples"]), (2, 1, 8, 8))


# --------------------------------------------------------------------------- translate


def test_sdedit_strengths_and_samplers(pipe, images):
    for sampler in ("euler", "dpmpp_2m", "unipc", "heun"):
        _finite(img2img.sdedit(pipe, images, [0.2, 0.6, 1.0], sampler=sampler, steps=3), (3, 1, 8, 8))
    # strength 1 is pure noise (up to 1e-6 of the input): the input no longer matters
    z = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    a = img2img.sdedit(pipe, images, 1.0, sampler="euler", steps=3, noise=z)
    b = img2img.sdedit(pipe, -images, 1.0, sampler="euler", steps=3, noise=z)
    assert (a - b).abs().max() < 1e-4
    near = img2img.sdedit(pipe, images, 0.02, sampler="euler", steps=3, noise=z)
    assert (near - images).abs().max() < 0.2  # a small strength stays close to the input


def test_repaint_keeps_the_known_pixels(pipe, images):
    for sampler in ("ddpm", "ddim", "euler_ancestral"):
        out = img2img.repaint(pipe, images, "center", sampler=sampler, steps=4, jump_length=2, resample=2)
        _finite(out, (3, 1, 8, 8))
        keep = torch.ones(8, 8, dtype=torch.bool)
        keep[2:6, 2:6] = False
        assert torch.equal(out[..., keep], images[..., keep])


def test_paired_translation_on_a_flow_model(tmp_path, images):
    paired = diffcore.Pipeline.load(_train_images(tmp_path / "inpaint", task_condition="inpainting"))
    out = img2img.translate(paired, images, mask="bottom-half", steps=3)
    _finite(out, (3, 1, 8, 8))
    assert torch.equal(out[..., :4, :], images[..., :4, :])


def test_translate_command_every_mode(run, tmp_path, images, capsys):
    np.save(tmp_path / "in.npy", images.numpy())
    for mode, extra in (
        ("sdedit", ["--strength", 0.7]),
        ("inpaint", ["--mask", "center", "--resample", 2, "--jump-length", 2]),
    ):
        result = _cli(
            capsys,
            "translate",
            "--checkpoint",
            run,
            "--input",
            tmp_path / "in.npy",
            "--mode",
            mode,
            "--steps",
            4,
            "--out",
            tmp_path / mode,
            *extra,
        )
        assert result["mode"] == mode and result["shape"] == [1, 8, 8]
        _finite(torch.from_numpy(np.load(tmp_path / mode / "output.npz")["images"]), (3, 1, 8, 8))
    _train_images(tmp_path / "sr", task_condition="super_resolution", task_condition_options={"factor": 2})
    np.save(tmp_path / "low.npy", images[:, :, ::2, ::2].numpy())
    _cli(
        capsys,
        "translate",
        "--checkpoint",
        tmp_path / "sr",
        "--input",
        tmp_path / "low.npy",
        "--mode",
        "paired",
        "--steps",
        3,
        "--out",
        tmp_path / "paired",
    )
    _finite(torch.from_numpy(np.load(tmp_path / "paired" / "output.npz")["images"]), (3, 1, 8, 8))


# --------------------------------------------------------------------------- denoise


def test_denoise_modes(pipe, images):
    noisy = images + 0.2 * torch.randn(images.shape, generator=torch.Generator().manual_seed(2))
    _finite(denoise.denoise(pipe, noisy, 0.2), (3, 1, 8, 8))
    _finite(denoise.denoise(pipe, noisy, "auto", mode="sample", steps=3), (3, 1, 8, 8))
    _finite(denoise.denoise(pipe, noisy, [0.1, 0.2, 0.4], samples=2, sampler="dpmpp_2m", steps=3), (3, 1, 8, 8))
    big = torch.nn.functional.interpolate(noisy, size=(12, 12))  # tiled
    _finite(denoise.denoise(pipe, big, 0.2), (3, 1, 12, 12))


def test_denoise_command(run, tmp_path, images, capsys):
    np.save(tmp_path / "noisy.npy", (images + 0.1 * torch.randn(images.shape)).numpy())
    result = _cli(
        capsys,
        "denoise",
        "--checkpoint",
        run,
        "--input",
        tmp_path / "noisy.npy",
        "--sigma",
        25,
        "--output",
        tmp_path / "out.npz",
    )
    assert result["n"] == 3 and (tmp_path / "out.npz").exists()


# --------------------------------------------------------------------------- detect


def test_detect_images(pipe, images):
    for method, options in (
        ("recon", {"repeats": 2}),
        ("recon", {"depth": [0.3, 700.0], "sampler": "euler", "steps": 2, "repeats": 1}),
        ("dte", {"levels": 5}),
    ):
        det = anomaly.detect(pipe, images, method=method, progress=False, **options)
        _finite(det.scores, (3,))
        assert det.maps.shape == (3, 8, 8)
    dte = anomaly.dte_scores(pipe, images, levels=5, progress=False)
    assert bool(((dte.scores >= 0) & (dte.scores <= 1)).all())
    with pytest.raises(ValueError, match="timesteps go up to 999.999"):
        anomaly.detect(pipe, images, depth=1000.0)


def test_detect_tables_and_commands(table, run, tmp_path, images, capsys):
    root, values = table
    table_pipe = diffcore.Pipeline.load(root / "run")
    assert isinstance(table_pipe.schedule, FlowSchedule)
    x = anomaly.standardize(table_pipe, values[:6])
    for method in ("recon", "dte"):
        det = (
            anomaly.detect(table_pipe, x, method=method, progress=False, levels=5)
            if method == "dte"
            else (anomaly.detect(table_pipe, x, progress=False, repeats=2))
        )
        _finite(det.scores, (6,))
        result = _cli(
            capsys,
            "detect",
            "--checkpoint",
            root / "run",
            "--input",
            root / "train.csv",
            "--method",
            method,
            "--levels",
            4,
            "--repeats",
            1,
            "--output",
            tmp_path / f"table_{method}.json",
        )
        assert result["n"] == 80 and math.isfinite(result["score_max"])
    np.save(tmp_path / "imgs.npy", images.numpy())
    result = _cli(
        capsys,
        "detect",
        "--checkpoint",
        run,
        "--input",
        tmp_path / "imgs.npy",
        "--method",
        "dte",
        "--levels",
        4,
        "--calibrate",
        tmp_path / "imgs.npy",
        "--output",
        tmp_path / "img.json",
    )
    assert result["n"] == 3 and result["threshold"] is not None


# --------------------------------------------------------------------------- closed form


def test_levels_on_a_flow_schedule():
    s = FlowSchedule(shift=SHIFT)
    u = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    t = fraction_to_time(s, u)
    want = SHIFT * u / (1 + (SHIFT - 1) * u)
    want[-1] = FLOW_T_MAX
    assert torch.allclose(t, 1000 * want, rtol=1e-12)
    sigma = want / (1 - want)
    assert torch.allclose(fraction_of_sigma(s, sigma), torch.cat([u[:-1], u.new_tensor([1.0])]), atol=1e-5)
    lo, hi = sigma_range(s)
    first = SHIFT * 1e-3 / (1 + (SHIFT - 1) * 1e-3)
    assert lo == pytest.approx(first / (1 - first)) and hi == math.inf
    # denoising's level matching: sigma 1 is flow time 0.5, sigma 3 is 0.75, whatever the shift
    tt, alpha, std = match_level(s, torch.tensor([1.0, 3.0]))
    assert torch.allclose(tt, torch.tensor([500.0, 750.0], dtype=torch.float64))
    assert torch.allclose(alpha, torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert torch.allclose(std / alpha, torch.tensor([1.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="outside the model's range"):
        match_level(s, torch.tensor([1e-5]))
    sig, times, a, d = dte_levels(s, 6, 1.0)  # log-spaced from the first level to sigma 50, on the flow path
    assert sig[0] == pytest.approx(lo) and sig[-1] == pytest.approx(50.0)
    assert torch.allclose(a + d, torch.ones(6, dtype=torch.float64)) and torch.allclose(d / a, sig)
    assert torch.allclose(times, 1000 * sig / (1 + sig))


C = 0.5  # the data: N(0, C^2 I) over 8x8 single-channel images


def _gaussian_velocity(schedule: FlowSchedule):
    exact = exact_model(GaussianMixture(torch.zeros(1, 64), torch.full((1, 64), C), torch.ones(1)), schedule, "flow")
    return lambda x, t, cond=None: exact(x.flatten(1), t).reshape(x.shape)


@pytest.mark.parametrize("shift", [1.0, SHIFT])
def test_denoise_lands_on_the_flow_level_of_the_noise(shift):
    """y = x0 + sigma n is the flow state (1 - t) y at t = sigma / (1 + sigma): with the exact
    velocity of N(0, C^2), the one-step estimate is the posterior mean C^2 / (C^2 + sigma^2) y and
    the ODE from there lands on C y / sqrt(C^2 + sigma^2)."""
    schedule = FlowSchedule(shift=shift)
    model = _gaussian_velocity(schedule)
    g = torch.Generator().manual_seed(4)
    sigma = torch.tensor([0.1, 0.3, 0.8], dtype=torch.float64)
    y = (
        C * torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
        + sigma.reshape(-1, 1, 1, 1) * torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    ).float()
    s4 = sigma.reshape(-1, 1, 1, 1)
    mean = denoise.denoise(model, y, sigma, schedule=schedule, prediction="flow", clamp=False)
    torch.testing.assert_close(mean.double(), C**2 / (C**2 + s4**2) * y.double(), rtol=1e-5, atol=1e-5)
    ode = denoise.denoise(
        model, y, sigma, mode="sample", sampler="heun", steps=40, schedule=schedule, prediction="flow", clamp=False
    )
    torch.testing.assert_close(ode.double(), C / (C**2 + s4**2).sqrt() * y.double(), rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- diffcore train on the command line


def test_train_command_flow_and_reflow(run, tmp_path, capsys):
    out = tmp_path / "cli"
    _cli(
        capsys,
        "train",
        "--dataset-opt",
        "limit=32",
        *TINY_CLI,
        "--schedule",
        "flow",
        "--schedule-opt",
        "shift=2",
        "--prediction",
        "flow",
        "--timestep-sampling",
        "mode",
        "--mode-scale",
        "0.5",
        "--steps",
        2,
        "--batch-size",
        4,
        "--out",
        out,
    )
    trained = diffcore.Pipeline.load(out)
    assert trained.param.name == "flow" and trained.schedule == FlowSchedule(shift=2.0)
    assert trained.run["train"]["timestep_sampling"] == "mode" and trained.run["train"]["mode_scale"] == 0.5
    result = _cli(
        capsys,
        "train",
        "--reflow-from",
        run,
        "--pairs",
        4,
        "--pair-sampler",
        "euler",
        "--pair-steps",
        2,
        "--steps",
        1,
        "--batch-size",
        4,
        "--out",
        tmp_path / "reflow",
    )
    reflowed = diffcore.Pipeline.load(result["out"])
    assert reflowed.run["reflow"]["n"] == 4 and reflowed.run["reflow"]["sampler"] == "euler"
    assert reflowed.run["reflow"]["steps"] == 2 and reflowed.run["reflow"]["teacher"] == str(run)


REFLOW_EXTRA = ["--steps", "1", "--batch-size", "4"]
PLAIN_EXTRA = ["--steps", "1", "--dataset-opt", "limit=16"]


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--reflow-from", "{run}", "--pairs", "0"], "--pairs: 0 must be an integer >= 1"),
        (["--reflow-from", "{run}", "--pair-steps", "x"], "--pair-steps: invalid integer: 'x'"),
        (["--reflow-from", "{run}", "--pair-sampler", "nope"], "--pair-sampler 'nope' is not a registered sampler"),
        (["--reflow-from", "{run}", "--schedule", "flow"], "--schedule: a reflowed model takes its dataset"),
        (["--reflow-from", "{tmp}/none"], "no checkpoint"),
        (["--pairs", "4"], "--pairs only apply with --reflow-from"),
        (["--prediction", "velocity"], "argument --prediction: invalid choice: 'velocity'"),
        (["--timestep-sampling", "cosine"], "argument --timestep-sampling: invalid choice: 'cosine'"),
        (["--schedule", "edm", "--prediction", "edm", "--timestep-sampling", "logit_normal"], "EDM schedule"),
    ],
)
def test_bad_train_flags_are_one_line(run, tmp_path, capsys, argv, text):
    extra = REFLOW_EXTRA if "--reflow-from" in argv else PLAIN_EXTRA
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in argv]
    code = main(["train", *argv, *extra, "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("diffcore: error: train") and text in err and err.count("\n") == 1, err

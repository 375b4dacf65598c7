"""Trainer, checkpoints, Pipeline, the train/sample commands and torchrun DDP."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffcore
from diffcore.cli import main
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from diffcore.training.objective import Objective

# the TINY model as `diffcore train` options
TINY_CLI = [
    "--model-opt",
    "base_channels=16",
    "--model-opt",
    "channel_mult=[1,2]",
    "--model-opt",
    "groups=8",
    "--model-opt",
    "num_res_blocks=1",
]
TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}
DATA = {"limit": 240}


def _train(out: Path, steps: int, resume: bool = False, **kw):
    kw.setdefault("batch_size", 16)
    kw.setdefault("checkpoint_every", 3)
    kw.setdefault("log_every", 1)
    kw.setdefault("warmup_steps", 2)
    return diffcore.train("digits", "unet", steps, out, dataset_options=DATA, model_config=TINY, resume=resume, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = load_checkpoint(path / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim."))}


def test_resume_continues_exactly(tmp_path):
    _train(tmp_path / "once", 6)
    _train(tmp_path / "twice", 3)
    _train(tmp_path / "twice", 6, resume=True)
    a, b = _weights(tmp_path / "once"), _weights(tmp_path / "twice")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    metrics = [json.loads(line) for line in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(m["loss"]) and m["images_per_s"] > 0 for m in metrics if "loss" in m)
    assert (tmp_path / "once" / "loss.png").stat().st_size > 0
    assert json.loads((tmp_path / "once" / "config.json").read_text())["model"]["name"] == "unet"


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _train(tmp_path, 3)
    before = _weights(tmp_path)
    import diffcore.training.checkpoint as ck

    def dying_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")  # the half-written temporary file
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(ck, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, 6, resume=True)
    after = _weights(tmp_path)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_checkpoints_are_refused_without_running_them(tmp_path, writer):
    marker = tmp_path / "marker.txt"
    bad = tmp_path / "checkpoint.safetensors"
    if writer == "pickle":
        bad.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"x": _Payload(marker)}, bad)
    with pytest.raises(CheckpointError, match="pickle"):
        Pipeline.load(tmp_path)
    assert not marker.exists()


def test_truncated_or_foreign_files_give_clear_errors(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(100)}, {"run": {}})
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "short.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="run config"):
        Pipeline.load(path)


def test_pipeline_roundtrip_and_class_guidance(tmp_path):
    pipe = _train(tmp_path / "run", 3)
    loaded = Pipeline.load(tmp_path / "run")
    a = pipe.generate(4, steps=4, seed=1, class_labels=[0, 1, 2, 3], guidance_scale=2.0)
    b = loaded.generate(4, steps=4, seed=1, class_labels=[0, 1, 2, 3], guidance_scale=2.0)
    assert a.shape == (4, 1, 8, 8) and torch.allclose(a, b, atol=1e-6)
    saved = loaded.save(tmp_path / "exported")
    again = Pipeline.load(saved)
    assert torch.allclose(again.generate(2, steps=3, seed=0), loaded.generate(2, steps=3, seed=0), atol=1e-6)
    with pytest.raises(ValueError, match="class labels must be in"):
        loaded.generate(2, class_labels=[10, 1])
    with pytest.raises(ValueError, match="n=0"):
        loaded.generate(0)


@pytest.mark.parametrize(
    "prediction,weighting,schedule",
    [
        ("v_prediction", "min_snr", "linear"),
        ("sample", "uniform", "squaredcos_cap_v2"),
        ("edm", "edm", "edm"),
        ("epsilon", "edm", "scaled_linear"),
    ],
)
@pytest.mark.slow
def test_parameterizations_and_weightings_train(tmp_path, prediction, weighting, schedule):
    model = dict(TINY, time_input="sigma" if schedule == "edm" else "timestep")
    pipe = diffcore.train(
        "digits",
        "unet",
        2,
        tmp_path,
        dataset_options=DATA,
        model_config=model,
        schedule=schedule,
        prediction=prediction,
        loss_weighting=weighting,
        batch_size=8,
        log_every=1,
        bf16=(weighting == "edm"),
    )
    losses = [json.loads(x)["loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert torch.isfinite(pipe.generate(2, steps=3)).all()


def test_objective_noises_with_the_parameterization_target():
    sched = diffcore.get("schedules", "linear")()
    for name in ("epsilon", "v_prediction", "sample"):
        obj = Objective(sched, make_parameterization(name), "min_snr", 5.0)
        g = torch.Generator().manual_seed(0)
        index, table, time_, weight = obj.draw(64, g)
        x0, eps = torch.randn(64, 3), torch.randn(64, 3)
        x_t, target = diffcore.ops.forward_noise(x0, eps, index, table.float())
        abar = sched.alphas_cumprod[index].float()[:, None]
        assert torch.allclose(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-5)
        want = {"epsilon": eps, "sample": x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[name]
        assert torch.allclose(target, want, atol=1e-5)
        snr = abar[:, 0] / (1 - abar[:, 0])
        expect = {
            "epsilon": snr.clamp(max=5) / snr,
            "v_prediction": snr.clamp(max=5) / (snr + 1),
            "sample": snr.clamp(max=5),
        }[name]
        assert torch.allclose(weight, expect, rtol=1e-4)


def test_train_and_sample_commands(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "digits",
            "--dataset-opt",
            "limit=200",
            "--model",
            "unet",
            *TINY_CLI,
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (out / "checkpoint.safetensors").exists()
    grid = tmp_path / "grid.png"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(out),
                "--n",
                "6",
                "--steps",
                "4",
                "--out",
                str(grid),
                "--class-label",
                "3",
                "--guidance-scale",
                "2",
            ]
        )
        == 0
    )
    from PIL import Image

    with Image.open(grid) as im:
        assert im.size[0] > 8 and im.size[1] > 8
    npz = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(out), "--n", "3", "--steps", "3", "--out", str(npz)]) == 0
    import numpy as np

    assert np.load(npz)["samples"].shape == (3, 1, 8, 8)


@pytest.mark.parametrize(
    "argv,text",
    [
        (["train", "--steps", "0", "--out", "{tmp}/a"], "steps=0"),
        (["train", "--dataset", "nope", "--out", "{tmp}/b"], "nope"),
        (["train", "--steps", "2", "--resume", "--out", "{tmp}/c"], "does not exist"),
        (["train", "--lr-schedule", "linear", "--out", "{tmp}/d"], "lr_schedule"),
        (["sample", "--checkpoint", "{tmp}/missing"], "no checkpoint"),
    ],
)
def test_bad_command_input_is_one_clear_line(tmp_path, capsys, argv, text):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and text in err and "Traceback" not in err


@pytest.mark.parametrize("dataset", ["digits", "tabular"])
def test_zero_steps_is_refused_before_anything_is_built(tmp_path, dataset):
    """steps=0 is a bad value, not "no steps given" (which means the default, or a table's budget)."""
    options = {"builtin": "breast_cancer"} if dataset == "tabular" else {}
    with pytest.raises(ValueError, match="steps=0"):
        diffcore.train(dataset, steps=0, out=tmp_path / "run", dataset_options=options)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "diffcore",
        "train",
        "--dataset",
        "digits",
        "--dataset-opt",
        "limit=200",
        *TINY_CLI,
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--checkpoint-every",
        "2",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    checkpoints = [r for r in records if "checkpoint" in r]
    assert [c["checkpoint"] for c in checkpoints] == [2, 4]  # written once each: only rank 0 writes
    for c in checkpoints:
        assert len(c["rank_checksums"]) == 2 and c["rank_checksums"][0] == c["rank_checksums"][1]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.safetensors",
        "config.json",
        "loss.png",
        "metrics.jsonl",
    ]
    _, meta = load_checkpoint(out / "checkpoint.safetensors")
    assert meta["world_size"] == 2 and meta["step"] == 4


@pytest.mark.parametrize("name,channels", [("super_resolution", 1), ("inpainting", 2)])
def test_task_condition_training_feeds_the_source_as_channels(tmp_path, name, channels):
    pipe = diffcore.train(
        "digits",
        "unet",
        2,
        tmp_path,
        dataset_options=DATA,
        model_config=TINY,
        task_condition=name,
        batch_size=8,
        log_every=1,
    )
    assert pipe.run["task_condition"]["name"] == name
    assert pipe.model.config["concat_channels"] == channels
    loaded = Pipeline.load(tmp_path)
    assert loaded.run["task_condition"] == pipe.run["task_condition"]


def test_task_conditions_make_sources():
    from diffcore.conditions import make_task_condition

    x = torch.randn(4, 1, 8, 8)
    sr = make_task_condition("super_resolution", factor=2)
    src = sr.source(x)
    assert src.shape == x.shape and torch.allclose(src[:, :, ::2, ::2], torch.nn.functional.avg_pool2d(x, 2))
    inp = make_task_condition("inpainting")
    s2 = inp.make(x, torch.Generator().manual_seed(0))
    mask = s2[:, 1:]
    assert s2.shape == (4, 2, 8, 8) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(s2[:, :1] * mask, torch.zeros_like(mask))  # masked pixels are zeroed
    with pytest.raises(ValueError, match="factor=1"):
        make_task_condition("super_resolution", factor=1)
    with pytest.raises(ValueError, match="colorize"):
        make_task_condition("colorize")


def test_safetensors_whose_header_length_starts_with_0x80_loads(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 is legal."""
    for pad in range(300):
        path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.arange(3.0)}, {"run": {}, "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length with low byte 0x80 in the padding range")
    tensors, meta = load_checkpoint(path)
    assert torch.equal(tensors["w"], torch.arange(3.0)) and len(meta["pad"]) == pad


@pytest.mark.parametrize(
    "model, shape, meta, classes, want",
    [
        (
            "unet",
            (5, 1, 8, 8),
            {"channels": 1, "height": 8},
            10,
            {
                "in_channels": 1,
                "image_size": 8,
                "num_classes": 10,
                "base_channels": 64,
                "channel_mult": [1, 2],
                "attention_resolutions": [4],
            },
        ),
        (
            "unet",
            (5, 3, 28, 28),
            {},
            0,
            {
                "in_channels": 3,
                "image_size": 28,
                "num_classes": 0,
                "base_channels": 64,
                "channel_mult": [1, 2, 2],
                "attention_resolutions": [7],
            },
        ),
        (
            "unet",
            (5, 3, 64, 64),
            {"channels": 3, "height": 64},
            2,
            {"in_channels": 3, "image_size": 64, "num_classes": 2},
        ),
        ("mlp", (5, 30), {}, 2, {"dim": 30, "num_classes": 2}),
        ("mlp", (5, 7), {}, None, {"dim": 7, "num_classes": 0}),
    ],
)
def test_default_model_config_comes_from_the_factory(model, shape, meta, classes, want):
    """The built-ins' default_config(data) give the configs diffcore.train has always picked."""
    from types import SimpleNamespace

    from diffcore.training.api import default_model_config

    data = SimpleNamespace(train=torch.zeros(shape), meta=meta, num_classes=classes)
    assert default_model_config(model, data) == want
    assert diffcore.get("models", model).default_config(data) == want
    diffcore.get("models", model)(**want)  # a config the model accepts


def test_flow_objective_noises_on_the_straight_path_with_the_velocity_target():
    from diffcore.training.objective import draw_times

    sched = diffcore.get("schedules", "flow")(shift=3.0)
    obj = Objective(sched, make_parameterization("flow"), timestep_sampling="logit_normal")
    index, table, time_, weight = obj.draw(4096, torch.Generator().manual_seed(0))
    u = draw_times("logit_normal", 4096, torch.Generator().manual_seed(0))
    t = 3 * u / (1 + 2 * u)  # the schedule's shift applies to training times as to sampling times
    assert torch.allclose(time_.double(), 1000 * t, rtol=1e-6) and torch.equal(weight, torch.ones(4096))
    x0, eps = torch.randn(4096, 3), torch.randn(4096, 3)
    x_t, target = diffcore.ops.forward_noise(x0, eps, index, table.float())
    tt = t.float()[:, None]
    assert torch.allclose(x_t, (1 - tt) * x0 + tt * eps, atol=1e-5)
    assert torch.allclose(target, eps - x0, atol=1e-6)
    assert obj.input_scale(time_) is None  # a flow model sees its state unscaled


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal", "mode"])
def test_timestep_samplings_follow_sd3(sampling):
    """Esser et al. 2024, eq. 19-20: logit-normal and mode sampling put weight mid-path; all stay in [0, 1]."""
    from diffcore.training.objective import draw_times

    u = draw_times(sampling, 200_000, torch.Generator().manual_seed(1), logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
    assert float(u.min()) >= 0 and float(u.max()) <= 1 and abs(float(u.mean()) - 0.5) < 0.01
    middle = float(((u > 0.25) & (u < 0.75)).double().mean())
    assert middle == pytest.approx({"uniform": 0.5, "logit_normal": 0.7281, "mode": 0.7328}[sampling], abs=0.01)
    shifted = draw_times("logit_normal", 100_000, torch.Generator().manual_seed(1), logit_mean=1.0)
    assert float(shifted.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)  # mean 1: noisier


def test_bad_timestep_sampling_options_are_named():
    with pytest.raises(ValueError, match="timestep_sampling"):
        diffcore.training.TrainConfig(timestep_sampling="cosmap")
    with pytest.raises(ValueError, match="logit_std"):
        diffcore.training.TrainConfig(logit_std=0.0)
    with pytest.raises(ValueError, match="mode_scale"):
        diffcore.training.TrainConfig(mode_scale=3.0)
    with pytest.raises(ValueError, match="EDM"):
        Objective(diffcore.get("schedules", "edm")(), make_parameterization("edm"), timestep_sampling="mode")


def test_flow_training_resumes_exactly(tmp_path):
    """diffcore.train(..., prediction="flow") on the flow schedule: finite velocity losses, a reloadable
    run config, and N + resume + N steps equal to 2N steps as for diffusion models."""
    kw = dict(schedule="flow", schedule_options={"shift": 3.0}, prediction="flow", timestep_sampling="mode")
    _train(tmp_path / "once", 4, **kw)
    _train(tmp_path / "twice", 2, **kw)
    _train(tmp_path / "twice", 4, resume=True, **kw)
    a, b = _weights(tmp_path / "once"), _weights(tmp_path / "twice")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    run = json.loads((tmp_path / "once" / "config.json").read_text())
    assert run["prediction"] == {"name": "flow"} and run["schedule"]["name"] == "flow"
    assert run["train"]["timestep_sampling"] == "mode"
    losses = [
        json.loads(x)["loss"] for x in (tmp_path / "once" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    assert len(losses) == 4 and all(math.isfinite(v) and 0.5 < v < 5 for v in losses)
    loaded = Pipeline.load(tmp_path / "once")
    assert loaded.schedule == diffcore.get("schedules", "flow")(shift=3.0) and loaded.param.name == "flow"

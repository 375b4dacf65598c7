"""The ``generate`` task and the ``diffcore generate`` command on tiny digits models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import diffcore
from diffcore.cli import main
from diffcore.samplers import SAMPLERS
from diffcore.tasks.generation import GenerateParams, GenerateTask

TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}


def _train(out: Path, **model: object) -> Path:
    diffcore.train(
        "digits",
        "unet",
        2,
        out,
        dataset_options={"limit": 120},
        model_config={**TINY, **model},
        batch_size=8,
        log_every=1,
        warmup_steps=1,
    )
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A class-conditional (10 digit classes) model trained for two steps."""
    return _train(tmp_path_factory.mktemp("gen") / "cond")


@pytest.fixture(scope="module")
def uncond_dir(tmp_path_factory) -> Path:
    """The same model without a class embedding."""
    return _train(tmp_path_factory.mktemp("gen") / "uncond", num_classes=0)


def _generate(capsys, run, *argv: object) -> dict:
    """``diffcore generate --checkpoint RUN ARGV...`` succeeds; its JSON summary."""
    code = main(["generate", "--checkpoint", str(run), *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_png_and_npz_have_the_right_shapes_and_range(run_dir, tmp_path, capsys):
    png, npz = tmp_path / "g.png", tmp_path / "g.npz"
    result = _generate(capsys, run_dir, "--n", 6, "--steps", 3, "--out", png, "--npz", npz)
    assert result["png"] == str(png) and result["npz"] == str(npz)
    assert result["n"] == 6 and result["steps"] == 3 and result["sampler"] == "dpmpp_2m"
    assert result["seconds"] > 0 and result["images_per_s"] > 0 and "label_counts" not in result
    from PIL import Image

    with Image.open(png) as im:  # 3x2 grid of 8x8 images, 1 px padding, upscaled 8x for viewing
        assert im.size == ((3 * 9 + 1) * 8, (2 * 9 + 1) * 8)
    arrays = np.load(npz)
    assert arrays["samples"].shape == (6, 1, 8, 8) and arrays["samples"].dtype == np.float32
    assert np.isfinite(arrays["samples"]).all()
    assert arrays["images"].shape == (6, 8, 8, 1) and arrays["images"].dtype == np.uint8
    expected = np.round((np.clip(arrays["samples"], -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.abs(arrays["images"].astype(int) - expected.astype(int)).max() <= 1
    assert (arrays["labels"] == -1).all()  # unconditional samples


def test_npz_only_writes_no_png(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _generate(capsys, run_dir, "--n", 2, "--steps", 2, "--npz", "only.npz")
    assert "png" not in result and (tmp_path / "only.npz").exists()
    assert not (tmp_path / "samples.png").exists()


def test_class_conditional_with_guidance_and_rescale(run_dir, tmp_path, capsys):
    npz = tmp_path / "c.npz"
    argv = [run_dir, "--n", 4, "--steps", 3, "--class-label", 7, "--out", npz]
    plain = _generate(capsys, *argv, "--guidance-scale", 3)
    a = np.load(npz)["samples"]
    guided = _generate(capsys, *argv, "--guidance-scale", 3, "--guidance-rescale", 0.7)
    b = np.load(npz)
    assert plain["guidance_scale"] == 3.0 and guided["guidance_rescale"] == 0.7
    assert guided["label_counts"] == {"7": 4} and (b["labels"] == 7).all()
    assert np.isfinite(b["samples"]).all() and not np.allclose(a, b["samples"])  # rescale changed the result
    # per-sample labels, one each
    per = _generate(capsys, run_dir, "--n", 3, "--steps", 2, "--class-label", 1, 2, 5, "--out", npz)
    assert per["label_counts"] == {"1": 1, "2": 1, "5": 1}
    assert np.load(npz)["labels"].tolist() == [1, 2, 5]


def test_all_gives_balanced_labels_one_class_per_column(run_dir, tmp_path, capsys):
    npz, png = tmp_path / "all.npz", tmp_path / "all.png"
    balanced = ["--class-label", "all", "--guidance-scale", 2, "--batch-size", 8]
    result = _generate(capsys, run_dir, "--n", 25, "--steps", 2, *balanced, "--out", png, "--npz", npz)
    counts = np.bincount(np.load(npz)["labels"], minlength=10)
    assert counts.sum() == 25 and counts.max() - counts.min() <= 1 and (counts > 0).all()
    assert sum(result["label_counts"].values()) == 25
    from PIL import Image

    with Image.open(png) as im:  # 10 columns (one per class), 3 rows
        assert im.size == ((10 * 9 + 1) * 8, (3 * 9 + 1) * 8)


def test_seed_makes_runs_repeatable(run_dir, tmp_path, capsys):
    def run(seed: int, name: str, sampler: str = "euler_ancestral") -> np.ndarray:
        path = tmp_path / name
        guided = ["--class-label", 4, "--guidance-scale", 1.5, "--seed", seed]
        _generate(capsys, run_dir, "--n", 3, "--steps", 3, "--sampler", sampler, *guided, "--out", path)
        return np.load(path)["samples"]

    first, again, other = run(5, "a.npz"), run(5, "b.npz"), run(6, "c.npz")
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_builtin_sampler_runs_through_the_task(run_dir, tmp_path, sampler):
    assert sampler in diffcore.available("samplers")
    params = GenerateParams(
        checkpoint=str(run_dir),
        n=2,
        sampler=sampler,
        steps=3,
        class_label="3",
        guidance_scale=2.0,
        npz=str(tmp_path / "s.npz"),
    )
    result = GenerateTask().run(params)
    assert result["sampler"] == sampler and result["npz"] == str(tmp_path / "s.npz")
    samples = np.load(tmp_path / "s.npz")["samples"]
    assert samples.shape == (2, 1, 8, 8) and np.isfinite(samples).all()


def test_run_generate_is_the_same_task(run_dir, tmp_path, capsys):
    npz = tmp_path / "r.npz"
    assert "generate" in diffcore.available("tasks")
    argv = ["run", "generate", "--checkpoint", str(run_dir), "--n", "4", "--steps", "2", "--out", str(npz)]
    assert main([*argv, "--class-label", "0,9"]) == 2  # 2 labels for n=4: refused
    assert "class_label has 2 labels for n=4" in capsys.readouterr().err
    assert main([*argv, "--class-label", "all"]) == 0
    assert json.loads(capsys.readouterr().out)["label_counts"] == {"0": 1, "1": 1, "2": 1, "3": 1}
    assert np.load(npz)["labels"].tolist() == [0, 1, 2, 3]


BAD = [
    (["--n", "0"], "n=0"),
    (["--steps", "0"], "steps=0"),
    (["--batch-size", "0"], "batch_size=0"),
    (["--class-label", "3", "--guidance-scale", "-1"], "guidance_scale=-1.0"),
    (["--class-label", "3", "--guidance-scale", "2", "--guidance-rescale", "1.5"], "guidance_rescale=1.5"),
    (["--class-label", "3", "--guidance-rescale", "0.5"], "guidance_rescale=0.5 needs a guidance_scale"),
    (["--guidance-scale", "2"], "guidance_scale=2.0 needs class labels"),
    (["--class-label", "10"], "class_label=10 is out of range"),
    (["--class-label", "seven"], "class_label='seven'"),
    (["--class-label", "-1"], "class_label=-1"),
    (["--n", "3", "--class-label", "1,2"], "class_label has 2 labels for n=3"),
    (["--sampler", "nope"], "sampler='nope' is not registered; known samplers: ddim, ddpm, "),
    (["--out", "{tmp}/x.jpg"], "x.jpg': expected a path ending in .png or .npz"),
    (["--npz", "{tmp}/x.png"], "x.png': expected a path ending in .npz"),
    (["--device", "gpu7"], "device 'gpu7'"),
    (["--timestep-spacing", "even"], "timestep_spacing='even': expected one of leading, linspace, trailing"),
]


@pytest.mark.parametrize("argv,text", BAD, ids=[b[1][:28] for b in BAD])
@pytest.mark.parametrize("command", [["generate"], ["run", "generate"]])
def test_bad_input_is_one_clear_line(run_dir, tmp_path, capsys, command, argv, text):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = main([*command, "--checkpoint", str(run_dir), "--steps", "2", *argv])
    err = capsys.readouterr().err
    assert code == 2 and text in err, err
    assert err.count("\n") == 1 and err.startswith("diffcore: error:") and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "argv,text",
    [
        (["--class-label", "3"], "class_label='3': this model was trained without classes"),
        (["--class-label", "all"], "class_label='all': this model was trained without classes"),
        (["--guidance-scale", "3"], "guidance_scale=3.0: this model was trained without classes"),
    ],
)
def test_labels_or_guidance_on_an_unconditional_model(uncond_dir, tmp_path, capsys, argv, text):
    code = main(["generate", "--checkpoint", str(uncond_dir), "--steps", "2", "--out", str(tmp_path / "u.png"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and text in err, err
    assert not (tmp_path / "u.png").exists()


def test_unconditional_model_generates(uncond_dir, tmp_path, capsys):
    result = _generate(capsys, uncond_dir, "--n", 2, "--steps", 2, "--out", tmp_path / "u.npz")
    assert np.load(tmp_path / "u.npz")["samples"].shape == (2, 1, 8, 8) and "label_counts" not in result


def test_missing_checkpoint_and_python_errors(tmp_path, capsys):
    code = main(["generate", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "m.png")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint=" in err and "no checkpoint" in err
    with pytest.raises(ValueError, match="n=-2"):  # Python callers get a ValueError
        GenerateParams(checkpoint="x", n=-2)
    with pytest.raises(ValueError, match="guidance_scale=nan"):
        GenerateParams(checkpoint="x", guidance_scale=float("nan"), class_label="1")


@pytest.mark.parametrize("scale", [0.0, 1.0])
def test_one_pass_shortcuts_equal_two_pass_guidance(run_dir, scale):
    """w = 1 (conditional) and w = 0 (unconditional) run one model pass; the result is the two-pass one."""
    from diffcore.pipeline import Pipeline
    from diffcore.tasks import load_pipeline
    from diffcore.tasks.generation import generate_samples

    pipe = load_pipeline(str(run_dir))
    calls = []
    pipe.model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    params = GenerateParams(
        checkpoint=str(run_dir), n=4, steps=3, class_label="2,4,6,8", guidance_scale=scale, clip=False
    )
    fast, labels = generate_samples(pipe, params)
    assert calls == [4, 4, 4] and labels.tolist() == [2, 4, 6, 8]
    full = Pipeline.load(run_dir).generate(4, steps=3, class_labels=[2, 4, 6, 8], guidance_scale=scale)
    assert (fast - full).abs().max() < 1e-4
    rescaled, _ = generate_samples(
        pipe,
        GenerateParams(
            checkpoint=str(run_dir), n=4, steps=3, class_label="2,4,6,8", guidance_scale=scale, guidance_rescale=0.5
        ),
    )
    assert calls[3:] == ([8, 8, 8] if scale == 0.0 else [4, 4, 4])  # rescale at w = 0 needs both passes


def test_vector_models_write_npz_and_refuse_png(tmp_path, capsys):
    rows = np.random.default_rng(0).normal(size=(60, 3))
    csv = tmp_path / "table.csv"
    csv.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.4f}" for v in r) for r in rows) + "\n")
    run = tmp_path / "mlp"
    diffcore.train("tabular", "mlp", 2, run, dataset_options={"path": str(csv)}, batch_size=8, log_every=1)
    code = main(["generate", "--checkpoint", str(run), "--n", "2", "--steps", "2", "--out", str(tmp_path / "t.png")])
    err = capsys.readouterr().err
    assert code == 2 and "a PNG grid needs an image model" in err and "(3,)" in err
    result = _generate(capsys, run, "--n", 5, "--steps", 2, "--npz", tmp_path / "t.npz")
    arrays = np.load(tmp_path / "t.npz")
    assert result["shape"] == [3] and arrays["samples"].shape == (5, 3) and "images" not in arrays.files


def test_timestep_spacing_reaches_the_sampler(run_dir, tmp_path, capsys):
    def run(*extra: str) -> np.ndarray:
        _generate(capsys, run_dir, "--n", 2, "--steps", 3, "--sampler", "ddim", "--out", tmp_path / "s.npz", *extra)
        return np.load(tmp_path / "s.npz")["samples"]

    leading, default, trailing = run("--timestep-spacing", "leading"), run(), run("--timestep-spacing", "trailing")
    assert np.array_equal(leading, default) and not np.allclose(leading, trailing)

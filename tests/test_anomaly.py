"""Anomaly detection: reconstruction and diffusion-time scores, simplex noise, calibration, the
tabular path and the detect command.

Accuracy checks use the exact denoiser of a low-dimensional Gaussian mixture (diffcore.analytic)
shaped as 4x4 images, so "normal" is known in closed form; the command tests use tiny models
trained for a few steps (mechanics, not quality: benchmarks/quality/anomaly.py measures that).
"""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch

import diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.cli import main
from diffcore.tasks import anomaly
from diffcore.tasks.anomaly.noise import keyed_noise

TINY_UNET = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "groups": 8}
TRAIN = {"batch_size": 16, "warmup_steps": 2, "log_every": 5, "checkpoint_every": 100}
SCHED = diffcore.get("schedules", "linear")()


def _mixture() -> GaussianMixture:
    """Two clusters in 16 dimensions that vary in 2 of them (std 0.3) and barely in the rest."""
    means = torch.zeros(2, 16, dtype=torch.float64)
    means[0, ::3], means[1, 1::3] = 0.5, -0.5
    stds = torch.full((2, 16), 0.02, dtype=torch.float64)
    stds[:, :2] = 0.3
    return GaussianMixture(means, stds, torch.full((2,), 0.5, dtype=torch.float64))


GM = _mixture()
_EXACT = exact_model(GM, SCHED)


def image_model(x, t, cond=None):
    """The exact epsilon-model of the mixture, on (B, 1, 4, 4) images."""
    return _EXACT(x.flatten(1), t).reshape(x.shape)


KW = {"schedule": SCHED, "prediction": "epsilon", "progress": False}


@pytest.fixture(scope="module")
def normals():
    return GM.sample(24, torch.Generator().manual_seed(1)).float().reshape(24, 1, 4, 4).clamp(-1, 1)


@pytest.fixture(scope="module")
def defects(normals):
    """The first 12 images with a 2x2 patch set to -0.9 (rows 1-2, columns 1-2)."""
    x = normals.clone()
    x[:12, 0, 1:3, 1:3] = -0.9
    return x


# --------------------------------------------------------------------------- scores


@pytest.mark.parametrize("noise", ["gaussian", "simplex"])
def test_reconstruction_scores_defects_higher_and_map_peaks_at_the_defect(normals, defects, noise):
    det = anomaly.reconstruction_scores(image_model, defects, depth=0.3, noise=noise, repeats=2, error="squared", **KW)
    assert det.scores.shape == (24,) and det.maps.shape == (24, 4, 4)
    assert float(det.scores[:12].min()) > float(det.scores[12:].max())
    patch = torch.zeros(4, 4, dtype=torch.bool)
    patch[1:3, 1:3] = True
    for m in det.maps[:12]:  # every defect's map peaks inside the patch
        assert bool(patch.flatten()[m.argmax()]) and float(m[patch].mean()) > 3 * float(m[~patch].mean())
    full = anomaly.reconstruction_scores(
        image_model, defects, depth=[0.2, 0.4], sampler="ddim", steps=4, error="abs", reduce="max", smooth=0.7, **KW
    )
    assert float(full.scores[:12].min()) > float(full.scores[12:].max())


def test_depth_is_a_fraction_or_a_timestep():
    assert anomaly.depth_timesteps(SCHED, [0.5, 1.0, 250]) == [499.5, 999.0, 250.0]
    for bad, message in [(0, "depth=0"), (-0.5, "depth=-0.5"), (1000, "timesteps go up to 999"), ([], "empty")]:
        with pytest.raises(ValueError, match=message):
            anomaly.depth_timesteps(SCHED, bad)


def test_simplex_noise_has_unit_variance_and_spatial_correlation():
    g = torch.Generator().manual_seed(0)
    n = anomaly.simplex_noise((32, 2, 32, 32), generator=g)
    per_field = n.flatten(2)
    assert torch.allclose(per_field.mean(-1), torch.zeros(32, 2), atol=1e-5)
    assert torch.allclose(per_field.var(-1), torch.ones(32, 2), atol=1e-3)
    neighbour = float((n[..., 1:] * n[..., :-1]).mean())
    white = torch.randn(32, 2, 32, 32, generator=g)
    assert neighbour > 0.6 and abs(float((white[..., 1:] * white[..., :-1]).mean())) < 0.05
    assert float((n[:, 0] * n[:, 1]).mean()).__abs__() < 0.1  # channels are independent fields
    again = anomaly.simplex_noise((32, 2, 32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(n, again) and not torch.equal(n[0], n[1])
    small = anomaly.simplex_noise((64, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    assert float((small[..., 1:] * small[..., :-1]).mean()) > 0.2
    with pytest.raises(ValueError, match=r"image shape \(N, C, H, W\)"):
        anomaly.simplex_noise((4, 16))


def test_dte_score_increases_with_added_noise(normals, defects):
    g = torch.Generator().manual_seed(2)
    eps = torch.randn(normals.shape, generator=g)
    means = [
        float(anomaly.dte_scores(image_model, (normals + s * eps).clamp(-1, 1), **KW).scores.mean())
        for s in (0.0, 0.05, 0.1, 0.2, 0.4)
    ]
    assert all(a < b for a, b in itertools.pairwise(means)), means
    det = anomaly.dte_scores(image_model, defects, **KW)
    assert float(det.scores[:12].min()) > float(det.scores[12:].max())
    assert det.maps.shape == (24, 4, 4) and int(det.maps[0].argmax()) in (5, 6, 9, 10)  # inside the patch


@pytest.mark.slow
def test_scores_are_deterministic_and_independent_of_batch_size(defects):
    a = anomaly.reconstruction_scores(image_model, defects, noise="simplex", seed=3, batch_size=5, **KW)
    b = anomaly.reconstruction_scores(image_model, defects, noise="simplex", seed=3, batch_size=64, **KW)
    c = anomaly.reconstruction_scores(image_model, defects, noise="simplex", seed=4, **KW)
    assert torch.allclose(a.scores, b.scores, rtol=1e-5, atol=1e-9) and not torch.allclose(a.scores, c.scores)
    d1 = anomaly.dte_scores(image_model, defects, seed=1, batch_size=7, **KW)
    d2 = anomaly.dte_scores(image_model, defects, seed=1, **KW)
    assert torch.allclose(d1.scores, d2.scores, atol=1e-9)


# --------------------------------------------------------------------------- whitened residual


def test_mahalanobis_scores_whiten_the_mean_signed_residual(normals, defects):
    """Reproduce the score by hand: residual x0hat - x of each draw, averaged; reference draws use
    the seed offset; ridge-regularized covariance of the reference residuals."""
    from diffcore.sampling import sample_from

    reference = GM.sample(64, torch.Generator().manual_seed(5)).float().reshape(64, 1, 4, 4).clamp(-1, 1)
    det = anomaly.reconstruction_scores(
        image_model, defects, depth=[0.2, 0.4], repeats=2, error="mahalanobis", reference=reference, seed=3, **KW
    )
    assert det.scores.shape == (24,) and det.maps.shape == (24, 4, 4) and det.settings["reference_size"] == 64
    assert float(det.scores[:12].min()) > float(det.scores[12:].max())

    def mean_residual(x, seed):
        total = torch.zeros(x.shape, dtype=torch.float64)
        for k, t in enumerate(anomaly.depth_timesteps(SCHED, [0.2, 0.4])):
            for r in range(2):
                eps = keyed_noise(x, "gaussian", seed * 1_000_003 + k * 1009 + r)  # row b keyed by (seed, b)
                out = sample_from(
                    image_model, x, t, sampler="ddim", steps=1, schedule=SCHED, prediction="epsilon", noise=eps
                )
                total += out.double() - x.double()
        return (total / 4).flatten(1)

    res, ref = mean_residual(defects, 3), mean_residual(reference, 3 + 104_729)
    cov = torch.cov(ref.T)
    cov += 1e-3 * cov.diagonal().mean() * torch.eye(16, dtype=torch.float64)
    d = res - ref.mean(0)
    want = torch.einsum("ni,ij,nj->n", d, torch.linalg.inv(cov), d)
    assert torch.allclose(det.scores, want, rtol=1e-6)
    assert torch.allclose(det.maps.flatten(1), d**2 / cov.diagonal(), rtol=1e-6)


def test_mahalanobis_bad_arguments_are_named(normals):
    with pytest.raises(ValueError, match="needs reference= normal data"):
        anomaly.reconstruction_scores(image_model, normals, error="mahalanobis", **KW)
    with pytest.raises(ValueError, match="reference is used by error='mahalanobis' only, not error='abs'"):
        anomaly.reconstruction_scores(image_model, normals, error="abs", reference=normals, **KW)
    with pytest.raises(ValueError, match="reference has 1 sample"):
        anomaly.reconstruction_scores(image_model, normals, error="mahalanobis", reference=normals[:1], **KW)
    with pytest.raises(ValueError, match="reference have 2 channel"):
        anomaly.reconstruction_scores(
            image_model, normals, error="mahalanobis", reference=normals.repeat(1, 2, 1, 1), **KW
        )
    with pytest.raises(ValueError, match="error='cosine': expected one of"):
        anomaly.reconstruction_scores(image_model, normals, error="cosine", **KW)
    big = torch.zeros(2, 1, 65, 65)
    with pytest.raises(ValueError, match="covariance of 4225 values per input; at most 4096"):
        anomaly.reconstruction_scores(lambda x, t, c=None: x, big, error="mahalanobis", reference=big, **KW)
    # a model that ignores its input: every residual is the same, nothing to whiten with
    flat = {"schedule": SCHED, "prediction": "sample", "progress": False}
    with pytest.raises(ValueError, match="residuals do not vary"):
        anomaly.reconstruction_scores(
            lambda x, t, c=None: torch.zeros_like(x),
            torch.ones(3, 4),
            error="mahalanobis",
            reference=torch.ones(10, 4),
            **flat,
        )
    # a float64 reference (e.g. from numpy) is cast to the input's dtype
    a = anomaly.reconstruction_scores(image_model, normals, error="mahalanobis", reference=normals, **KW)
    b = anomaly.reconstruction_scores(image_model, normals, error="mahalanobis", reference=normals.double(), **KW)
    assert torch.allclose(a.scores, b.scores)


def test_a_calibration_refuses_scores_made_with_other_settings(normals, defects):
    scores = anomaly.reconstruction_scores(image_model, normals, depth=[0.2, 0.4], error="abs", **KW).scores
    cal = anomaly.Calibration.fit(scores, fpr=0.1, method="recon", settings={"depth": [0.2, 0.4], "error": "abs"})
    ok = anomaly.detect(image_model, defects, calibration=cal, depth=[0.2, 0.4], error="abs", seed=5, **KW)
    assert ok.labels is not None
    for key, value, message in [
        ("error", "squared", "fitted with error='abs', but these scores use error='squared'"),
        ("depth", 0.3, "fitted with depth=[0.2, 0.4]"),
    ]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            anomaly.detect(
                image_model, defects, calibration=cal, **{"depth": [0.2, 0.4], "error": "abs", key: value}, **KW
            )


# --------------------------------------------------------------------------- calibration


def test_calibration_hits_its_target_fpr_on_the_calibration_data(tmp_path):
    scores = torch.randn(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for kw, target in [({"fpr": 0.05}, 0.05), ({"quantile": 0.9}, 0.1), ({"fpr": 0.0}, 0.0)]:
        cal = anomaly.Calibration.fit(scores, **kw)
        rate = float(cal.labels(scores).double().mean())
        assert target - 1 / 400 <= rate <= target + 1e-12, (kw, rate)
    cal = anomaly.Calibration.fit(scores, fpr=0.05, method="recon", settings={"depth": 0.3})
    assert anomaly.Calibration.from_json(cal.to_json(tmp_path / "c.json")) == cal
    assert anomaly.Calibration.from_json(tmp_path / "c.json") == cal
    for kw, message in [
        ({}, "exactly one of fpr= or quantile="),
        ({"fpr": 0.1, "quantile": 0.9}, "exactly one"),
        ({"fpr": 1.0}, r"fpr=1.0 must be a number in \[0, 1\)"),
        ({"quantile": 0.0}, r"quantile=0.0 must be a number in \(0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            anomaly.Calibration.fit(scores, **kw)
    with pytest.raises(ValueError, match="at least one normal score"):
        anomaly.Calibration.fit([], fpr=0.1)
    det = anomaly.detect(
        image_model, torch.zeros(3, 1, 4, 4), method="dte", calibration=cal.__class__(0.5, 0.05, 10, "dte"), **KW
    )
    assert det.labels is not None and det.labels.dtype == torch.bool and det.threshold == 0.5
    with pytest.raises(ValueError, match="fitted on 'recon' scores, not 'dte'"):
        anomaly.detect(image_model, torch.zeros(3, 1, 4, 4), method="dte", calibration=cal, **KW)


# --------------------------------------------------------------------------- tabular


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    """A tiny MLP trained on a CSV of 3 correlated columns (a, b, c) with a label column."""
    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 1))
    values = np.hstack([10 + 2 * z, -3 + 0.5 * z, 100 + 20 * z]) + rng.normal(scale=[0.1, 0.02, 1.0], size=(200, 3))
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "kind"])
        writer.writerows([[*row, "ok"] for row in values.tolist()])
    diffcore.train(
        "tabular",
        "mlp",
        30,
        root / "run",
        dataset_options={"path": str(root / "train.csv"), "label_column": "kind"},
        model_config={"hidden": 32, "depth": 1},
        **TRAIN,
    )
    return root, values


def test_tabular_standardizes_with_training_statistics_and_checks_columns(table_run):
    root, values = table_run
    pipe = diffcore.Pipeline.load(root / "run")
    data = diffcore.get("datasets", "tabular")(path=str(root / "train.csv"), label_column="kind")
    x = anomaly.standardize(pipe, values[:5])
    assert torch.allclose(x, data.to_model_space(torch.from_numpy(values[:5])), atol=1e-6)
    shuffled = anomaly.standardize(pipe, values[:5, [2, 0, 1]], columns=["c", "a", "b"])
    assert torch.allclose(shuffled, x, atol=1e-6)
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['z'\]"):
        anomaly.standardize(pipe, values[:5], columns=["a", "z", "c"])
    with pytest.raises(ValueError, match="table has 2 columns; the model was trained on 3"):
        anomaly.standardize(pipe, values[:5, :2])
    bad = values[:5].copy()
    bad[2, 1] = np.inf
    with pytest.raises(ValueError, match="column 'b', row 3: inf"):
        anomaly.standardize(pipe, bad)
    det = anomaly.reconstruction_scores(pipe, x, depth=0.2, repeats=2, progress=False)
    assert det.maps.shape == (5, 3) and torch.allclose(det.scores, det.maps.double().mean(1))
    assert anomaly.dte_scores(pipe, x, levels=6, progress=False).scores.shape == (5,)
    with pytest.raises(ValueError, match="simplex noise is defined for images"):
        anomaly.reconstruction_scores(pipe, x, noise="simplex")
    with pytest.raises(ValueError, match=r"input has shape \(5, 2\); the model expects a non-empty batch \(N, 3\)"):
        anomaly.reconstruction_scores(pipe, x[:, :2])


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect") / "run"
    diffcore.train("digits", "unet", 6, out, dataset_options={"limit": 120}, model_config=TINY_UNET, **TRAIN)
    return out


@pytest.fixture(scope="module")
def pixels():
    x = diffcore.get("datasets", "digits")(limit=120).test[:12]
    return ((x + 1) * 127.5).round().to(torch.uint8).numpy()


def detect_cli(run, input_path, *extra) -> int:
    """``diffcore detect --checkpoint RUN --input INPUT EXTRA...`` (paths and numbers as strings)."""
    return main(["detect", "--checkpoint", str(run), "--input", str(input_path), *map(str, extra)])


@pytest.mark.slow
def test_detect_command_on_images(image_run, pixels, tmp_path, capsys):
    np.savez(tmp_path / "in.npz", images=pixels[:6])
    np.save(tmp_path / "normals.npy", pixels[6:])
    out = tmp_path / "o" / "scores.json"
    simplex = ["--noise", "simplex", "--repeats", 2]
    code = detect_cli(
        image_run, tmp_path / "in.npz", *simplex, "--calibrate", tmp_path / "normals.npy", "--fpr", 0.2, "--output", out
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert summary["n"] == 6 and len(saved["scores"]) == 6 and len(saved["labels"]) == 6
    assert saved["threshold"] == summary["threshold"] == saved["calibration"]["threshold"]
    for key in ("histogram", "maps", "maps_npz", "calibration"):
        assert (tmp_path / "o" / summary[key].rsplit("/", 1)[-1]).stat().st_size > 0, key
    assert np.load(summary["maps_npz"])["maps"].shape == (6, 8, 8)
    again = tmp_path / "again.json"  # reusing the calibration file gives the same labels
    code = detect_cli(
        image_run, tmp_path / "in.npz", *simplex, "--calibrate", summary["calibration"], "--output", again
    )
    assert code == 0
    assert json.loads(again.read_text())["labels"] == saved["labels"]
    capsys.readouterr()
    dte = ["--method", "dte", "--levels", "4", "--output", str(tmp_path / "dte.csv")]
    code = main(["run", "detect", "--checkpoint", str(image_run), "--input", str(tmp_path / "in.npz"), *dte])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.reader((tmp_path / "dte.csv").read_text().splitlines()))
    assert rows[0] == ["index", "score", "label"] and len(rows) == 7 and rows[1][2] == ""


@pytest.mark.slow
def test_detect_command_on_a_table(table_run, tmp_path, capsys):
    root, values = table_run
    with open(tmp_path / "rows.csv", "w", newline="") as handle:  # another column order, no label column
        writer = csv.writer(handle)
        writer.writerow(["c", "b", "a"])
        writer.writerows(values[:8, [2, 1, 0]].tolist())
    run, rows_csv, train_csv = root / "run", tmp_path / "rows.csv", root / "train.csv"
    out = tmp_path / "t.csv"
    code = detect_cli(run, rows_csv, "--calibrate", train_csv, "--quantile", 0.9, "--output", out)
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    rows = list(csv.reader(out.read_text().splitlines()))
    assert len(rows) == 9 and {r[2] for r in rows[1:]} <= {"0", "1"} and "maps" not in summary
    assert (tmp_path / "t_hist.png").stat().st_size > 0
    out = tmp_path / "m.json"  # the whitened residual, several depths, calibrated on the training rows
    depths = ["--depth", 0.1, 0.3, "--repeats", 2]
    code = detect_cli(
        run,
        rows_csv,
        "--error",
        "mahalanobis",
        "--reference",
        train_csv,
        *depths,
        "--calibrate",
        train_csv,
        "--output",
        out,
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert len(saved["scores"]) == 8 and summary["params"]["depth"] == [0.1, 0.3]
    calibration = json.loads((tmp_path / "m_calibration.json").read_text())
    assert calibration["settings"]["error"] == "mahalanobis"
    assert calibration["settings"]["reference"] == str(train_csv)
    # reusing that threshold for another error kind is refused, not silently misapplied
    abs_error = ["--error", "abs"]  # named: the table default may be mahalanobis (diffcore.tasks.anomaly.defaults)
    assert detect_cli(run, rows_csv, *depths, *abs_error, "--calibrate", tmp_path / "m_calibration.json") == 2
    assert "fitted with error='mahalanobis', but these scores use error='abs'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model,input_,extra,message",
    [
        ("image", "rgb.npy", [], "have 3 channel(s) but the model expects 1"),
        ("image", "big.npy", [], "are 12x12 but the model works at 8x8"),
        ("image", "nan.npy", [], "contain 1 NaN or inf pixel value(s)"),
        ("image", "empty.npy", [], "holds an empty array of shape (0, 8, 8)"),
        ("image", "ok.npy", ["--calibrate", "{tmp}/nan.npy"], "contain 1 NaN or inf"),
        ("image", "rows.csv", [], "is a CSV table, but this model was trained on images"),
        ("image", "ok.npy", ["--fpr", "0.1"], "pass --calibrate"),
        ("image", "ok.npy", ["--depth", "0"], "depth=0.0 must be a fraction in (0, 1]"),
        ("image", "ok.npy", ["--depth", "0.2", "-1"], "depth=-1.0 must be a fraction in (0, 1]"),
        ("image", "ok.npy", ["--error", "mahalanobis"], "--error mahalanobis needs --reference"),
        ("image", "ok.npy", ["--reference", "{tmp}/ok.npy"], "--error mahalanobis needs --reference"),
        ("image", "ok.npy", ["--error", "mahalanobis", "--reference", "{tmp}/rgb.npy"], "have 3 channel(s)"),
        (
            "image",
            "ok.npy",
            ["--method", "dte", "--reference", "{tmp}/ok.npy"],
            "--reference is used by --method recon",
        ),
        ("image", "ok.npy", ["--output", "{tmp}/x.txt"], "expected a file ending in .json or .csv"),
        ("table", "cols.csv", [], "table columns differ from training: missing ['c'], unexpected ['d']"),
        ("table", "nan.csv", [], "table column 'b', row 2: nan"),
        ("table", "empty.csv", [], "a header but no data rows"),
        ("table", "two.npy", [], "table has 2 columns; the model was trained on 3"),
        ("table", "missing.csv", [], "does not exist"),
    ],
)
def test_detect_command_bad_input_is_one_line(image_run, table_run, tmp_path, capsys, model, input_, extra, message):
    np.save(tmp_path / "ok.npy", np.zeros((8, 8), np.uint8))
    np.save(tmp_path / "rgb.npy", np.zeros((2, 8, 8, 3), np.uint8))
    np.save(tmp_path / "big.npy", np.zeros((12, 12), np.uint8))
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.float32))
    nan = np.zeros((8, 8), np.float32)
    nan[2, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "two.npy", np.zeros((4, 2)))
    (tmp_path / "rows.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "cols.csv").write_text("a,b,d\n1,2,3\n")
    (tmp_path / "nan.csv").write_text("a,b,c\n1,2,3\n1,nan,3\n")
    (tmp_path / "empty.csv").write_text("a,b,c\n")
    run = image_run if model == "image" else table_run[0] / "run"
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code = detect_cli(run, tmp_path / input_, *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err

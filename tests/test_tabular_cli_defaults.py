"""Issue #19 points 4-5 on the command line: ``diffcore train --dataset tabular`` scales, sizes and
stops like :class:`diffcore.DiffusionDetector`, and ``diffcore detect`` with no options scores with
the same defaults (diffcore.tasks.anomaly.defaults).

The CLI's scores are not the detector's numbers, and cannot be: the CLI trains on the dataset's
train split (``holdout`` 0.2 of the rows are its test split) where the detector trains on every
row given; the run's seed is ``--seed`` where the detector draws its seed from ``random_state``;
and ``reconstruction_scores`` keys each row's noise by (seed, row index) where the detector shares
each draw's noise among all rows (sklearn's order invariance), in float64. What is shared, and
tested here: the scaling (kind and fitted values), the budget, the early-stopping rule and the
score recipe (method, error, depths, draws).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffcore.cli import main
from diffcore.data.scaling import TableScaler
from diffcore.data.tabular import tabular
from diffcore.pipeline import Pipeline
from diffcore.tasks.anomaly import DetectParams, defaults, reconstruction_scores, standardize
from diffcore.tasks.anomaly import fit as fit_module
from diffcore.tasks.anomaly.task import TABLE_ERROR
from diffcore.training.checkpoint import load_checkpoint, save_checkpoint
from diffcore.training.metrics_file import read_metrics

COLUMNS = ["const", "near", "tail", "big", "small"]
SMALL_BUDGET = {"hidden": 16, "layers": 1, "batch_size": 32, "steps": 60, "eval_every": 10, "patience": 2}


def _awkward(n: int = 160, seed: int = 0) -> np.ndarray:
    """Columns: constant, near-constant (0 but for 2 rows), one 1e6 outlier in a normal column,
    and two normal columns on scales 1e4 and 1e-3."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [np.full(n, 3.0), np.zeros(n), rng.standard_normal(n), rng.normal(5e4, 1e4, n), rng.normal(0, 1e-3, n)]
    )
    x[:2, 1] = [4.0, 7.0]
    x[0, 2] = 1e6
    return x


def _write(path: Path, rows: np.ndarray) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows.tolist())
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])  # train prints one line, detect an indented object


@pytest.fixture(scope="module")
def small_budget():
    """table_budget shrunk so a run stops within a few seconds (the loop and its wiring are real)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fit_module, "table_budget", lambda rows, dim: dict(SMALL_BUDGET))
        yield


@pytest.fixture(scope="module")
def awkward_run(tmp_path_factory, small_budget):
    root = tmp_path_factory.mktemp("awkward")
    rows = _awkward()
    csv_path = _write(root / "train.csv", rows)
    argv = ["train", "--dataset", "tabular", "--dataset-opt", f"path={csv_path}", "--model", "mlp"]
    assert main([*argv, "--out", str(root / "run"), "--device", "cpu"]) == 0
    return root, rows


def test_train_scales_robustly_and_stops_on_held_out_rows(awkward_run) -> None:
    root, rows = awkward_run
    pipe = Pipeline.load(root / "run")
    meta = pipe.dataset["meta"]
    assert meta["scaling"]["kind"] == defaults.SCALING == "robust" and "mean" not in meta
    assert meta["constant_columns"] == ["const"]
    run = json.loads((root / "run" / "config.json").read_text())
    stop = run["early_stopping"]
    n_train = round(0.8 * len(rows))  # the dataset's train split
    assert stop["held_out_rows"] == round(0.1 * n_train) and stop["cap"] == run["train"]["steps"] == 60
    assert stop["eval_every"] == 10 and 10 <= stop["best_step"] <= stop["steps_trained"] <= 60
    assert run["model"]["config"]["hidden"] == 16 and run["model"]["config"]["depth"] == 1  # from the budget
    assert run["schedule"]["name"] == "squaredcos_cap_v2" and run["train"]["lr"] == 1e-3  # the detector's recipe
    errors = [r for r in read_metrics(root / "run" / "metrics.jsonl") if "heldout_error" in r]
    assert [r["step"] for r in errors] == list(range(10, stop["steps_trained"] + 1, 10))
    assert min(r["heldout_error"] for r in errors) == pytest.approx(stop["best_error"])
    # the stored scaler is the one fitted on the train split: map the stored (scaled) training rows
    # back to raw units, the log-compressed tail included, and fit again
    reference, _ = load_checkpoint(root / "run" / "train_rows.safetensors")
    assert reference["rows"].shape == (n_train, 5)
    stored = TableScaler.from_meta(meta)
    raw_train = stored.inverse_transform(reference["rows"].double().numpy())
    assert np.abs(raw_train[:, 3, None] - rows[None, :, 3]).min(axis=1).max() < 0.1  # real rows (float32 stored)
    expected = TableScaler(defaults.SCALING).fit(raw_train)
    assert np.allclose(stored.center_, expected.center_, rtol=1e-5)
    assert np.allclose(stored.scale_, expected.scale_, rtol=1e-5)


def test_generate_writes_rows_in_the_tables_units(awkward_run, capsys, tmp_path) -> None:
    """A table run's samples are model-space rows (scaled); generate's npz keeps them as
    ``samples`` and adds ``rows``, the stored scaling inverted: the columns' own units."""
    root, rows = awkward_run
    out = _cli(capsys, "generate", "--checkpoint", str(root / "run"), "--n", "64", "--npz", str(tmp_path / "g.npz"))
    arrays = np.load(tmp_path / "g.npz")
    assert out["shape"] == [5] and arrays["samples"].shape == arrays["rows"].shape == (64, 5)
    assert arrays["rows"].dtype == np.float64
    scaler = TableScaler.from_meta(Pipeline.load(root / "run").dataset["meta"])
    assert np.array_equal(arrays["rows"], scaler.inverse_transform(arrays["samples"].astype(np.float64)))
    big = arrays["rows"][:, 3]  # trained on N(5e4, 1e4): model-space values would be a few units
    assert np.median(np.abs(big)) > 1e3 and abs(np.median(big) - 5e4) < 5e4
    # the npz as a table: its rows (not the model-space samples) are the features
    table = tabular(path=str(tmp_path / "g.npz"), holdout=0.5)
    assert table.meta["columns"] == ["x0", "x1", "x2", "x3", "x4"] and len(table.train) + len(table.test) == 64
    raw = TableScaler.from_meta(table.meta).inverse_transform(torch.cat([table.train, table.test]).double().numpy())
    assert np.allclose(np.sort(raw[:, 3]), np.sort(arrays["rows"][:, 3]), rtol=1e-5)


def test_table_rows_name_a_sample_whose_units_overflow() -> None:
    from types import SimpleNamespace

    from diffcore.tasks.generation import table_rows

    scaling = {"kind": "robust", "center": [0.0, 1.0], "scale": [1e300, 1.0], "tail": 5.0}
    pipe = SimpleNamespace(dataset={"kind": "tabular", "meta": {"scaling": scaling}})
    assert table_rows(pipe, torch.tensor([[0.5, 0.0]])).tolist() == [[5e299, 1.0]]
    with pytest.raises(ValueError, match="sample 1 lies so far out"):
        table_rows(pipe, torch.tensor([[0.0, 0.0], [800.0, 1.0]]))
    assert table_rows(SimpleNamespace(dataset={"kind": "image", "meta": {}}), torch.zeros(1, 2)) is None


def test_detect_defaults_score_the_awkward_table(awkward_run, capsys) -> None:
    root, rows = awkward_run
    out = root / "scores.json"
    result = _cli(capsys, "detect", "--checkpoint", str(root / "run"), "--input", str(root / "train.csv"),
                  "--output", str(out), "--quiet")  # fmt: skip
    saved = json.loads(out.read_text())
    scores = np.array([s["score"] if isinstance(s, dict) else s for s in saved["scores"]])
    assert result["n"] == len(rows) and np.isfinite(scores).all()
    assert result["method"] == saved["method"] == defaults.METHOD  # the table default, with no options
    # the near-constant column's 7 ranks in the top 3; the 1e6 row (one of the training rows, log-compressed)
    # in the top 10% (abs: the top 2; mahalanobis, whose whitening reference holds it: 15th of 160)
    assert (scores > scores[1]).sum() <= 2 and (scores > scores[0]).sum() < 0.1 * len(scores)
    settings = saved["settings"]
    assert settings["depth"] == list(defaults.DEPTHS) and settings["repeats"] == defaults.REPEATS
    assert settings["error"] == TABLE_ERROR
    # mahalanobis without --reference whitens by the run's stored training rows
    out2 = root / "whitened.json"
    _cli(capsys, "detect", "--checkpoint", str(root / "run"), "--input", str(root / "train.csv"),
         "--error", "mahalanobis", "--repeats", "2", "--output", str(out2), "--quiet")  # fmt: skip
    whitened = json.loads(out2.read_text())
    assert whitened["settings"]["reference_size"] == round(0.8 * len(rows))


def test_detect_and_detector_share_the_default_recipe(awkward_run) -> None:
    from diffcore.detector import DiffusionDetector

    params = DetectParams(checkpoint=awkward_run[0] / "run", input=Path("rows.csv"))
    options = params.options((5,))
    assert params.method == "recon" and params.table_method((5,)) == defaults.METHOD  # the run stored its rows
    assert params.table_method((1, 8, 8)) == "recon"  # images keep the reconstruction score
    assert options["depth"] == list(defaults.DEPTHS) and options["repeats"] == defaults.REPEATS
    assert (options["sampler"], options["steps"], options["error"]) == ("ddim", 1, TABLE_ERROR)
    detector = DiffusionDetector()
    assert (detector.method, detector.scaling) == (defaults.METHOD, defaults.SCALING)
    assert detector.repeats == defaults.REPEATS
    assert detector.error == defaults.ERROR


def test_explicit_steps_and_size_win_over_the_budget(tmp_path: Path, capsys) -> None:
    csv_path = _write(tmp_path / "t.csv", _awkward(60))
    argv = ["train", "--dataset", "tabular", "--dataset-opt", f"path={csv_path}", "--model", "mlp"]
    result = _cli(capsys, *argv, "--model-opt", "hidden=8", "--steps", "7", "--out", str(tmp_path / "run"))
    run = json.loads((tmp_path / "run" / "config.json").read_text())
    assert result["steps"] == run["train"]["steps"] == 7 and run["model"]["config"]["hidden"] == 8
    stop = run["early_stopping"]
    assert stop["held_out_rows"] == 0 and stop["steps_trained"] == 7 and not stop["stopped_early"]
    assert not [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "heldout_error" in r]


def test_a_mean_std_checkpoint_still_scores(tmp_path: Path, capsys) -> None:
    """A run written before issue #19 holds meta mean/std and no scaling: it loads as a standard
    scaler (no tail compression) and detect scores it as before (with no training rows to whiten
    by, the absolute error even where the default is mahalanobis)."""
    rows = _awkward(60)[:, 2:]  # three varying columns
    rows[0, 0] = 2.5
    csv_path = tmp_path / "t.csv"
    with open(csv_path, "w", newline="") as handle:
        csv.writer(handle).writerows([COLUMNS[2:], *rows.tolist()])
    run = tmp_path / "run"
    _cli(capsys, "train", "--dataset", "tabular", "--dataset-opt", f"path={csv_path}", "--model", "mlp",
         "--steps", "5", "--out", str(run), "--device", "cpu")  # fmt: skip
    tensors, meta = load_checkpoint(run / "checkpoint.safetensors")
    data = meta["run"]["dataset"]["meta"]
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    del data["scaling"]
    data.update(mean=mean.tolist(), std=std.tolist())  # the old layout
    save_checkpoint(run / "checkpoint.safetensors", tensors, meta)
    (run / "train_rows.safetensors").unlink()  # nor did old runs keep their training rows
    pipe = Pipeline.load(run)
    x = standardize(pipe, rows)
    assert torch.allclose(x, torch.from_numpy((rows - mean) / std).float(), atol=1e-6)
    out = tmp_path / "scores.json"
    assert main(["detect", "--checkpoint", str(run), "--input", str(csv_path), "--repeats", "2",
                 "--output", str(out), "--quiet"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    warned = "diffcore: warning:" in err and "holds no train_rows" in err
    assert warned == (TABLE_ERROR == "mahalanobis")  # no rows to whiten by: said so, and scored as before
    saved = json.loads(out.read_text())
    scores = torch.tensor([s["score"] if isinstance(s, dict) else s for s in saved["scores"]], dtype=torch.float64)
    expected = reconstruction_scores(
        pipe, x, depth=list(defaults.DEPTHS), repeats=2, error="abs", sampler="ddim", steps=1, seed=0, progress=False
    ).scores
    assert torch.allclose(scores, expected, rtol=1e-5, atol=1e-7)
    # asked for by name, the ensemble cannot fall back: one clear line naming the method and the missing file
    code = main(["detect", "--checkpoint", str(run), "--input", str(csv_path), "--method", "recon_dte_np",
                 "--output", str(tmp_path / "e.json"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "recon_dte_np" in err and "train_rows.safetensors" in err and "Traceback" not in err


def test_robust_scaling_round_trips_raw_units() -> None:
    """from_model_space inverts the stored scaling, the log-compressed tail included."""
    from diffcore.data.base import tabular_dataset

    rows = _awkward(80)
    ds = tabular_dataset("t", rows, None, [], columns=COLUMNS, label_column=None, holdout=0.2, options={})
    raw = torch.from_numpy(rows)
    z = ds.to_model_space(raw)
    assert float(z.abs().max()) < 30 and bool(torch.isfinite(z).all())
    back = ds.from_model_space(z.double())
    assert torch.allclose(back, raw, rtol=1e-6, atol=1e-6)


def test_training_stops_when_the_held_out_error_stalls(tmp_path: Path, capsys, small_budget) -> None:
    """A learning rate too small to move the weights: no round beats the first by 0.1%, so training
    stops after ``patience`` (2) more rounds and keeps the first round's EMA weights."""
    csv_path = _write(tmp_path / "t.csv", _awkward(120))
    argv = ["train", "--dataset", "tabular", "--dataset-opt", f"path={csv_path}", "--model", "mlp", "--lr", "1e-9"]
    stop = _cli(capsys, *argv, "--out", str(tmp_path / "run"))["early_stopping"]
    assert (stop["steps_trained"], stop["best_step"], stop["stopped_early"]) == (30, 10, True)
    # a resumed run keeps the same rows out and the same budget, and trains to the cap
    again = _cli(capsys, *argv, "--out", str(tmp_path / "run"), "--resume")["early_stopping"]
    assert (again["steps_trained"], again["stopped_early"]) == (60, False)
    assert again["held_out_rows"] == stop["held_out_rows"] > 0

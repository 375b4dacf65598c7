"""diffcore.evaluation: the judges and baselines the demo and the quality benchmarks share."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import diffcore
from diffcore.analytic import GaussianMixture
from diffcore.evaluation import (
    DETECTORS,
    TIMESTEPS,
    EvaluationCounter,
    adaptive_errors,
    balanced_labels,
    class_gaussian_samples,
    classical_maps,
    classical_scores,
    estimated_order,
    fd_target,
    fewest_evaluations,
    generate_run,
    model_calls,
    nearest_train,
    normal_split,
    psnr_db,
    run_cost,
    run_sweep,
    sampler_errors,
    sigma_schedules,
    stepped_samplers,
    uniform_flow_sigmas,
)
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.schedules import EDMSchedule, flow_time


def _images(n: int = 120, classes: int = 3, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    train = (labels[:, None, None, None] / classes + 0.3 * torch.randn(n, 1, 4, 4, generator=g)).clamp(-1, 1)
    return SimpleNamespace(train=train, train_labels=labels, num_classes=classes)


def test_class_gaussian_samples_match_one_draw_per_label_in_class_order() -> None:
    """Class-major labels draw the same noise as one (D,) draw per label (the demo's former loop)."""
    data = _images()
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    out = class_gaussian_samples(data, labels, seed=3)
    assert out.shape == (6, 1, 4, 4) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    g = torch.Generator().manual_seed(3)
    flat = data.train.flatten(1).double()
    rows = []
    for k in labels.tolist():
        xs = flat[data.train_labels == k]
        chol = torch.linalg.cholesky(torch.cov(xs.T) + 1e-4 * torch.eye(16, dtype=torch.float64))
        rows.append(xs.mean(0) + chol @ torch.randn(16, generator=g, dtype=torch.float64))
    expected = torch.stack(rows).float().clamp(-1, 1).reshape(out.shape)
    assert torch.allclose(out, expected, atol=1e-6)


def test_class_gaussian_samples_refuse_unknown_classes() -> None:
    with pytest.raises(ValueError, match="classes in 0..2"):
        class_gaussian_samples(_images(), torch.tensor([0, 3]))


def test_balanced_labels_cycle() -> None:
    assert balanced_labels(3, 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    with pytest.raises(ValueError, match="num_classes=0"):
        balanced_labels(0, 4)


def test_normal_split_trains_on_normals_only() -> None:
    values = np.arange(20.0)[:, None]
    anomalous = np.zeros(20, dtype=bool)
    anomalous[[3, 7, 11]] = True
    train, test, labels = normal_split(values, anomalous, 0.5, seed=0)
    assert len(train) == 8 and len(test) == 12 and labels.tolist() == [0] * 9 + [1] * 3
    assert not set(train[:, 0]) & {3.0, 7.0, 11.0}
    assert test[-3:, 0].tolist() == [3.0, 7.0, 11.0]
    assert set(train[:, 0]).isdisjoint(test[:, 0])
    again = normal_split(values, anomalous, 0.5, seed=0)
    assert np.array_equal(again[0], train)
    with pytest.raises(ValueError, match="one flag per row"):
        normal_split(values, anomalous[:5], 0.5, seed=0)


def test_classical_scores_flag_the_outlier() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 3))
    test = np.vstack([rng.normal(size=(20, 3)), [[8.0, 8.0, 8.0]]])
    scores = classical_scores(train, test, seed=0)
    assert list(scores) == list(DETECTORS)
    for name, s in scores.items():
        assert s.shape == (21,) and int(np.argmax(s)) == 20, name
    assert np.allclose(scores["knn"], nearest_train(train, test)[0].mean(axis=1))
    with pytest.raises(ValueError, match="'svm'"):
        classical_scores(train, test, methods=("svm",))


def test_classical_maps_see_the_defect() -> None:
    data = _images(n=60)
    x = data.train[:4].clone()
    x[:, :, 1, 1] = 1.0 - x[:, :, 1, 1]
    maps = classical_maps(data.train[4:], x)
    assert set(maps) == {"knn_reconstruction", "pca_reconstruction"}
    for m in maps.values():
        assert m.shape == (4, 4, 4) and bool((m >= 0).all())


def test_sampler_errors_give_the_published_order() -> None:
    gm = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = gm.ode_solution(x_T * 80.0, 80.0, 0.1, steps=400)
    steps = [24, 48]
    errors, calls = sampler_errors(gm, EDMSchedule(), "euler", x_T, ref, steps, sigma_min=0.1, sigma_max=80.0)
    assert calls == steps and errors[1] < errors[0]
    assert abs(estimated_order(steps, errors) - 1.0) < 0.3


def test_psnr_db_clamps_to_the_model_range() -> None:
    truth = torch.zeros(2, 1, 4, 4)
    assert psnr_db(truth + 5.0, truth) == pytest.approx(psnr_db(truth + 1.0, truth))
    assert psnr_db(truth + 1.0, truth) == pytest.approx(20 * np.log10(2.0))


def test_dpm_adaptive_errors_shrink_with_the_tolerance() -> None:
    gm = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2)
    x_T = torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = gm.ode_solution(x_T * 80.0, 80.0, 0.1, steps=400)
    errors, calls = adaptive_errors(gm, EDMSchedule(), x_T, ref, [0.1, 0.001], sigma_min=0.1, sigma_max=80.0)
    assert errors[1] < 0.2 * errors[0] and calls[1] > calls[0] > 3


class _Tiny(nn.Module):
    """A class-conditional stand-in for a digits model: (B, 1, 2, 2) images, 3 classes + null label."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.emb = nn.Embedding(4, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        out = self.scale * x
        return out if cond is None else out + 0.1 * self.emb(cond["class_labels"]).reshape(x.shape)


def _tiny_pipe(schedule: str = "squaredcos_cap_v2", prediction: str = "v_prediction") -> Pipeline:
    torch.manual_seed(0)
    run = {"dataset": {"shape": [1, 2, 2], "num_classes": 3}}
    return Pipeline(_Tiny(), diffcore.get("schedules", schedule)(), make_parameterization(prediction), run=run)


def test_sigma_schedules_respace_the_trained_schedule() -> None:
    pipe = _tiny_pipe()
    spaced = sigma_schedules(pipe.schedule)
    assert {"karras", "exponential"} <= set(spaced)
    assert not {"linear", "squaredcos_cap_v2", "edm", "flow"} & set(spaced)  # noise schedules, not spacings
    for name, sched in spaced.items():
        assert sched.sigma_spacing == name and torch.equal(sched.alphas_cumprod, pipe.schedule.alphas_cumprod)


def test_model_calls_count_model_evaluations_not_steps() -> None:
    pipe = _tiny_pipe()
    assert model_calls(pipe, "euler", 5) == 5
    assert model_calls(pipe, "heun", 5) == model_calls(pipe, "dpm_2", 5) == 9  # two per step but the last
    assert model_calls(pipe, "euler", 4, schedule="karras") == 4
    assert "dpm_adaptive" not in stepped_samplers() and "euler_cfg_pp" not in stepped_samplers(cfg_pp=False)


def test_run_cost_plans_what_generate_run_counts() -> None:
    pipe, labels = _tiny_pipe(), balanced_labels(3, 3)
    for run in (
        {"sampler": "heun", "steps": 3, "guidance_scale": 1.0},
        {"sampler": "euler", "steps": 3, "guidance_scale": 3.0},
        {"sampler": "dpmpp_2m", "steps": 4, "guidance_scale": 0.0, "schedule": "karras"},
    ):
        assert run_cost(pipe, run) == generate_run(pipe, run, labels)[1]["evals_per_image"], run
    assert run_cost(pipe, {"sampler": "dpm_adaptive", "steps": 3, "guidance_scale": 3.0}, adaptive_calls=10) == 20


def test_evaluation_counter_counts_rows_while_active() -> None:
    model = _Tiny()
    with EvaluationCounter(model) as counter:
        model(torch.zeros(3, 1, 2, 2), torch.zeros(3))
        model(torch.zeros(2, 1, 2, 2), torch.zeros(2))
    model(torch.zeros(4, 1, 2, 2), torch.zeros(4))
    assert counter.count == 5
    with pytest.raises(TypeError, match="nn.Module"):
        EvaluationCounter(lambda x: x)  # type: ignore[arg-type]


def test_generate_run_counts_guided_passes() -> None:
    """Guidance 1 is one pass per call, guidance 3 two; CFG++ takes the unconditional pass at 1 too."""
    pipe, labels = _tiny_pipe(), balanced_labels(3, 6)
    cost = {}
    for sampler, w in (("euler", 1.0), ("euler", 3.0), ("euler_cfg_pp", 1.0)):
        x, facts = generate_run(pipe, {"sampler": sampler, "steps": 4, "guidance_scale": w}, labels)
        assert x.shape == (6, 1, 2, 2) and facts["image_evals"] == 6 * facts["evals_per_image"]
        cost[sampler, w] = facts["evals_per_image"]
    assert cost["euler", 1.0] == 4 and cost["euler", 3.0] == 8
    assert cost["euler", 1.0] < cost["euler_cfg_pp", 1.0] <= 8
    x, facts = generate_run(
        pipe, {"sampler": "dpm_adaptive", "steps": 10, "guidance_scale": 1.0, "sampler_options": {"rtol": 0.1}}, labels
    )
    assert facts["info"]["nfe"] == facts["evals_per_image"]  # one batch: its own count is the hook's


def test_run_sweep_records_refusals_and_scores() -> None:
    pipe, labels = _tiny_pipe(), balanced_labels(3, 3)
    refused = {"sampler": "dpm_adaptive", "steps": 2, "sampler_options": {"rtol": -1.0}}
    runs = [{"sampler": "euler", "steps": 2, "guidance_scale": 1.0}, refused]
    rows = run_sweep(pipe, runs, labels, lambda x, y: {"fd": float(x.abs().mean())})
    assert rows[0]["schedule"] == TIMESTEPS and "fd" in rows[0] and rows[0]["evals_per_image"] == 2
    assert "rtol=-1.0" in rows[1]["error"] and "fd" not in rows[1]


def test_fewest_evaluations_ranks_cost_to_reach_the_target() -> None:
    rows = [
        {"sampler": "a", "schedule": TIMESTEPS, "steps": 5, "evals_per_image": 5, "fd": 2.0},
        {"sampler": "a", "schedule": TIMESTEPS, "steps": 10, "evals_per_image": 10, "fd": 1.0},
        {"sampler": "b", "schedule": "karras", "steps": 4, "evals_per_image": 7, "fd": 1.05},
        {"sampler": "c", "schedule": TIMESTEPS, "steps": 5, "evals_per_image": 5, "fd": 3.0},
        {"sampler": "c", "schedule": TIMESTEPS, "steps": 9, "error": "refused"},
    ]
    target = fd_target(rows, "a", 10)
    assert target["target"] == pytest.approx(1.1)
    ranked = fewest_evaluations(rows, target["target"])
    assert [(r["sampler"], r["evals_per_image"], r["reached"]) for r in ranked] == [
        ("b", 7, True),
        ("a", 10, True),
        ("c", 5, False),
    ]
    with pytest.raises(ValueError, match="'b' at steps=4"):
        fd_target(rows, "b", 4)  # b only ran on karras


def test_uniform_flow_sigmas_take_equal_steps_in_flow_time() -> None:
    sigmas = uniform_flow_sigmas(4)
    assert math.isinf(sigmas[0]) and sigmas[-1] == 0
    assert torch.allclose(flow_time(sigmas), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    pipe = _tiny_pipe("flow", "flow")
    x, facts = generate_run(
        pipe, {"sampler": "euler", "steps": 2, "sigmas": uniform_flow_sigmas(2)}, balanced_labels(3, 3)
    )
    assert facts["evals_per_image"] == 2 and bool(torch.isfinite(x).all())
    with pytest.raises(ValueError, match="steps=0"):
        uniform_flow_sigmas(0)

"""The sampler study of ``diffcore demo``: files, images, and the convergence it must show.

One quick run (fewer points and RK4 steps, same step counts; ~10 s on 2 cores) is shared by
the tests of this module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import diffcore
from diffcore.evaluation import estimated_order, is_cfg_pp, stepped_samplers
from diffcore_plugins.demo import study as demo

pytestmark = pytest.mark.slow  # one quick sampler study (every deterministic sampler, ~10 s) shared by the module

# estimated order -> (lowest, highest) accepted
EXPECTED_ORDER = {
    "ddim": (0.5, 1.5),
    "euler": (0.5, 1.5),
    "heun": (1.5, 2.5),
    "dpmpp_2m": (1.5, 2.5),
    "unipc": (2.5, math.inf),
    "lms": (2.5, math.inf),
    "dpm_2": (1.5, 2.5),
    # second order with a first-order last step (lower_order_final, as diffusers): ~1.7 over 20-100 steps
    "dpmpp_2s": (1.5, 2.5),
    "deis": (1.5, 2.5),
    # fourth-order Adams-Bashforth with fixed (equal-step) coefficients: on unequal Karras steps ~2.3
    "ipndm": (1.8, math.inf),
    "pndm": (1.8, math.inf),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo") / "nested" / "out"  # main() creates missing parents
    return out, demo.main(out, quick=True)


def test_writes_the_three_files(study: tuple[Path, dict[str, Any]]) -> None:
    out, result = study
    for name in ("samplers.png", "samples.png", "samplers.json"):
        assert (out / name).is_file(), f"{name} missing in {out}"
    assert {Path(p).name for p in result["files"].values()} == {"samplers.png", "samples.png", "samplers.json"}


@pytest.mark.parametrize("name", ["samplers.png", "samples.png"])
def test_pngs_are_valid_images(study: tuple[Path, dict[str, Any]], name: str) -> None:
    out, _ = study
    with Image.open(out / name) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(out / name) as im:
        w, h = im.size
        assert w > 200 and h > 200
        assert sum(c > 0 for c in im.convert("L").histogram()) > 10, f"{name} is blank"


def test_every_deterministic_fixed_step_sampler_is_studied() -> None:
    """The study covers each registered deterministic sampler with a step count (CFG++ needs guidance)."""
    registered = {
        s for s in stepped_samplers(cfg_pp=False) if not getattr(diffcore.get("samplers", s), "stochastic", True)
    }
    assert registered <= set(demo.DETERMINISTIC) and set(demo.DETERMINISTIC) == set(EXPECTED_ORDER)
    stochastic = {s for s in stepped_samplers() if getattr(diffcore.get("samplers", s), "stochastic", False)}
    assert {s for s in stochastic if not is_cfg_pp(s)} <= set(demo.GALLERY)


def test_json_matches_the_returned_dict(study: tuple[Path, dict[str, Any]]) -> None:
    out, result = study
    saved = json.loads((out / "samplers.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["kernel_backend"] in ("reference", "native-cpu", "native-cuda")
    assert sorted(saved["errors"]) == sorted(demo.DETERMINISTIC)


@pytest.mark.parametrize("sampler", demo.DETERMINISTIC)
def test_error_decreases_with_steps(study: tuple[Path, dict[str, Any]], sampler: str) -> None:
    _, result = study
    errors = result["errors"][sampler]
    assert len(errors) == len(result["steps"])
    assert all(b < a for a, b in zip(errors, errors[1:])), f"{sampler}: errors {errors} do not decrease"


@pytest.mark.parametrize("sampler", demo.DETERMINISTIC)
def test_estimated_order(study: tuple[Path, dict[str, Any]], sampler: str) -> None:
    _, result = study
    lo, hi = EXPECTED_ORDER[sampler]
    order = result["orders"][sampler]
    assert lo <= order <= hi, f"{sampler}: estimated order {order:.2f} outside [{lo}, {hi}]"


def test_reference_is_far_more_accurate_than_any_sampler(study: tuple[Path, dict[str, Any]]) -> None:
    _, result = study
    best = min(min(e) for e in result["errors"].values())
    assert result["reference"]["error_bound"] < 0.01 * best


def test_heun_makes_two_calls_per_step_to_a_positive_end_point(study: tuple[Path, dict[str, Any]]) -> None:
    _, result = study
    assert result["model_evaluations"]["heun"] == [2 * n for n in result["steps"]]
    assert result["model_evaluations"]["dpm_2"] == [2 * n for n in result["steps"]]
    assert result["model_evaluations"]["euler"] == result["steps"]
    assert all(e > n for e, n in zip(result["model_evaluations"]["pndm"], result["steps"]))  # + its warm-up


def test_dpm_adaptive_buys_accuracy_with_evaluations(study: tuple[Path, dict[str, Any]]) -> None:
    """Tighter tolerances cost more model evaluations and end nearer the exact solution."""
    _, result = study
    ad = result["adaptive"]
    assert ad["rtol"] == sorted(ad["rtol"], reverse=True) and len(ad["errors"]) == len(ad["rtol"])
    assert all(b >= a for a, b in zip(ad["model_evaluations"], ad["model_evaluations"][1:]))
    assert ad["errors"][-1] < 0.1 * ad["errors"][0]
    assert ad["model_evaluations"][-1] > ad["model_evaluations"][0]


def test_gallery_samples_are_near_the_data(study: tuple[Path, dict[str, Any]]) -> None:
    _, result = study
    scores = result["gallery"]["mean_log_density"]
    # far-off or collapsed samples would sit below about -4 or above about -1 (data: about -2.15);
    # dpm_2_ancestral is the broadest at 20 steps (about -2.5 to -2.65; -2.2 at 100 steps)
    for name in demo.GALLERY:
        assert -2.8 < scores[name] < -1.5, f"{name}: mean log p {scores[name]:.3f}"


def test_order_fit_helper() -> None:
    steps = [10, 20, 40]
    assert estimated_order(steps, [3.0 / n**2 for n in steps]) == pytest.approx(2.0)
    assert estimated_order([48, 96], [0.4, 0.1]) == pytest.approx(2.0)  # two points: the exact slope
    with pytest.raises(ValueError, match="paired"):
        estimated_order([10, 20], [1.0])


def test_unwritable_out_dir_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    target = blocker / "out"
    with pytest.raises(ValueError, match="a_file/out.*not writable"):
        demo.main(target, quick=True)

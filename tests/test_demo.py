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

from diffcore.evaluation import estimated_order
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
    assert result["model_evaluations"]["euler"] == result["steps"]


def test_gallery_samples_are_near_the_data(study: tuple[Path, dict[str, Any]]) -> None:
    _, result = study
    scores = result["gallery"]["mean_log_density"]
    # far-off or collapsed samples would sit below about -4 or above about -1 (data: about -2.15)
    for name in demo.GALLERY:
        assert -2.6 < scores[name] < -1.5, f"{name}: mean log p {scores[name]:.3f}"


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

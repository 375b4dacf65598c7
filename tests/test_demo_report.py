"""The main job: ``diffcore demo`` trains, runs every task and writes a report whose images load.

One quick run (tiny models and budgets; its numbers mean nothing) is shared by the tests.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

import diffcore
from diffcore import cli, plugins
from diffcore.evaluation import ADAPTIVE, TIMESTEPS, stepped_samplers
from diffcore_plugins.demo import app as demo
from diffcore_plugins.demo import check
from diffcore_plugins.demo.recipes import FLOW_STEPS, QUICK
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import train_or_reuse

pytestmark = pytest.mark.slow  # one quick `diffcore demo` run (trains every model) shared by the module

SECTIONS = (
    "training",
    "generation",
    "text2image",
    "img2img",
    "denoising",
    "anomaly",
    "flow",
    "sampler-sweep",
    "samplers",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, demo.main(out, quick=True)


def test_writes_report_and_results(run: tuple[Path, dict[str, Any]]) -> None:
    out, result = run
    for name in ("report.html", "report.md", "results.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["kernel_backend"] == result["kernel_backend"]
    assert set(saved) >= {
        "generation",
        "text2image",
        "img2img",
        "denoising",
        "anomaly",
        "flow",
        "sampler_sweep",
        "samplers",
        "training",
    }
    assert set(saved["training"]) == {"digits", "text", "tabular", "flow"}


def test_every_section_is_in_both_pages(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in md and f'id="{anchor}"' in page, anchor
    assert "Kernel backend:" in md and "Kernel backend:" in page


def test_every_image_exists_and_decodes(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    sources = check.image_sources(out / "report.html")
    assert len(sources) >= 12
    assert check.static_check(out / "report.html") == []
    md = (out / "report.md").read_text()
    assert all(f"]({src})" in md for src in sources)  # the Markdown page shows the same figures


def test_images_load_in_headless_chromium(run: tuple[Path, dict[str, Any]]) -> None:
    out, _ = run
    browser = check.find_browser()
    if browser is None:
        pytest.skip("no headless Chromium installed (apt-get install chromium-headless-shell)")
    seen = check.browser_check(out / "report.html", browser)
    n = len(check.image_sources(out / "report.html"))
    assert seen == {"total": n, "ok": n, "broken": []}


def test_inpainting_keeps_known_pixels(run: tuple[Path, dict[str, Any]]) -> None:
    _, result = run
    assert result["img2img"]["known_pixels_exact"] is True


def test_flow_and_diffusion_are_compared_at_few_euler_steps(run: tuple[Path, dict[str, Any]]) -> None:
    out, result = run
    flow = result["flow"]
    assert (out / "runs" / "flow" / "checkpoint.safetensors").is_file()
    assert set(flow["rows"]) == {"diffusion", "flow", "flow, FlowMatchEuler levels"}
    for by_steps in flow["rows"].values():
        assert list(by_steps) == [str(k) for k in FLOW_STEPS]
        for k, row in by_steps.items():
            assert row["evals_per_image"] == int(k)  # Euler at guidance 1: one evaluation per step
            assert row["fd"] > 0 and 0 <= row["class_accuracy"] <= 1
    assert flow["real_fd"]["n_subset"] == flow["n"] == 10 * QUICK["samples"]["flow_per_class"]


def test_sampler_sweep_covers_every_sampler_and_ranks_by_evaluations(run: tuple[Path, dict[str, Any]]) -> None:
    _, result = run
    sweep = result["sampler_sweep"]
    rows = sweep["rows"]
    on_own = {(r["sampler"], r["steps"]) for r in rows if r["schedule"] == TIMESTEPS and r["sampler"] != ADAPTIVE}
    ref = QUICK["sweep"]["reference_steps"]
    assert on_own == {(s, k) for s in stepped_samplers(cfg_pp=False) for k in QUICK["sweep"]["steps"]} | {
        ("dpmpp_2m", ref)
    }
    assert {r["schedule"] for r in rows} >= {TIMESTEPS, "karras", "exponential"}
    adaptive = [r for r in rows if r["sampler"] == ADAPTIVE]
    assert [r["sampler_options"]["rtol"] for r in adaptive] == list(QUICK["sweep"]["rtols"])
    assert all(r["info"]["nfe"] == r["evals_per_image"] for r in adaptive)
    assert all("fd" in r or "error" in r for r in rows)
    fewest = sweep["fewest"]
    reached = [r["evals_per_image"] for r in fewest if r["reached"]]
    assert reached == sorted(reached) and all(r["fd"] <= sweep["target"]["target"] for r in fewest if r["reached"])
    assert sweep["target"]["sampler"] == "dpmpp_2m" and sweep["target"]["steps"] == ref


def test_check_reports_a_missing_image(tmp_path: Path) -> None:
    rep = Report("t", ["intro"])
    rep.section("S", "s").figure("gone.png", "a figure that is not there")
    (tmp_path / "report.html").write_text(rep.html())
    problems = check.static_check(tmp_path / "report.html")
    assert problems and "gone.png" in problems[0]
    assert check.main([str(tmp_path / "report.html")]) == 1
    with pytest.raises(FileNotFoundError, match="gone.png"):
        rep.write(tmp_path)


def test_rerun_reuses_checkpoint_and_new_recipe_retrains(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, _ = run
    recipe = {
        **QUICK["tabular"],
        "dataset": "tabular",
        "steps": 3,
        "dataset_options": {"path": str(out / "data" / "breast_cancer_benign_train.csv"), "holdout": 0.1, "seed": 0},
    }
    _, first = train_or_reuse("t", recipe, tmp_path, retrain=False)
    _, second = train_or_reuse("t", recipe, tmp_path, retrain=False)
    assert first["reused"] is False and second["reused"] is True
    _, third = train_or_reuse("t", {**recipe, "steps": 4}, tmp_path, retrain=False)
    assert third["reused"] is False


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        demo.main(f, quick=True)


def test_check_of_a_missing_page_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main([str(tmp_path / "nope.html")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_library_does_not_import_the_demo() -> None:
    """The demo is an application on top of diffcore: no module of the library imports it."""
    for path in Path(diffcore.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.startswith(("diffcore_plugins.demo", "diffcore.demo")) for n in names), path


def test_demo_command_is_the_plugins_and_passes_its_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "diffcore_plugins.demo" in plugins.BUILTIN_PLUGINS and "demo" not in cli.BUILTIN_COMMANDS
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(demo, "main", lambda **kw: calls.append(kw) or {})
    assert cli.main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert calls == [{"out": tmp_path / "d", "quick": False, "retrain": False}]
    assert cli.main(["demo", "--quick", "--retrain"]) == 0
    assert calls[-1] == {"out": Path("outputs/demo"), "quick": True, "retrain": True}


def test_demo_command_names_a_bad_out_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    assert cli.main(["demo", "--out", str(f), "--quick"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"diffcore: error: demo: --out {str(f)!r} exists and is not a directory"

"""The example third-party plugin, pip-installed, is discovered through its entry point; its
sampler runs through diffcore.sample and its task through the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip-installs the template into a temporary site and runs it in subprocesses

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "examples" / "plugin-template"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(TEMPLATE),
        ],
        check=True,
        capture_output=True,
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    env.pop("DIFFCORE_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("DIFFCORE_LOAD_PLUGINS", None)
    return env


def _python(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout


def test_plugin_is_listed_with_its_hooks(installed):
    out = subprocess.run(
        [sys.executable, "-m", "diffcore", "plugins"], env=installed, check=True, capture_output=True, text=True
    ).stdout
    info = {p["name"]: p for p in json.loads(out)}
    assert info["template"]["version"] == "0.1.0"
    assert set(info["template"]["hooks"]) == {"register_samplers", "register_tasks"}
    assert info["template"]["error"] is None


def test_sampler_runs_through_diffcore_sample_at_second_order(installed):
    code = """
import json, math, torch, diffcore
from diffcore.analytic import GaussianMixture, exact_model
from diffcore.schedules import EDMSchedule, karras_sigmas
assert "ralston" in diffcore.available("samplers")
gm = GaussianMixture.ring(k=4, radius=2.0, std=0.5, dim=2); s = EDMSchedule()
x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
exact = gm.ode_solution(x * 80.0, 80.0, 0.1, steps=1000)
errs = [(diffcore.sample(exact_model(gm, s), x, sampler="ralston", schedule=s,
         sigmas=karras_sigmas(0.1, 80.0, n + 1, 7.0)) - exact).pow(2).mean().sqrt().item() for n in (24, 48)]
linear = diffcore.get("schedules", "linear")()
y = diffcore.sample(exact_model(gm, linear), x, sampler="ralston", steps=15, schedule=linear)
print(json.dumps({"order": math.log2(errs[0] / errs[1]), "finite": bool(torch.isfinite(y).all())}))
"""
    result = json.loads(_python(code, installed))
    assert abs(result["order"] - 2.0) <= 0.3
    assert result["finite"]


def test_task_runs_through_the_cli(installed):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffcore",
            "run",
            "mixture-fidelity",
            "--sampler",
            "ralston",
            "--steps",
            "12",
            "--points",
            "64",
        ],
        env=installed,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    assert result["sampler"] == "ralston" and result["steps"] == 12
    assert 0 < result["rms_error"] < 0.1 and math.isfinite(result["rms_error"])
    bad = subprocess.run(
        [sys.executable, "-m", "diffcore", "run", "mixture-fidelity", "--steps", "0"],
        env=installed,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "steps=0" in bad.stderr


def test_disabling_autoload_hides_the_plugin(installed):
    env = dict(installed, DIFFCORE_DISABLE_PLUGIN_AUTOLOAD="1")
    assert "ralston" not in json.loads(
        _python("import json, diffcore; print(json.dumps(diffcore.available('samplers')))", env)
    )

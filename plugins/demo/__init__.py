"""Built-in plugin: the ``diffcore demo`` command, an application on top of the library.

    diffcore demo --out outputs/demo            # train (or reuse) the demo models, run every task
    diffcore demo --quick --out /tmp/demo       # tiny models and budgets: a smoke run
    python -m diffcore_plugins.demo.check outputs/demo/report.html   # every image of the report loads

The job itself is :func:`diffcore_plugins.demo.app.main`; its stages are in
:mod:`diffcore_plugins.demo.stages` and the evaluators it shares with ``benchmarks/quality`` in
:mod:`diffcore.evaluation`. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffcore.plugins import hookimpl

__all__ = ["register_commands"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from diffcore_plugins.demo.app import main

    main(out=args.out, quick=args.quick, retrain=args.retrain)  # it prints its own summary
    return 0


@hookimpl
def register_commands(cli: Any) -> None:
    p = cli.add_command("demo", "run the main job: train on the embedded digits, run all five tasks, write a report")
    p.description = (
        "Train the demo models on the embedded digits data (or reuse them), run generation, "
        "text-to-image, image-to-image, denoising and anomaly detection, compare a flow-matching "
        "model with the diffusion model at few steps and every sampler and sigma schedule by model "
        "evaluations, and write report.html / report.md to --out."
    )
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (as used by the tests)")
    p.add_argument("--retrain", action="store_true", help="train the models again even when cached in --out/runs")
    p.set_defaults(func=_cmd_demo)

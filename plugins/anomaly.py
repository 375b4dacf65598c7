"""Built-in plugin: the ``detect`` task and the ``diffcore detect`` command (anomaly detection).

    diffcore detect --checkpoint runs/digits --input images.npz --method recon --depth 0.3 \\
        --noise simplex --calibrate normals.npz --fpr 0.05 --output out/scores.json
    diffcore detect --checkpoint runs/table --input rows.csv --method dte --calibrate calib.json

The task, its parameters and the math are in :mod:`diffcore.tasks.anomaly`; the file formats in
:mod:`diffcore.io`; ``--engine`` and the Ray pool's options in :mod:`diffcore.scale.tasks`.
"""

from __future__ import annotations

from typing import Any

from diffcore.plugins import hookimpl
from diffcore.scale.tasks import ScaledDetect


@hookimpl
def register_tasks(register: Any) -> None:
    register(ScaledDetect.name, ScaledDetect())


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_task(
        ScaledDetect.name,
        ScaledDetect(),
        "anomaly detection: reconstruction error or diffusion-time scores, calibrated thresholds, anomaly maps",
    )

"""Built-in plugin: the ``diffcore export`` command.

    diffcore export runs/unet --format diffusers --out exported/

writes a run (a diffusers UNet2DModel and its schedule) as a diffusers DDPMPipeline folder that
``DDPMPipeline.from_pretrained`` / ``DDIMPipeline.from_pretrained`` load
(:mod:`diffcore.interop.export`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from diffcore.plugins import hookimpl


def _export(args: argparse.Namespace) -> int:
    from diffcore.interop.export import save_pretrained
    from diffcore.pipeline import Pipeline

    pipe = Pipeline.load(args.run, ema=not args.no_ema)
    out = save_pretrained(pipe, args.out)
    print(json.dumps({"format": args.format, "out": str(out)}))
    return 0


@hookimpl
def register_commands(cli: Any) -> None:
    from diffcore.interop.export import EXPORT_FORMATS

    p = cli.add_command("export", "write a run as another library's folder (diffusers: a DDPMPipeline folder)")
    p.add_argument("run", help="run folder or checkpoint file")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="diffusers", help="output format (default diffusers)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights, not the EMA ones")
    p.set_defaults(func=_export)

"""Denoising at sigma 25, 50 and 75 (0..255 scale): the posterior mean against the Wiener filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffcore.baselines import wiener, wiener_fit
from diffcore.evaluation import psnr_db
from diffcore.pipeline import Pipeline
from diffcore.tasks.denoise import denoise
from diffcore_plugins.demo.figures import strip_figure
from diffcore_plugins.demo.recipes import SIGMAS
from diffcore_plugins.demo.report import Report
from diffcore_plugins.demo.runs import log

__all__ = ["run"]

TEXT = (
    "The reverse process starts at the level whose noise equals sigma (x_t = sqrt(abar_t) y); the "
    "posterior-mean (`mmse`) estimate is one model evaluation. CLI: `diffcore denoise --checkpoint "
    "outputs/demo/runs/digits --input noisy.png --sigma 50`."
)


def run(pipe: Pipeline, data: Any, cfg: dict[str, Any], out: Path, rep: Report) -> dict[str, Any]:
    log("denoising at sigma 25, 50, 75")
    m = max(cfg["images"], 8)
    x = data.test[:m]
    mu, cov = wiener_fit(data.train)
    g = torch.Generator().manual_seed(0)
    rows, table, res = [], [], {}
    for sigma in SIGMAS:
        s_model = 2.0 * sigma / 255.0
        noisy = x + s_model * torch.randn(x.shape, generator=g)
        ours = denoise(pipe, noisy, sigma, sigma_scale=255.0, seed=0)
        linear = wiener(noisy, mu, cov, s_model).clamp(-1, 1)  # Gaussian-prior (Wiener) fitted on train
        res[sigma] = {"noisy": psnr_db(noisy, x), "diffcore_mmse": psnr_db(ours, x), "wiener": psnr_db(linear, x)}
        table.append([sigma, res[sigma]["noisy"], res[sigma]["diffcore_mmse"], res[sigma]["wiener"]])
        rows += [(f"noisy, sigma {sigma}", noisy[:8]), ("diffcore", ours[:8]), ("Wiener", linear[:8])]
    rows.append(("clean", x[:8]))
    strip_figure(rows, out / "denoising.png", "denoising: noisy / diffcore (posterior mean) / Wiener, per sigma")
    s = rep.section("Denoising", "denoising").text(TEXT)
    s.figure("denoising.png", "Noisy / denoised / Wiener at sigma 25, 50, 75 (0..255 scale), then the clean images.")
    s.table(
        ["sigma (0..255)", "noisy PSNR", "diffcore mmse PSNR", "Wiener PSNR (baseline)"],
        table,
        f"PSNR in dB over {m} held-out digits",
    )
    return {str(k): v for k, v in res.items()}

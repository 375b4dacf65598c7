"""Anomaly detection with a diffusion model trained on normal data only.

- :mod:`.scores`: reconstruction scores (AnoDDPM), the default recipes per data kind, input
  checks and table standardization.
- :mod:`.dte`: diffusion-time estimates (DTE).
- :mod:`.calibration`: thresholds fitted on normal scores (:class:`Calibration`).
- :mod:`.noise`: simplex noise for partial diffusion of images.
- :mod:`.task`: :func:`detect` (score, then label with a calibration) and the ``detect`` task.
"""

from __future__ import annotations

from diffcore.tasks.anomaly.calibration import SCORE_SETTINGS, Calibration, check_settings
from diffcore.tasks.anomaly.dte import dte_scores
from diffcore.tasks.anomaly.noise import simplex_noise
from diffcore.tasks.anomaly.scores import (
    ERRORS,
    IMAGE_RECIPE,
    METHODS,
    NOISES,
    RECIPES,
    TABLE_RECIPE,
    Detection,
    check_input,
    depth_timesteps,
    gaussian_blur,
    image_scores,
    recipe_for,
    reconstruction_scores,
    standardize,
)
from diffcore.tasks.anomaly.task import Detect, DetectParams, detect, load_input, resolve_calibration

__all__ = [
    "ERRORS",
    "IMAGE_RECIPE",
    "METHODS",
    "NOISES",
    "RECIPES",
    "SCORE_SETTINGS",
    "TABLE_RECIPE",
    "Calibration",
    "Detect",
    "DetectParams",
    "Detection",
    "check_input",
    "check_settings",
    "depth_timesteps",
    "detect",
    "dte_scores",
    "gaussian_blur",
    "image_scores",
    "load_input",
    "recipe_for",
    "reconstruction_scores",
    "resolve_calibration",
    "simplex_noise",
    "standardize",
]

"""Scoring and labelling in one call (:func:`detect`) and the ``detect`` task over files.

Image inputs are read like ``translate``'s (PNG/JPEG, NPY/NPZ; uint8 pixels or floats in
[-1, 1]). Tabular inputs are CSV files with the training header (any column order; the label
column, if any, is ignored) or NPY/NPZ arrays with the training column count, in raw units:
they are scaled with the scaling stored in the checkpoint (:mod:`diffcore.data.scaling`). With no
options a table is scored with :class:`diffcore.DiffusionDetector`'s defaults
(:mod:`diffcore.tasks.anomaly.defaults`); ``--error mahalanobis`` whitens by ``--reference`` or the
run's stored training rows. ``calibrate`` takes held-out normal data (scored the same way) or a
``calibration.json`` written by an earlier run.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from diffcore import io
from diffcore.io.progress import shown
from diffcore.pipeline import Pipeline
from diffcore.tasks import TaskWarning, as_json, load_pipeline
from diffcore.tasks.anomaly import defaults
from diffcore.tasks.anomaly.calibration import Calibration, check_settings
from diffcore.tasks.anomaly.dte import dte_scores
from diffcore.tasks.anomaly.dte_variants import recon_dte_np_detection
from diffcore.tasks.anomaly.scores import (
    ERRORS,
    METHODS,
    NOISES,
    Detection,
    recipe_for,
    reconstruction_scores,
    standardize,
)
from diffcore.tasks.inputs import (
    MAX_BATCH,
    MAX_SEED,
    MAX_STEPS,
    check_int,
    check_number,
    device_field,
    quiet_field,
)
from diffcore.training.checkpoint import load_checkpoint
from diffcore.training.tabular import REFERENCE_FILE

REFERENCE_RULE = (
    "--error mahalanobis needs --reference (normal data; a table run: its stored training rows by default), "
    "and --reference is used by --method recon --error mahalanobis only"
)
# the table score of defaults.METHOD as detect's recon error (recon: defaults.ERROR)
TABLE_ERROR = "mahalanobis" if defaults.METHOD == "mahalanobis" else defaults.ERROR
# the recon + DTE-NP ensemble (DiffusionDetector's method of that name): table runs only, by their stored rows
ENSEMBLE = "recon_dte_np"
DETECT_METHODS = (*METHODS, ENSEMBLE)

__all__ = ["Detect", "DetectParams", "detect", "load_input", "reference_rows", "resolve_calibration", "scoring_options"]


def detect(
    pipe_or_model: Pipeline | Callable[..., Tensor],
    x: Tensor,
    *,
    method: Literal["recon", "dte", "recon_dte_np"] = "recon",
    calibration: Calibration | None = None,
    **options: Any,
) -> Detection:
    """Score ``x`` with ``method`` (``options`` go to :func:`reconstruction_scores` or
    :func:`dte_scores`; ``recon_dte_np``: :func:`recon_dte_np_detection`, ``reference`` the
    normal rows) and, with a ``calibration``, label it (True = anomaly)."""
    if method not in DETECT_METHODS:
        raise ValueError(f"method={method!r}: expected one of {DETECT_METHODS}")
    if calibration is not None:
        if calibration.method and calibration.method != method:
            raise ValueError(f"the calibration was fitted on {calibration.method!r} scores, not {method!r}")
        check_settings(calibration.settings, options)
    if method == ENSEMBLE:
        result = recon_dte_np_detection(pipe_or_model, x, **options)
    else:
        result = (reconstruction_scores if method == "recon" else dte_scores)(pipe_or_model, x, **options)
    if calibration is not None:
        result.labels = calibration.labels(result.scores)
        result.threshold = calibration.threshold
    return result


def load_input(path: Path, pipe: Pipeline, what: str) -> Tensor:
    """A file in model space for ``pipe``: images, or a raw table standardized with the training
    statistics (CSV columns must be the training columns, in any order)."""
    if pipe.dataset.get("kind") == "tabular":
        label = (pipe.dataset.get("meta") or {}).get("label_column")
        columns, values = io.read_table(path, label, what)
        return standardize(pipe, values, columns)
    if path.suffix.lower() == ".csv":
        raise ValueError(f"{what} {str(path)!r} is a CSV table, but this model was trained on images")
    return io.load_images(path)


def stored_rows_path(checkpoint: Path) -> Path:
    """Where a table run keeps its scaled training rows: next to ``checkpoint`` (a run folder or
    its checkpoint file)."""
    return (checkpoint if checkpoint.is_dir() else checkpoint.parent) / REFERENCE_FILE


def reference_rows(params: Any, pipe: Pipeline) -> Tensor:
    """The normal rows that whiten ``--error mahalanobis``: ``params.reference`` (scaled like the
    input), else a table run's stored training rows (``train_rows.safetensors`` next to its
    checkpoint, written by ``diffcore train``; :mod:`diffcore.training.tabular`)."""
    if params.reference is not None:
        return load_input(params.reference, pipe, "reference data")
    stored = stored_rows_path(params.checkpoint)
    folder = stored.parent
    if pipe.dataset.get("kind") != "tabular" or not stored.is_file():
        mahalanobis = "--error mahalanobis needs --reference (normal data)"
        needs = "--method recon_dte_np needs the run's training rows" if params.method == ENSEMBLE else mahalanobis
        raise ValueError(
            f"{needs}: {str(folder)!r} holds no {REFERENCE_FILE} "
            "(table runs trained by this diffcore store their training rows there)"
        )
    tensors, _ = load_checkpoint(stored)
    return tensors["rows"].to(torch.float32)


def scoring_options(params: Any, pipe: Pipeline, shape: tuple[int, ...]) -> dict[str, Any]:
    """The options of :func:`detect` for a ``detect`` run on samples of ``shape`` (the local run
    and :mod:`diffcore.scale`'s): ``params.method`` resolved for the data
    (:meth:`DetectParams.table_method`), :meth:`DetectParams.options`, and the normal reference
    rows where the score needs them (:func:`reference_rows`)."""
    params.method = params.table_method(shape)
    options = params.options(shape)
    if options.get("error") == "mahalanobis" or params.method == ENSEMBLE:
        options["reference"] = reference_rows(params, pipe)
    return options


# --------------------------------------------------------------------------- the task


MAX_SMOOTH = 1000.0  # pixels: the largest Gaussian blur of an anomaly map
_RECIPE_HELP = " (default: the recipe for images or table rows, diffcore.tasks.anomaly.RECIPES)"


@dataclass
class DetectParams:
    """Parameters of the ``detect`` task: inputs to score, optional normal data to calibrate on."""

    checkpoint: Path = field(metadata={"help": "run folder or checkpoint.safetensors"})
    input: Path = field(metadata={"help": "images (PNG/JPEG/NPY/NPZ) or a table (CSV/NPY/NPZ, raw units) to score"})
    method: Literal["recon", "dte", "recon_dte_np"] = field(
        default="recon",
        metadata={
            "help": "recon: partial-diffusion reconstruction error | dte: diffusion-time estimate | recon_dte_np: "
            "recon and DTE-NP among the run's stored training rows (tables; the default for a table run with no "
            "--error or recipe options)"
        },
    )
    depth: float | list[float] | None = field(
        default=None,
        metadata={
            "help": "recon: noise depth(s), fractions of the schedule in (0, 1] or training timesteps > 1; "
            "errors are averaged over several" + _RECIPE_HELP
        },
    )
    noise: Literal["gaussian", "simplex"] = field(
        default="gaussian", metadata={"help": "recon: noise kind (simplex: images only)"}
    )
    repeats: int | None = field(default=None, metadata={"help": "recon: noise draws averaged per input" + _RECIPE_HELP})
    error: Literal["squared", "abs", "mahalanobis"] | None = field(
        default=None,
        metadata={
            "help": "recon: per-pixel (per-feature) error, or mahalanobis: the mean signed residual whitened by its "
            "statistics on --reference normal data (a table run: its stored training rows by default; inputs of "
            "<= 4096 values)" + _RECIPE_HELP
        },
    )
    reduce: Literal["mean", "max"] = field(
        default="mean", metadata={"help": "recon: image score = mean or max of the (smoothed) map"}
    )
    smooth: float = field(default=0.0, metadata={"help": "recon: Gaussian blur of image maps, sigma in pixels"})
    sampler: str | None = field(default=None, metadata={"help": "recon: sampler name" + _RECIPE_HELP})
    steps: int | None = field(
        default=None, metadata={"help": "recon: sampler steps (ddim, 1: the one-shot x0 prediction)" + _RECIPE_HELP}
    )
    levels: int = field(default=25, metadata={"help": "dte: noise levels evaluated per input"})
    reference: Path | None = field(
        default=None,
        metadata={
            "help": "recon --error mahalanobis: NORMAL data (same formats as --input, e.g. the training rows) whose "
            "residual statistics whiten the scores (default for a table run: its stored training rows)"
        },
    )
    calibrate: Path | None = field(
        default=None,
        metadata={
            "help": "held-out NORMAL data (same formats as --input) to fit the threshold on, or a calibration JSON"
        },
    )
    fpr: float | None = field(
        default=None, metadata={"help": "target false-positive rate of the threshold (default 0.05 with --calibrate)"}
    )
    quantile: float | None = field(
        default=None, metadata={"help": "threshold at this quantile of the normal scores (instead of --fpr)"}
    )
    seed: int = field(default=0, metadata={"help": "noise seed"})
    batch_size: int = field(default=256, metadata={"help": "inputs per model call"})
    output: Path = field(
        default=Path("outputs/detect/scores.json"),
        metadata={"help": "scores file, .json or .csv; plots are written next to it"},
    )
    device: str = device_field()
    quiet: bool = quiet_field()

    def __post_init__(self) -> None:
        self.checkpoint, self.input, self.output = Path(self.checkpoint), Path(self.input), Path(self.output)
        self.calibrate = Path(self.calibrate) if self.calibrate is not None else None
        self.reference = Path(self.reference) if self.reference is not None else None
        if self.error is not None and self.error not in ERRORS:
            raise ValueError(f"error={self.error!r}: expected one of {ERRORS}")
        if self.reference is not None and (self.method != "recon" or self.error not in ("mahalanobis", None)):
            raise ValueError(REFERENCE_RULE)
        if self.method not in DETECT_METHODS:
            raise ValueError(f"method={self.method!r}: expected one of {DETECT_METHODS}")
        if self.noise not in NOISES:
            raise ValueError(f"noise={self.noise!r}: expected one of {NOISES}")
        self.check_output()
        for name in ("repeats", "batch_size", "levels", "steps"):
            high = MAX_BATCH if name == "batch_size" else MAX_STEPS
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1, high)
        check_int("seed", self.seed, 0, MAX_SEED)
        check_number("smooth", self.smooth, 0.0, MAX_SMOOTH)
        self._check_depth()
        self._check_threshold()

    def check_output(self) -> None:
        """Check ``output`` as the scores file of a run in this process (.json or .csv); a wrapper
        that writes elsewhere (:mod:`diffcore.scale`: a folder of shards) overrides this."""
        if self.output.suffix.lower() not in (".json", ".csv"):
            raise ValueError(f"output={str(self.output)!r}: expected a file ending in .json or .csv")

    def _check_depth(self) -> None:
        if isinstance(self.depth, (list, tuple)) and len(self.depth) == 1:
            self.depth = self.depth[0]
        for d in self.depth if isinstance(self.depth, (list, tuple)) else [] if self.depth is None else [self.depth]:
            if not (isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) and d > 0):
                raise ValueError(f"depth={d!r} must be a fraction in (0, 1] or a training timestep > 1")

    def _check_threshold(self) -> None:
        if self.fpr is not None and self.quantile is not None:
            raise ValueError("give either --fpr or --quantile, not both")
        if (self.fpr is not None or self.quantile is not None) and self.calibrate is None:
            raise ValueError("--fpr/--quantile set the threshold fitted on --calibrate data; pass --calibrate")
        if self.fpr is not None and not 0 <= self.fpr < 1:
            raise ValueError(f"fpr={self.fpr!r} must be in [0, 1)")
        if self.quantile is not None and not 0 < self.quantile <= 1:
            raise ValueError(f"quantile={self.quantile!r} must be in (0, 1]")

    def _table_error(self) -> str:
        """The default error for table rows: :data:`TABLE_ERROR`; when that is ``mahalanobis`` but
        there are no normal rows to whiten by (no ``--reference``, and a run written before the
        runs kept their training rows), ``defaults.ERROR`` as such runs were scored before, with
        a :class:`~diffcore.tasks.TaskWarning`."""
        if TABLE_ERROR != "mahalanobis" or self.reference is not None or self.error is not None:
            return TABLE_ERROR
        return TABLE_ERROR if self._stored_rows(f"--error {defaults.ERROR}", "mahalanobis") else defaults.ERROR

    def table_method(self, shape: tuple[int, ...]) -> str:
        """detect's method for inputs of ``shape``: :data:`ENSEMBLE` when that is the table default
        (``defaults.METHOD``) and table rows are scored by ``recon`` with no ``--error``,
        ``--reference`` or recipe option, from a run that stored its training rows (else, with a
        :class:`~diffcore.tasks.TaskWarning`, ``recon``); otherwise ``method`` as given."""
        given = (self.error, self.reference, self.depth, self.repeats, self.sampler, self.steps)
        if defaults.METHOD != ENSEMBLE or self.method != "recon" or len(shape) != 1:
            return self.method
        if any(v is not None for v in given):
            return self.method
        return ENSEMBLE if self._stored_rows(f"recon --error {defaults.ERROR}", ENSEMBLE) else self.method

    def _stored_rows(self, fallback: str, default: str) -> bool:
        """Whether the run holds its training rows (``train_rows.safetensors``); if not, a
        :class:`~diffcore.tasks.TaskWarning` that ``fallback`` scores in place of ``default``."""
        stored = stored_rows_path(self.checkpoint)
        folder = stored.parent
        if stored.is_file():
            return True
        warnings.warn(
            f"{str(folder)!r} holds no {REFERENCE_FILE} (a run trained before issue #19) and no --reference was "
            f"given: scoring with {fallback} instead of the default {default}",
            TaskWarning,
            stacklevel=4,
        )
        return False

    def options(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """The scoring options of :func:`detect` for samples of ``shape``: those given, the rest
        from the recipe for the data kind (so a calibration records every setting); for table rows
        the detector's defaults (:mod:`diffcore.tasks.anomaly.defaults`)."""
        if self.method == "dte":
            return {"levels": self.levels, "seed": self.seed}
        recipe = recipe_for(shape)
        if len(shape) == 1:
            recipe.update(depth=list(defaults.DEPTHS), repeats=defaults.REPEATS, error=self._table_error())
        given = {
            "depth": self.depth,
            "repeats": self.repeats,
            "error": self.error,
            "sampler": self.sampler,
            "steps": self.steps,
        }
        if self.reference is not None and (self.error or recipe["error"]) != "mahalanobis":
            raise ValueError(REFERENCE_RULE)
        return {
            **recipe,
            **{k: v for k, v in given.items() if v is not None},
            "noise": self.noise,
            "reduce": self.reduce,
            "smooth": self.smooth,
            "seed": self.seed,
        }


class Detect:
    """Anomaly detection with a model trained on normal data: partial-diffusion reconstruction
    error (with an anomaly map) or diffusion-time estimation, thresholded on held-out normals."""

    name = "detect"
    Params = DetectParams

    def run(self, params: DetectParams) -> dict[str, Any]:
        started = time.perf_counter()
        pipe = load_pipeline(params.checkpoint, params.device)
        io.check_writable(params.output)
        x = load_input(params.input, pipe, "input")
        options = scoring_options(params, pipe, tuple(x.shape[1:]))
        progress = shown(params.quiet)
        calibration, normal_scores = resolve_calibration(params, pipe, options, progress=progress)
        result = detect(
            pipe,
            x,
            method=params.method,
            calibration=calibration,
            batch_size=params.batch_size,
            progress=progress,
            **options,
        )
        files = io.write_scores(params.output, x.cpu(), result, calibration, normal_scores)
        labels = result.labels
        return {
            "method": params.method,
            "n": int(result.scores.numel()),
            "threshold": result.threshold,
            "anomalies": None if labels is None else int(labels.sum()),
            "score_mean": float(result.scores.mean()),
            "score_max": float(result.scores.max()),
            "seconds": round(time.perf_counter() - started, 2),
            **files,
            "params": as_json(params),
        }


def resolve_calibration(
    params: DetectParams, pipe: Pipeline, options: dict[str, Any], *, progress: bool | None = False
) -> tuple[Calibration | None, Tensor | None]:
    """The calibration of a ``detect`` run and the normal scores it was fitted on: none without
    ``params.calibrate``; read from a calibration JSON (no scores); or fitted on the normal data
    in ``params.calibrate``, scored by :func:`detect` with ``options`` (those of
    :meth:`DetectParams.options`, plus ``reference``), at ``params.fpr`` (default 0.05) or
    ``params.quantile``. ``progress``: a bar while scoring (None: only on a terminal)."""
    if params.calibrate is None:
        return None, None
    if params.calibrate.suffix.lower() == ".json":
        io.check_file(params.calibrate, "calibration", (".json",))
        return Calibration.from_json(params.calibrate), None
    normals = load_input(params.calibrate, pipe, "calibration data")
    scores = detect(
        pipe, normals, method=params.method, batch_size=params.batch_size, progress=progress, **options
    ).scores
    target = (
        {"quantile": params.quantile}
        if params.quantile is not None
        else {"fpr": 0.05 if params.fpr is None else params.fpr}
    )
    settings = {**options, "reference": str(params.reference or REFERENCE_FILE)} if "reference" in options else options
    return Calibration.fit(scores, method=params.method, settings=settings, **target), scores

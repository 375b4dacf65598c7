"""The actors' work: callable classes that load a pipeline once and map batches of rows.

Ray Data calls a worker with a numpy batch holding an ``id`` column (the rows' global indices)
and the inputs; it returns ``id`` and the results. Each task keys its noise by the global row
index (``start=`` / ``sample_index=``), so a row's result does not depend on which actor or batch
it lands in: the shards equal the single-process output bit for bit on CPU. Nothing here imports
Ray; the classes are plain Python and testable without it.
"""

from __future__ import annotations

import io as _bytes_io
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from diffcore import io
from diffcore.tasks import load_pipeline
from diffcore.tasks.anomaly import detect, standardize
from diffcore.tasks.denoise import denoise
from diffcore.tasks.generation import generate_samples, table_rows

__all__ = ["DenoiseWorker", "DetectWorker", "GenerateWorker", "PipelineWorker", "png_bytes", "runs"]

Batch = dict[str, np.ndarray]


def runs(ids: np.ndarray) -> list[slice]:
    """Slices of ``ids`` over which the ids are consecutive (one slice for a contiguous batch)."""
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    edges = [0, *breaks.tolist(), len(ids)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def png_bytes(x: torch.Tensor) -> list[bytes]:
    """(N, C, H, W) images in [-1, 1] as one PNG file's bytes each."""
    from PIL import Image

    out = []
    for arr in io.to_uint8(x):
        buf = _bytes_io.BytesIO()
        Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class PipelineWorker:
    """Loads the pipeline once (per actor) and maps batches; subclasses define :meth:`process`.

    ``hook(ids)`` runs before each batch (instrumentation; the fault tests kill the actor there)."""

    def __init__(
        self,
        checkpoint: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        hook: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.pipe = load_pipeline(checkpoint, device)
        self.hook = hook

    def __call__(self, batch: Batch) -> Batch:
        ids = np.asarray(batch["id"], dtype=np.int64)
        if self.hook is not None:
            self.hook(ids)
        parts = [self.process({k: v[s] for k, v in batch.items()}, int(ids[s][0])) for s in runs(ids)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if len(parts) > 1 else parts[0]

    def process(self, batch: Batch, start: int) -> Batch:
        """Results of rows ``start, start + 1, ...`` (their ``id`` column included)."""
        raise NotImplementedError


def _samples(
    x: torch.Tensor, ids: np.ndarray, labels: torch.Tensor | None, png: bool, rows: np.ndarray | None = None
) -> Batch:
    out: Batch = {"id": ids, "label": np.full(len(ids), -1) if labels is None else labels.cpu().numpy()}
    if png:
        out["image"] = np.array(png_bytes(x), dtype=object)
    else:
        out["sample"] = x.float().cpu().numpy()
    if rows is not None:  # a table model's samples in the table's units
        out["row"] = rows
    return out


class GenerateWorker(PipelineWorker):
    """``generate``: rows are sample indices; returns ``label`` and ``image`` (PNG bytes) or
    ``sample`` (float32 model-space arrays), and for a table model ``row`` (float64, the table's
    units)."""

    def __init__(self, checkpoint: str, *, params: Any, png: bool = False, **kwargs: Any) -> None:
        super().__init__(checkpoint, **kwargs)
        self.params, self.png = params, png

    def process(self, batch: Batch, start: int) -> Batch:
        ids = batch["id"]
        x, labels = generate_samples(self.pipe, self.params, rows=slice(start, start + len(ids)))
        return _samples(x, ids, labels, self.png, table_rows(self.pipe, x))


class DetectWorker(PipelineWorker):
    """``detect``: rows are table rows (raw values in ``columns``) or image files (``path``);
    returns ``score`` and, with a calibration, ``label`` (True = anomaly)."""

    def __init__(
        self,
        checkpoint: str,
        *,
        method: str,
        options: dict[str, Any],
        calibration: Any = None,
        columns: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(checkpoint, **kwargs)
        self.method, self.options, self.calibration, self.columns = method, options, calibration, columns

    def process(self, batch: Batch, start: int) -> Batch:
        if self.columns is not None:
            x = standardize(self.pipe, np.stack([batch[c] for c in self.columns], axis=1))
        else:
            x = torch.cat([io.load_images(str(p)) for p in batch["path"]])
        result = detect(
            self.pipe,
            x,
            method=self.method,  # type: ignore[arg-type]
            calibration=self.calibration,
            batch_size=len(x),
            sample_index=start,
            progress=False,
            **self.options,
        )
        out: Batch = {"id": batch["id"], "score": result.scores.numpy()}
        if result.labels is not None:
            out["label"] = result.labels.numpy()
        return out


class DenoiseWorker(PipelineWorker):
    """``denoise``: rows are image files (``path``); returns ``image`` (PNG bytes) or ``sample``
    (float32 model space), each image denoised at its own size."""

    def __init__(self, checkpoint: str, *, options: dict[str, Any], png: bool = False, **kwargs: Any) -> None:
        super().__init__(checkpoint, **kwargs)
        self.options, self.png = options, png

    def process(self, batch: Batch, start: int) -> Batch:
        images = [io.load_images(str(p)) for p in batch["path"]]
        out: list[torch.Tensor] = []
        for first, group in _same_shape(images):  # one call per run of equally sized images
            out.extend(denoise(self.pipe, torch.cat(group), sample_index=start + first, **self.options))
        if self.png:
            arrays = np.empty(len(out), dtype=object)
            arrays[:] = [png_bytes(y[None])[0] for y in out]
            return {"id": batch["id"], "image": arrays}
        arrays = np.empty(len(out), dtype=object)
        arrays[:] = [y.float().numpy() for y in out]
        return {"id": batch["id"], "sample": arrays}


def _same_shape(images: list[torch.Tensor]) -> list[tuple[int, list[torch.Tensor]]]:
    """``images`` split into runs of equal shape: (index of the run's first image, its images)."""
    groups: list[tuple[int, list[torch.Tensor]]] = []
    for i, y in enumerate(images):
        if groups and groups[-1][1][0].shape == y.shape:
            groups[-1][1].append(y)
        else:
            groups.append((i, [y]))
    return groups

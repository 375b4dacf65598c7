"""Reflow: straighten a trained flow model (Liu, Gong and Liu, ICLR 2023, "Flow Straight and Fast",
Alg. 1, "k-rectified flow").

A trained flow model maps noise to data along curved paths, which few-step samplers cut short. Reflow
draws ``(noise, sample)`` pairs by solving the model's flow ODE from each noise, then trains a model
(initialized from the teacher) on the straight interpolations between the paired endpoints, so
that its paths straighten and one or two Euler steps suffice. The pairs are a dataset: they keep
their seed, the teacher and the solver that made them, and each pair's class label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffcore.sampling import sample

PAIRS_FILE = "reflow_pairs.safetensors"


@dataclass
class ReflowPairs:
    """``n`` paired endpoints of the teacher's flow ODE: ``noise`` (t = 1) and ``samples`` (t = 0)."""

    noise: Tensor
    samples: Tensor
    labels: Tensor | None
    meta: dict[str, Any]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tensors = {"noise": self.noise.contiguous(), "samples": self.samples.contiguous()}
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"reflow": json.dumps(self.meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReflowPairs:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("reflow", "{}"))
        t = load_file(str(path))
        if "noise" not in t or "samples" not in t or t["noise"].shape != t["samples"].shape:
            raise ValueError(f"{path}: not a reflow pairs file (noise and samples of one shape)")
        return cls(t["noise"], t["samples"], t.get("labels"), meta)


def _check_flow_teacher(pipe: Any, source: str) -> None:
    if pipe.param.name != "flow" or pipe.schedule.config().get("name") != "flow":
        raise ValueError(
            f"reflow needs a flow model (schedule 'flow', prediction 'flow'); {source} has schedule "
            f"{pipe.schedule.config().get('name')!r} and prediction {pipe.param.name!r}"
        )


@torch.no_grad()
def draw_pairs(
    teacher: str | Path, n: int, *, seed: int = 0, sampler: str = "heun", steps: int = 32, batch_size: int = 256
) -> ReflowPairs:
    """Solve the teacher's flow ODE from ``n`` noises (seeded); class labels cycle through the
    classes of a class-conditional teacher (no guidance: the conditional ODE itself)."""
    from diffcore.pipeline import Pipeline

    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"pairs={n!r} must be an integer >= 1")
    pipe = Pipeline.load(teacher)
    _check_flow_teacher(pipe, str(teacher))
    shape = tuple(pipe.run["dataset"]["shape"])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *shape), generator=g)
    classes = int(pipe.run["dataset"].get("num_classes", 0))
    labels = torch.arange(n) % classes if classes else None
    samples = torch.empty_like(noise)
    for start in range(0, n, batch_size):
        part = slice(start, min(n, start + batch_size))
        cond = None if labels is None else {"class_labels": labels[part]}
        samples[part] = sample(
            pipe.call_model,
            noise[part].clone(),
            sampler=sampler,
            steps=steps,
            schedule=pipe.schedule,
            prediction=pipe.param,
            cond=cond,
            seed=seed,
        )
    meta = {"teacher": str(teacher), "seed": seed, "n": n, "sampler": sampler, "steps": steps, "shape": list(shape)}
    return ReflowPairs(noise, samples, labels, meta)


def pairs_for(run_dir: Path, teacher: str | Path, n: int, **kw: Any) -> ReflowPairs:
    """The pairs of ``run_dir`` when they were drawn with the same settings, else new ones (saved)."""
    path = run_dir / PAIRS_FILE
    want = {"teacher": str(teacher), "n": n, **{k: v for k, v in kw.items() if k != "batch_size"}}
    if path.exists():
        pairs = ReflowPairs.load(path)
        if all(pairs.meta.get(k) == v for k, v in want.items()):
            return pairs
    pairs = draw_pairs(teacher, n, **kw)
    run_dir.mkdir(parents=True, exist_ok=True)
    pairs.save(path)
    return pairs

"""The Trainer: AdamW with warmup, EMA, clipping, loss weighting, label dropout, bf16 autocast,
atomic safetensors checkpoints with exact resume, and DistributedDataParallel when launched
under ``torchrun``.

Determinism: batches, timesteps, noise and label dropout come from one ``torch.Generator`` per
rank and dropout from torch's global RNG; both states are checkpointed, so on CPU ``N`` steps +
resume + ``N`` steps reproduce ``2N`` steps bit for bit.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from diffcore import ops
from diffcore.devices import resolve_device
from diffcore.parameterization import Parameterization
from diffcore.schedules import Schedule
from diffcore.training.checkpoint import CheckpointError, atomic_write_json, load_checkpoint, save_checkpoint
from diffcore.training.config import TrainConfig
from diffcore.training.metrics_file import append_metrics, plot_loss_curve, truncate_metrics
from diffcore.training.objective import Objective
from diffcore.training.run_folder import changed_settings

CHECKPOINT_NAME = "checkpoint.safetensors"


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Train ``model`` on ``data`` (a DiffusionDataset) and write checkpoints to ``out``.

    ``device``: a name for :func:`diffcore.devices.resolve_device` (``"auto"``: CUDA, then MPS,
    then CPU) or a torch device. ``out=None`` trains in memory: no checkpoint, metrics or plot
    (what :class:`diffcore.DiffusionDetector` does). ``quiet`` hides the progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule,
        param: Parameterization,
        data: Any,
        config: TrainConfig,
        out: str | Path | None,
        run: dict[str, Any],
        device: str | torch.device | None = "auto",
        *,
        condition: Any = None,
        captions: Any = None,
        text_dropout: float = 0.1,
        pairs: Any = None,
        quiet: bool = False,
    ) -> None:
        self.rank, self.world = _rank_world()
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.data = data
        self.config = config
        self.out = None if out is None else Path(out)
        self.quiet = quiet
        self.run = run
        self.objective = Objective(
            schedule,
            param,
            config.loss_weighting,
            config.min_snr_gamma,
            config.sigma_data,
            timestep_sampling=config.timestep_sampling,
            logit_mean=config.logit_mean,
            logit_std=config.logit_std,
            mode_scale=config.mode_scale,
        )
        self.num_classes = int(getattr(data, "num_classes", 0) or 0)
        self.condition = condition  # paired translation: makes cond["concat"] from x0
        self.captions = captions  # text-to-image: captions.train(labels, generator) -> list[str]
        if not 0 <= text_dropout < 1:
            raise ValueError(f"text_dropout={text_dropout} must be in [0, 1)")
        self.text_dropout = text_dropout
        model_classes = getattr(model, "num_classes", None)
        if model_classes is None:
            model_classes = (getattr(model, "config", {}) or {}).get("num_classes", 0)
        self.use_labels = bool(model_classes)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay
        )
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed * 1_000_003 + self.rank)
        torch.manual_seed(config.seed + self.rank)
        self.train_x = (data.train if pairs is None else pairs.samples).to(self.device)
        # reflow: each sample keeps the noise it was drawn from (diffcore.training.reflow)
        self.train_noise = None if pairs is None else pairs.noise.to(self.device)
        labels = getattr(data, "train_labels", None) if pairs is None else pairs.labels
        self.train_y = labels.to(self.device) if labels is not None and self.num_classes else None
        if captions is not None and self.train_y is None:
            raise ValueError("text conditioning needs a labeled dataset to caption")
        if self.train_x.shape[0] == 0:
            raise ValueError("the training split is empty")

    # ---------------------------------------------------------------- schedule and EMA
    def lr_at(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.lr_schedule == "cosine":
            progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
            return c.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return c.lr

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1 - decay)
        for e_buf, b in zip(self.ema.buffers(), self.model.buffers()):
            e_buf.copy_(b)

    # ---------------------------------------------------------------- one step
    def _batch(self) -> tuple[Tensor, Tensor, Tensor, Any, Tensor]:
        c, g = self.config, self.generator
        idx = torch.randint(0, self.train_x.shape[0], (c.batch_size,), generator=g)
        x0 = self.train_x[idx.to(self.device)]
        noise = (
            torch.randn(x0.shape, generator=g).to(self.device, x0.dtype)
            if self.train_noise is None
            else self.train_noise[idx.to(self.device)]
        )
        index, table, time_, weight = self.objective.draw(c.batch_size, g)
        x_t, target = ops.forward_noise(x0, noise, index.to(self.device), table.to(self.device, torch.float32))
        scale = self.objective.input_scale(time_)
        if scale is not None:
            x_t = x_t * scale.to(self.device).reshape(-1, *([1] * (x_t.dim() - 1)))
        cond: dict[str, Any] = {}
        if self.train_y is not None and self.use_labels:
            labels = self.train_y[idx.to(self.device)].clone()
            drop = torch.rand(c.batch_size, generator=g) < c.label_dropout
            labels[drop.to(self.device)] = self.num_classes
            cond["class_labels"] = labels
        if self.condition is not None:
            cond["concat"] = self.condition.make(x0, g)
        if self.captions is not None:
            texts = self.captions.train(self.train_y[idx.to(self.device)].cpu(), g)  # type: ignore[index]
            drop = torch.rand(c.batch_size, generator=g) < self.text_dropout
            cond["text"] = ["" if d else t for t, d in zip(texts, drop.tolist())]
        return x_t, time_.to(self.device), target, cond or None, weight.to(self.device)

    def _loss(self, net: nn.Module) -> Tensor:
        x_t, time_, target, cond, weight = self._batch()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            out = net(x_t, time_, cond)
        err = (out.float() - target.float()) ** 2
        return (weight * err.reshape(err.shape[0], -1).mean(dim=1)).mean()

    # ---------------------------------------------------------------- checkpoints
    def _gather(self, t: Tensor) -> list[Tensor]:
        if self.world == 1:
            return [t]
        out = [torch.zeros_like(t) for _ in range(self.world)]
        dist.all_gather(out, t)
        return out

    def checksum(self) -> float:
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    def _cuda_rng(self) -> Tensor | None:
        return torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None

    def save(self) -> dict[str, Any]:
        """Checkpoint (rank 0 writes; every rank takes part in the RNG-state gather)."""
        gen_state = self.generator.get_state().clone()
        states = self._gather(gen_state.to(self.device))
        cuda_state = self._cuda_rng()
        cuda_states = [] if cuda_state is None else self._gather(cuda_state.to(self.device))
        sums = self._gather(torch.tensor([self.checksum()], dtype=torch.float64, device=self.device))
        info = {"step": self.step, "rank_checksums": [float(s) for s in sums]}
        if self.rank != 0 or self.out is None:
            return info
        tensors: dict[str, Tensor] = {}
        tensors.update({f"model.{k}": v for k, v in self.model.state_dict().items()})
        tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        opt = self.optimizer.state_dict()
        for i, st in opt["state"].items():
            for key, val in st.items():
                tensors[f"optim.{i}.{key}"] = val if isinstance(val, Tensor) else torch.tensor(val)
        tensors["rng.torch"] = torch.get_rng_state()
        for r, s in enumerate(states):
            tensors[f"rng.gen.{r}"] = s.cpu()
        for r, s in enumerate(cuda_states):  # dropout on the GPU draws from the CUDA generator
            tensors[f"rng.cuda.{r}"] = s.cpu()
        groups = [{k: v for k, v in grp.items() if k != "params"} for grp in opt["param_groups"]]
        meta = {
            "format": 1,
            "kind": "training",
            "step": self.step,
            "world_size": self.world,
            "run": self.run,
            "optim_groups": groups,
            "sampler": self.run.get("sampler", {}),
        }
        save_checkpoint(self.out / CHECKPOINT_NAME, tensors, meta)
        return info

    def resume(self, allow_changes: bool = False) -> None:
        """Restore model, EMA, optimizer, step and RNG states from ``out``'s checkpoint.

        Training options other than ``steps``, ``checkpoint_every`` and ``log_every`` (and the
        data, schedule and prediction) must be the run's, unless ``allow_changes``."""
        if self.out is None:
            raise ValueError("resume needs a run folder (out=None trains in memory)")
        file = self.out / CHECKPOINT_NAME
        tensors, meta = load_checkpoint(file)
        if meta.get("kind") != "training":
            raise CheckpointError(f"{file} is not a training checkpoint (kind={meta.get('kind')!r})")
        if int(meta.get("world_size", 1)) != self.world:
            raise CheckpointError(
                f"{file} was written by {meta.get('world_size')} processes; resuming with {self.world}"
            )
        saved_run = meta.get("run") or {}
        if saved_run.get("model") != self.run.get("model"):
            raise CheckpointError(f"{file} holds model {saved_run.get('model')}, not {self.run.get('model')}")
        changed = changed_settings(saved_run, self.run)
        if changed and not allow_changes:
            raise ValueError(
                f"resume: {'; '.join(changed)} differ from the run in {self.out}; resume with the run's values, "
                "or pass overwrite=True (CLI: --overwrite) to continue with the new ones"
            )
        try:
            self._restore(tensors, meta)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{file} is not a complete training checkpoint: {type(exc).__name__}: {exc}") from exc

    def _restore(self, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        """Load the model, EMA, optimizer, step and RNG states of a training checkpoint."""
        pick = lambda prefix: {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        self.model.load_state_dict(pick("model."))
        self.ema.load_state_dict(pick("ema."))
        state: dict[int, dict[str, Tensor]] = {}
        for k, v in pick("optim.").items():
            i, key = k.split(".", 1)
            state.setdefault(int(i), {})[key] = v
        groups = [dict(g, params=list(range(len(list(self.model.parameters()))))) for g in meta["optim_groups"]]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        self.step = int(meta["step"])
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors[f"rng.gen.{self.rank}"])
        cuda_state = tensors.get(f"rng.cuda.{self.rank}")
        if cuda_state is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_state, self.device)

    # ---------------------------------------------------------------- the loop
    def _start(self, resume: bool, overwrite: bool) -> Path | None:
        """Resume if asked, write config.json and drop the metrics records past the resumed step
        (rank 0 with a run folder); return metrics.jsonl's path, or None when nothing is written."""
        if resume:
            self.resume(allow_changes=overwrite)
        if self.rank != 0 or self.out is None:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / "config.json", self.run)
        metrics_path = self.out / "metrics.jsonl"
        dropped = truncate_metrics(metrics_path, self.step) if resume else 0
        if dropped:
            warnings.warn(f"{metrics_path}: dropped {dropped} record(s) past step {self.step} (which the resumed "
                          "run writes again) or torn", stacklevel=3)  # fmt: skip
        return metrics_path

    def train(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        """Train to ``config.steps`` (from the checkpoint's step with ``resume``; ``overwrite``
        accepts changed options on resume, see :meth:`resume`); return the last checkpoint's info."""
        c = self.config
        metrics_path = self._start(resume, overwrite)
        net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        hidden = True if self.rank != 0 or self.quiet else None  # None: a bar only when stderr is a terminal
        bar = tqdm(total=c.steps, initial=self.step, desc="train", disable=hidden, dynamic_ncols=True)
        window, seen, t0 = [], 0, time.perf_counter()
        self.model.train()
        last_info: dict[str, Any] = {}
        while self.step < c.steps:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            loss = self._loss(net)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"step {self.step}: training loss is {loss.item()}; lower lr or check the data"
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.step += 1
            self._update_ema()
            window.append(loss.item())
            seen += c.batch_size * self.world
            bar.update(1)
            if self.step % c.log_every == 0 or self.step == c.steps:
                elapsed = time.perf_counter() - t0
                record = {
                    "step": self.step,
                    "loss": sum(window) / len(window),
                    "lr": self.lr_at(self.step - 1),
                    "images_per_s": seen / elapsed if elapsed > 0 else None,
                }
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if metrics_path is not None:
                    append_metrics(metrics_path, record)
                window, seen, t0 = [], 0, time.perf_counter()
            if self.out is not None and (self.step % c.checkpoint_every == 0 or self.step == c.steps):
                last_info = self.save()
                if len(set(last_info["rank_checksums"])) > 1:
                    raise RuntimeError(f"step {self.step}: DDP ranks diverged: {last_info['rank_checksums']}")
                if metrics_path is not None:
                    append_metrics(metrics_path, {"checkpoint": self.step, **last_info})
        bar.close()
        self.model.eval()
        if metrics_path is not None and self.out is not None:
            plot_loss_curve(metrics_path, self.out / "loss.png")
        return last_info

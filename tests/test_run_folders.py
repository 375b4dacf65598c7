"""Run folders (issue #18, findings 2 and 6): an existing run is not replaced by accident, a folder is
locked while a run writes, resumes keep the run's options and metrics.jsonl clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import diffcore
from diffcore.training.checkpoint import TEMP_SUFFIX, load_checkpoint
from diffcore.training.metrics_file import read_metrics
from diffcore.training.run_folder import LOCK_NAME, RunLockedError, acquire_lock, release_lock

TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}


def _train(out: Path, steps: int, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("checkpoint_every", 2)
    kw.setdefault("log_every", 1)
    kw.setdefault("warmup_steps", 1)
    return diffcore.train("digits", "unet", steps, out, dataset_options={"limit": 120}, model_config=TINY, **kw)


def _steps(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_finished_run_is_not_replaced_without_resume_or_overwrite(tmp_path):
    _train(tmp_path, 2)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(ValueError, match=rf"{tmp_path}.*already holds a run.*resume=True.*overwrite=True"):
        _train(tmp_path, 2, lr=1e-3)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    assert not (tmp_path / LOCK_NAME).exists()


def test_overwrite_starts_the_run_afresh(tmp_path):
    _train(tmp_path, 4)
    _train(tmp_path, 2, lr=1e-3, overwrite=True)
    assert _steps(tmp_path) == [1, 2]
    _, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 2 and meta["run"]["train"]["lr"] == 1e-3
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 1e-3


def test_a_folder_locked_by_a_live_process_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid}"):
            _train(tmp_path, 2)
        assert not (tmp_path / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename}))
    _train(tmp_path, 2)
    assert _steps(tmp_path) == [1, 2] and not (tmp_path / LOCK_NAME).exists()


def test_the_lock_is_exclusive_and_released_only_by_its_holder(tmp_path):
    lock = acquire_lock(tmp_path)
    with pytest.raises(RunLockedError, match=str(os.getpid())):
        acquire_lock(tmp_path)
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))  # someone else's now: not ours to remove
    release_lock(lock)
    assert lock.exists()


_RACER = """
import sys, time
from pathlib import Path
import diffcore
out, go, lr = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
tiny = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}
diffcore.train("digits", "unet", 12, out, dataset_options={"limit": 120}, model_config=tiny, batch_size=8,
               log_every=1, checkpoint_every=4, warmup_steps=1, lr=lr)
"""


def test_two_trainings_into_one_folder_do_not_interleave(tmp_path):
    """Both start at once: one trains, the other is refused naming the holder; metrics.jsonl holds
    steps 1..12 once each and config.json describes the run whose checkpoint is there."""
    out, go = tmp_path / "run", tmp_path / "go"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(out), str(go), lr], env=env, stderr=subprocess.PIPE, text=True
        )
        for lr in ("1e-3", "5e-4")
    ]
    time.sleep(0.5)
    go.touch()
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes[0] == 0 and codes[1] != 0, results
    loser = next(err for code, err in results if code != 0)
    assert "in use by process" in loser or "already holds a run" in loser, loser
    assert _steps(out) == list(range(1, 13))
    _, meta = load_checkpoint(out / "checkpoint.safetensors")
    assert json.loads((out / "config.json").read_text()) == meta["run"]


def test_resume_with_other_options_names_them(tmp_path):
    _train(tmp_path, 2)
    with pytest.raises(ValueError, match=r"lr 0\.0002 -> 0\.001") as info:
        _train(tmp_path, 4, resume=True, lr=1e-3, batch_size=4)
    assert "lr 0.0002 -> 0.001" in str(info.value) and "batch_size 8 -> 4" in str(info.value)
    assert "overwrite=True" in str(info.value) and _steps(tmp_path) == [1, 2]
    _train(tmp_path, 4, resume=True, lr=1e-3, batch_size=4, overwrite=True)  # accepted: continues with the new ones
    assert _steps(tmp_path) == [1, 2, 3, 4]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["lr"] == 1e-3
    _train(tmp_path, 6, resume=True, lr=1e-3, batch_size=4, checkpoint_every=3)  # steps and bookkeeping may change


def test_resume_drops_the_records_past_the_checkpoint_and_a_torn_line(tmp_path):
    """A run killed after logging steps 5-6 but before checkpointing them, mid-line: resuming from
    step 4 writes steps 5-6 once."""
    _train(tmp_path, 4)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.0, "lr": 1e-4, "images_per_s": 1.0}) + "\n")
        f.write(json.dumps({"step": 6, "loss": 1.0, "lr": 1e-4, "images_per_s": 1.0}) + "\n")
        f.write('{"step": 7, "lo')
    with pytest.warns(UserWarning, match="dropped 3 record"):
        _train(tmp_path, 6, resume=True)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["checkpoint"] for r in records if "checkpoint" in r] == [2, 4, 6]
    assert all(r["loss"] != 1.0 for r in records if "loss" in r and r["step"] > 4)


def test_a_torn_last_line_does_not_fail_a_finished_run(tmp_path):
    from diffcore.training.metrics_file import plot_loss_curve

    _train(tmp_path, 2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    with pytest.warns(UserWarning, match="unreadable line"):
        plot_loss_curve(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_stale_temporaries_are_removed_on_the_next_start(tmp_path):
    _train(tmp_path, 2)
    stale = tmp_path / f".checkpoint.safetensors.{_dead_pid()}.0a1b{TEMP_SUFFIX}"
    stale.write_bytes(b"half a checkpoint")
    _train(tmp_path, 4, resume=True)
    assert not stale.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


def test_an_unknown_sampler_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"sampler='nope'.*known: .*dpmpp_2m"):
        _train(tmp_path / "run", 2, sampler="nope")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="sample_steps=0"):
        _train(tmp_path / "run", 2, sample_steps=0)


def test_resuming_from_an_incomplete_training_checkpoint_is_a_clear_error(tmp_path):
    from diffcore.training.checkpoint import CheckpointError, save_checkpoint

    _train(tmp_path, 2)
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    del tensors["rng.torch"]
    save_checkpoint(tmp_path / "checkpoint.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=r"not a complete training checkpoint: KeyError: 'rng\.torch'"):
        _train(tmp_path, 4, resume=True)
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    save_checkpoint(
        tmp_path / "checkpoint.safetensors", tensors, {k: v for k, v in meta.items() if k != "optim_groups"}
    )
    with pytest.raises(CheckpointError, match="optim_groups"):
        _train(tmp_path, 4, resume=True)

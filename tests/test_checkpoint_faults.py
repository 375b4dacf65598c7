"""Malformed checkpoints: every one is refused with one clear line, before anything large is allocated."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_corpus import corpus, counts, good_checkpoint, run_corpus, with_meta, with_tensors

from diffcore.pipeline import Pipeline
from diffcore.training.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint


def test_the_corpus_is_large_and_starts_from_a_good_checkpoint(tmp_path):
    assert len(corpus()) >= 60
    path = tmp_path / "good.safetensors"
    path.write_bytes(good_checkpoint("mlp"))
    pipe = Pipeline.load(path)
    assert pipe.shape == (4,) and torch.isfinite(pipe.generate(2, steps=2)).all()
    path.write_bytes(good_checkpoint("unet"))
    assert Pipeline.load(path).shape == (1, 8, 8)


def test_every_malformed_checkpoint_gives_one_clear_line(tmp_path):
    results = run_corpus(tmp_path)
    bad = {name: r for name, r in results.items() if r[0] != "clear"}
    assert not bad, bad
    tally = counts(results)
    assert tally["raw"] == 0 and tally["silent"] == 0 and tally["clear"] == tally["tried"] >= 60


def test_half_precision_weights_still_load(tmp_path):
    """A float model's weights stored as float16 are a float kind: loaded (cast), not refused."""
    blob = with_tensors(good_checkpoint("mlp"), lambda t: t.update({k: v.half() for k, v in t.items()}))
    (tmp_path / "c.safetensors").write_bytes(blob)
    assert torch.isfinite(Pipeline.load(tmp_path / "c.safetensors").generate(1, steps=1)).all()


def test_absurd_model_config_is_refused_before_the_model_is_built(tmp_path, monkeypatch):
    """base_channels 8192 in a small UNet's file: the UNet is only ever built on the meta device."""
    from diffcore.models import unet

    devices = []
    real_init = unet.UNet.__init__

    def spy(self, *args, **kwargs):
        devices.append(torch.get_default_device().type)
        real_init(self, *args, **kwargs)

    blob = with_meta(good_checkpoint("unet"), lambda m: m["run"]["model"]["config"].update(base_channels=8192))
    (tmp_path / "c.safetensors").write_bytes(blob)
    monkeypatch.setattr(unet.UNet, "__init__", spy)
    with pytest.raises(CheckpointError, match=r"run\.model\.config.*\[32768, 8192\]"):
        Pipeline.load(tmp_path / "c.safetensors")
    assert devices == ["meta"]


def test_absurd_sample_shape_is_refused_before_sampling(tmp_path):
    blob = with_meta(good_checkpoint("unet"), lambda m: m["run"]["dataset"].update(shape=[1, 10**5, 10**5]))
    (tmp_path / "c.safetensors").write_bytes(blob)
    with pytest.raises(CheckpointError, match=r"run\.dataset\.shape"):
        read_meta(tmp_path / "c.safetensors")  # the header alone tells


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t["model.inp.weight"].view(-1).__setitem__(3, float("nan")), r"'model\.inp\.weight'.*non-finite"),
        (lambda t: t["model.out.bias"].view(-1).__setitem__(0, 1e30), r"'model\.out\.bias'.*magnitude 1e\+30"),
        (lambda t: t.update({"model.inp.weight": t["model.inp.weight"].long()}), r"'model\.inp\.weight' is I64"),
        (lambda t: t.update({"model.inp.bias": t["model.inp.bias"] > 0}), r"'model\.inp\.bias' is BOOL"),
    ],
)
def test_bad_weights_are_refused_at_load_naming_the_tensor(tmp_path, edit, match):
    (tmp_path / "c.safetensors").write_bytes(with_tensors(good_checkpoint("mlp"), edit))
    with pytest.raises(CheckpointError, match=match):
        Pipeline.load(tmp_path / "c.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_get_the_mode_of_a_normal_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"run": {}})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


_WRITER = """
import sys, torch
from pathlib import Path
from diffcore.training.checkpoint import save_checkpoint
path, i = Path(sys.argv[1]), 0
while True:
    i += 1
    v = float(i % 2 + 1)
    run = {"model": {"name": "mlp", "config": {"dim": 4, "hidden": 64, "depth": 2}}, "version": v}
    torch.manual_seed(0)
    net = __import__("diffcore").get("models", "mlp")(dim=4, hidden=64, depth=2)
    tensors = {f"model.{k}": torch.full_like(t, v) for k, t in net.state_dict().items()}
    save_checkpoint(path, tensors, {"format": 1, "kind": "pipeline", "run": run})
"""


def test_loading_while_another_process_rewrites_the_checkpoint_is_consistent(tmp_path):
    """A writer process replaces the file (temporary + os.replace) in a loop; every load sees one
    whole version (its metadata and its weights agree) or raises CheckpointError, never a raw
    error. (Reading the metadata and the tensors through two opens mixed versions in ~10% of loads.)"""
    path = tmp_path / "checkpoint.safetensors"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=dict(os.environ, OMP_NUM_THREADS="1"))
    seen: dict[float, int] = {}
    errors, deadline = 0, time.monotonic() + 120
    try:
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(400):
            try:
                tensors, meta = load_checkpoint(path)
            except CheckpointError:
                errors += 1
                continue
            value = meta["run"]["version"]
            assert all(bool((t == value).all()) for t in tensors.values()), f"metadata of {value}, other weights"
            seen[value] = seen.get(value, 0) + 1
    finally:
        writer.kill()
        writer.wait()
    assert errors == 0 and set(seen) == {1.0, 2.0}, (errors, seen)


def test_temporary_files_are_recognizable_and_stale_ones_removed(tmp_path):
    from diffcore.training.checkpoint import TEMP_SUFFIX, remove_stale_temporaries

    dead = tmp_path / f".checkpoint.safetensors.999999999.ab12{TEMP_SUFFIX}"
    live = tmp_path / f".checkpoint.safetensors.{os.getpid()}.cd34{TEMP_SUFFIX}"
    other = tmp_path / "notes.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


def test_a_checkpoint_that_is_a_directory_or_unreadable_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path)
    path = Path(save_checkpoint(tmp_path / "c.safetensors", {"w": torch.ones(2)}, {"run": {}}))
    if os.geteuid() != 0:  # root reads anything
        path.chmod(0)
        with pytest.raises(CheckpointError, match="cannot be read"):
            load_checkpoint(path)

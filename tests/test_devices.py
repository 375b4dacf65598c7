"""diffcore.devices.resolve_device (issue #18, finding 8): auto picks CUDA, then MPS, then CPU; a device
this machine lacks is refused naming it; training resolves its device the same way."""

from __future__ import annotations

import inspect

import pytest
import torch

import diffcore
from diffcore import devices
from diffcore.devices import resolve_device

TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has two CUDA devices, the current one being cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, no_gpu):
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_cuda_names_resolve_to_an_index(fake_gpus):
    assert resolve_device("cuda") == torch.device("cuda", 1)  # the current device (torchrun's LOCAL_RANK)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2'.*2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("meta", r"device 'meta' is not supported; expected one of auto, cpu, cuda, cuda:N, mps"),
        ("gpu", "device 'gpu' is not supported"),
        ("cuda:x", "device 'cuda:x' is not supported"),
        ("cuda", r"device 'cuda': CUDA is not available .*available: auto, cpu"),
        ("cuda:0", "device 'cuda:0': CUDA is not available"),
        ("mps", "device 'mps': Apple MPS is not available"),
        (3, "expected a device name"),
    ],
)
def test_bad_or_missing_devices_are_named(no_gpu, name, match):
    with pytest.raises(ValueError, match=match):
        resolve_device(name)


def test_cpu_is_always_there():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    assert devices.available_devices()[-1] == "cpu"


def test_training_defaults_to_auto_and_resolves_through_resolve_device(tmp_path, monkeypatch):
    """Single-process training used CUDA only under torchrun (world size > 1); now 'auto' is the
    default of diffcore.train and the Trainer, and it goes through resolve_device."""
    from diffcore.training import trainer

    assert inspect.signature(diffcore.train).parameters["device"].default == "auto"
    assert inspect.signature(trainer.Trainer).parameters["device"].default == "auto"
    asked = []

    def spy(name):
        asked.append(name)
        return torch.device("cpu")

    monkeypatch.setattr(trainer, "resolve_device", spy)
    diffcore.train("digits", "unet", 1, tmp_path, dataset_options={"limit": 60}, model_config=TINY, batch_size=4)
    assert asked == ["auto"]


def test_training_on_a_missing_device_is_refused_before_anything_is_built(tmp_path, no_gpu):
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available"):
        diffcore.train("digits", "unet", 1, tmp_path / "run", device="cuda")
    with pytest.raises(ValueError, match="device 'meta' is not supported"):
        diffcore.train("digits", "unet", 1, tmp_path / "run", device="meta")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_single_process_training_runs_on_cuda(tmp_path):
    from diffcore.training.checkpoint import load_checkpoint

    diffcore.train("digits", "unet", 2, tmp_path, dataset_options={"limit": 60}, model_config=TINY, batch_size=4)
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 2 and "rng.cuda.0" in tensors  # trained on the GPU, its dropout RNG saved

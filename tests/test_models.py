"""The built-in models: shapes, zero init, gradients, conditioning, config round trip, validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import diffcore
from diffcore.models import PRESETS

SMALL = {"base_channels": 16, "groups": 8, "num_res_blocks": 1}
IMAGE_CONFIGS = {
    "digits8": {"in_channels": 1, "image_size": 8, "channel_mult": [1, 2], "attention_resolutions": [4]},
    "mnist28": {"in_channels": 1, "image_size": 28, "channel_mult": [1, 2, 2], "attention_resolutions": [7]},
    "cifar32": {"in_channels": 3, "image_size": 32, "channel_mult": [1, 2, 2], "attention_resolutions": [16]},
    "rgb64": {"in_channels": 3, "image_size": 64, "channel_mult": [1, 1, 2, 2], "attention_resolutions": [8]},
}
FULL_COND = {"num_classes": 10, "context_dim": 12, "concat_channels": 2}


def unet(**config: Any) -> nn.Module:
    return diffcore.get("models", "unet")(**{**SMALL, **config})


def mlp(**config: Any) -> nn.Module:
    return diffcore.get("models", "mlp")(**{"dim": 5, "hidden": 32, "depth": 2, **config})


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (the zero-initialized ones too) random values, so every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def image_inputs(model: nn.Module, batch: int = 2, seed: int = 0) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    c = model.config
    gen = torch.Generator().manual_seed(seed)
    size = c["image_size"]
    x = torch.randn(batch, c["in_channels"], size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    cond: dict[str, Tensor] = {}
    if c["num_classes"]:
        cond["class_labels"] = torch.randint(0, c["num_classes"], (batch,), generator=gen)
    if c["context_dim"]:
        cond["context"] = torch.randn(batch, 6, c["context_dim"], generator=gen)
        cond["context_mask"] = torch.tensor([[True] * 6, [True] * 3 + [False] * 3] * (batch // 2))
    if c["concat_channels"]:
        cond["concat"] = torch.randn(batch, c["concat_channels"], size, size, generator=gen)
    return x, t, cond


def train_steps(model: nn.Module, x: Tensor, t: Tensor, cond: dict[str, Tensor] | None, steps: int) -> None:
    """Take ``steps`` Adam steps on a toy regression loss; leave the last step's gradients in .grad."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x, t, cond) - target).pow(2).mean()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    (model(x, t, cond) - target).pow(2).mean().backward()


# --------------------------------------------------------------------------- registry and shapes


def test_models_are_registered_by_the_builtin_plugin() -> None:
    assert {"unet", "mlp"} <= set(diffcore.available("models"))
    assert diffcore.plugins.registered_by("models", "unet") == "models"


@pytest.mark.parametrize("name", sorted(IMAGE_CONFIGS))
@pytest.mark.parametrize("conditioned", [False, True], ids=["uncond", "cond"])
def test_unet_output_has_input_shape_and_is_zero_at_init(name: str, conditioned: bool) -> None:
    config = {**IMAGE_CONFIGS[name], **(FULL_COND if conditioned else {}), "out_channels": None}
    model = unet(**config).eval()
    x, t, cond = image_inputs(model)
    out = model(x, t, cond or None)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))
    assert randomize_(model)(x, t, cond or None).abs().sum() > 0


def test_unet_out_channels_and_fractional_time() -> None:
    model = randomize_(unet(**IMAGE_CONFIGS["digits8"], out_channels=2))
    x, _, _ = image_inputs(model)
    assert model(x, torch.tensor([0.5, 999.7])).shape == (2, 2, 8, 8)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_mlp_shape_and_zero_init(num_classes: int) -> None:
    model = mlp(num_classes=num_classes).eval()
    x = torch.randn(3, 5)
    cond = {"class_labels": torch.tensor([0, 3, 4])} if num_classes else None
    out = model(x, torch.tensor([1, 500, 999]), cond)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))
    assert randomize_(model)(x, torch.tensor([1, 500, 999]), cond).abs().sum() > 0


# --------------------------------------------------------------------------- training reaches everything


@pytest.mark.parametrize(
    "build",
    [
        lambda: unet(**IMAGE_CONFIGS["digits8"], **FULL_COND, dropout=0.1),
        lambda: mlp(num_classes=3, dropout=0.1),
    ],
    ids=["unet", "mlp"],
)
@pytest.mark.parametrize("use_cond", [True, False], ids=["cond", "uncond"])
def test_training_moves_output_and_every_parameter_gets_a_gradient(build: Any, use_cond: bool) -> None:
    torch.manual_seed(0)
    model = build()
    if model.name == "unet":
        x, t, cond = image_inputs(model, batch=4)
    else:
        x, t, cond = torch.randn(4, 5), torch.tensor([3, 30, 300, 900]), {"class_labels": torch.tensor([0, 1, 2, 3])}
    cond = cond if use_cond else None
    train_steps(model, x, t, cond, steps=1)
    model.eval()
    assert model(x, t, cond).abs().max() > 0
    # zero-initialized output layers stop gradients for a step each (conv_out, then the
    # residual branches' last layers); after that every parameter must get a non-zero one
    train_steps(model, x, t, cond, steps=3)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# --------------------------------------------------------------------------- conditioning


def test_class_label_changes_output_and_missing_label_means_null_label() -> None:
    model = randomize_(unet(**IMAGE_CONFIGS["digits8"], num_classes=3))
    x, t, _ = image_inputs(model)
    out = {y: model(x, t, {"class_labels": torch.full((2,), y)}) for y in range(4)}
    assert not torch.allclose(out[0], out[1], atol=1e-4)
    assert torch.allclose(model(x, t), out[3], atol=1e-6)
    assert torch.allclose(model(x, t, {"class_labels": None}), out[3], atol=1e-6)
    assert not torch.allclose(out[0], out[3], atol=1e-4)


def test_mlp_class_label_changes_output() -> None:
    model = randomize_(mlp(num_classes=2))
    x, t = torch.randn(2, 5), torch.tensor([10, 10])
    a = model(x, t, {"class_labels": torch.tensor([0, 0])})
    b = model(x, t, {"class_labels": torch.tensor([1, 1])})
    assert not torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(model(x, t), model(x, t, {"class_labels": torch.tensor([2, 2])}), atol=1e-6)


def test_context_changes_output_and_masked_tokens_are_ignored() -> None:
    model = randomize_(unet(**IMAGE_CONFIGS["digits8"], context_dim=12))
    x, t, cond = image_inputs(model)
    mask = cond["context_mask"]
    base = model(x, t, cond)
    other_real = dict(cond, context=cond["context"].clone())
    other_real["context"][:, 0] += 1.0  # token 0 is real in both samples
    assert not torch.allclose(model(x, t, other_real), base, atol=1e-4)
    other_masked = dict(cond, context=torch.where(mask[..., None], cond["context"], torch.randn(2, 6, 12) * 5))
    assert not torch.equal(other_masked["context"], cond["context"])
    assert torch.allclose(model(x, t, other_masked), base, atol=1e-5)
    # all tokens masked == no context at all: only the learned null token is attended to
    none_real = dict(cond, context_mask=torch.zeros_like(mask))
    assert torch.allclose(model(x, t, none_real), model(x, t), atol=1e-5)
    assert not torch.allclose(model(x, t), base, atol=1e-4)


def test_concat_channels_change_output_and_default_to_zeros() -> None:
    model = randomize_(unet(**IMAGE_CONFIGS["digits8"], concat_channels=2))
    x, t, cond = image_inputs(model)
    assert not torch.allclose(model(x, t, cond), model(x, t), atol=1e-4)
    assert torch.allclose(model(x, t), model(x, t, {"concat": torch.zeros(2, 2, 8, 8)}), atol=1e-6)


def test_float_and_int_time_agree_and_time_matters() -> None:
    for model in (randomize_(unet(**IMAGE_CONFIGS["digits8"])), randomize_(mlp())):
        x = torch.randn(2, *((1, 8, 8) if model.name == "unet" else (5,)))
        t = torch.tensor([7, 420])
        assert torch.allclose(model(x, t), model(x, t.float()), atol=1e-6)
        assert not torch.allclose(model(x, t), model(x, t + 1), atol=1e-5)


def test_sigma_time_input_embeds_log_sigma() -> None:
    model = randomize_(unet(**IMAGE_CONFIGS["digits8"], time_input="sigma"))
    x = torch.randn(2, 1, 8, 8)
    sigma = torch.tensor([0.002, 80.0], dtype=torch.float64)
    out = model(x, sigma)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, sigma * 1.5), atol=1e-5)


@pytest.mark.parametrize(
    "cond, match",
    [
        ({"class_labels": torch.tensor([0, 1])}, "num_classes=0"),
        ({"context": torch.randn(2, 3, 4)}, "context_dim=0"),
        ({"concat": torch.randn(2, 1, 8, 8)}, "concat_channels=0"),
        ({"text": torch.randn(2, 3)}, "unknown keys"),
    ],
)
def test_cond_the_model_cannot_use_is_rejected(cond: dict[str, Tensor], match: str) -> None:
    model = unet(**IMAGE_CONFIGS["digits8"])
    with pytest.raises(ValueError, match=match):
        model(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), cond)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "name, config",
    [("unet", {**SMALL, **IMAGE_CONFIGS["mnist28"], **FULL_COND, "time_input": "sigma"}), ("unet", PRESETS["digits"])]
    + [("mlp", {"dim": 7, "num_classes": 2, "depth": 1})],
)
def test_config_round_trips_through_json_and_rebuilds_the_same_model(name: str, config: dict[str, Any]) -> None:
    factory = diffcore.get("models", name)
    model = factory(**config)
    assert model.name == name
    restored = json.loads(json.dumps(model.config))
    assert restored == model.config
    rebuilt = factory(**restored)
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(randomize_(model).state_dict(), strict=True)
    x = torch.randn(2, 7) if name == "mlp" else image_inputs(model)[0]
    t = torch.tensor([3, 600])
    assert torch.equal(rebuilt.eval()(x, t), model(x, t))


def test_defaults_are_filled_into_config() -> None:
    config = diffcore.get("models", "unet")(in_channels=3, image_size=32).config
    assert config["out_channels"] == 3 and config["channel_mult"] == [1, 2] and config["groups"] == 32
    assert config["attention_resolutions"] == [] and config["time_input"] == "timestep"


@pytest.mark.parametrize(
    "config, named",
    [
        ({"image_size": 30, "channel_mult": [1, 2, 2]}, "image_size=30"),
        ({"image_size": 28, "channel_mult": [1, 2, 2, 2]}, "image_size=28"),
        ({"attention_resolutions": [5]}, "contains 5"),
        ({"groups": 32}, "groups=32"),
        ({"base_channels": 24, "groups": 16}, "groups=16"),
        ({"num_heads": 3}, "num_heads=3"),
        ({"time_input": "continuous"}, "time_input='continuous'"),
        ({"channel_mult": []}, "channel_mult=[]"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"num_classes": -1}, "num_classes=-1"),
        ({"in_channels": 0}, "in_channels=0"),
    ],
)
def test_bad_unet_config_raises_naming_the_value(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as info:
        unet(**{"in_channels": 1, "image_size": 8, **config})
    assert named in str(info.value)


@pytest.mark.parametrize(
    "config, named",
    [({"dim": 0}, "dim=0"), ({"depth": 0}, "depth=0"), ({"time_input": "t"}, "time_input='t'")],
)
def test_bad_mlp_config_raises_naming_the_value(config: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError) as info:
        mlp(**config)
    assert named in str(info.value)


def test_bad_inputs_raise_naming_the_shape() -> None:
    model = unet(**IMAGE_CONFIGS["mnist28"])
    with pytest.raises(ValueError, match=r"\(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(2, 1, 30, 30), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"t has shape \(3,\)"):
        model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2, 3]))


def test_unet_parameter_layout_and_output_are_pinned() -> None:
    """Checkpoints keep loading: the state_dict names, shapes and order, and the output of fixed
    weights, are those of the UNet before its constructor was split into builders."""
    import hashlib

    model = randomize_(unet(**{**IMAGE_CONFIGS["digits8"], **FULL_COND, "attention_resolutions": [8, 4]}))
    layout = "\n".join(f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items())
    assert len(model.state_dict()) == 204
    digest = "16521a080d4fa2146a1eb7a24ef449abf1587cd1b8cde23e61c32eac92ccd7c3"
    assert hashlib.sha256(layout.encode()).hexdigest() == digest
    x, t, cond = image_inputs(model)
    with torch.no_grad():
        y = model(x, t, cond).double()
    want = torch.tensor([0.0126460642, -0.4125607014, -0.4548767805, -0.6901251078], dtype=torch.float64)
    torch.testing.assert_close(y.flatten()[:4], want, rtol=1e-4, atol=1e-5)
    assert abs(y.sum().item() - -54.218917563557625) < 1e-3

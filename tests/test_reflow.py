"""Reflow (2-rectified flow): pairs drawn from a flow teacher's ODE, kept as a seeded dataset,
and a model trained on them from the teacher's weights."""

from __future__ import annotations

import pytest
import torch

import diffcore
from diffcore.training.reflow import PAIRS_FILE, ReflowPairs, draw_pairs

DATA = {"limit": 200}
TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}


def _reflow(teacher: str, out, steps: int, **kw):
    return diffcore.train(
        steps=steps,
        out=out,
        reflow_from=teacher,
        pairs=16,
        pair_sampler="euler",
        pair_steps=3,
        batch_size=8,
        checkpoint_every=steps,
        log_every=1,
        **kw,
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("flow")
    diffcore.train(
        "digits",
        "unet",
        4,
        out,
        dataset_options=DATA,
        model_config=TINY,
        schedule="flow",
        prediction="flow",
        batch_size=16,
        checkpoint_every=4,
        log_every=2,
    )
    return str(out)


def test_pairs_are_the_teachers_ode_solutions(teacher) -> None:
    pairs = draw_pairs(teacher, 12, seed=3, sampler="euler", steps=4, batch_size=5)
    assert pairs.noise.shape == pairs.samples.shape == (12, 1, 8, 8)
    assert pairs.labels.tolist() == [i % 10 for i in range(12)]  # labels cycle through the classes
    torch.testing.assert_close(pairs.noise, torch.randn((12, 1, 8, 8), generator=torch.Generator().manual_seed(3)))
    pipe = diffcore.Pipeline.load(teacher)
    again = diffcore.sample(
        lambda x, t, c=None: pipe.model(x, t, c),
        pairs.noise[:5].clone(),
        sampler="euler",
        steps=4,
        schedule=pipe.schedule,
        prediction=pipe.param,
        cond={"class_labels": pairs.labels[:5]},
        seed=3,
    )
    torch.testing.assert_close(again, pairs.samples[:5])  # batching does not change a pair
    assert pairs.meta == {"teacher": teacher, "seed": 3, "n": 12, "sampler": "euler", "steps": 4, "shape": [1, 8, 8]}


def test_reflow_trains_on_the_pairs_and_keeps_them(teacher, tmp_path, monkeypatch) -> None:
    seen = []
    from diffcore.training import trainer as trainer_mod

    real = trainer_mod.Trainer._batch

    def spy(self):
        seen.append(self.train_noise)
        return real(self)

    monkeypatch.setattr(trainer_mod.Trainer, "_batch", spy)
    pipe = _reflow(teacher, tmp_path, steps=3)
    pairs = ReflowPairs.load(tmp_path / PAIRS_FILE)
    assert seen and seen[0] is not None and torch.equal(seen[0], pairs.noise)
    assert pipe.run["reflow"]["n"] == 16 and pipe.run["model"] == diffcore.Pipeline.load(teacher).run["model"]
    reloaded = diffcore.Pipeline.load(tmp_path)
    assert reloaded.run["reflow"] == pairs.meta
    mtime = (tmp_path / PAIRS_FILE).stat().st_mtime_ns
    _reflow(teacher, tmp_path, steps=4, resume=True)
    assert (tmp_path / PAIRS_FILE).stat().st_mtime_ns == mtime  # same settings: the pairs are reused


def test_reflow_needs_a_flow_teacher(tmp_path) -> None:
    diffusion = tmp_path / "ddpm"
    diffcore.train(
        "digits", "unet", 2, diffusion, dataset_options=DATA, model_config=TINY, batch_size=8, checkpoint_every=2
    )
    with pytest.raises(ValueError, match="flow model"):
        draw_pairs(diffusion, 4)
    with pytest.raises(ValueError, match="pairs=0"):
        draw_pairs(diffusion, 0)

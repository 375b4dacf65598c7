"""Per-sample noise keyed by (seed, sample index) (issue #17): a sample's result does not depend on
the batch size or on how the index range is split -- bitwise on CPU -- for generate, SDEdit,
denoise and anomaly scores."""

from __future__ import annotations

import pytest
import torch

from diffcore import Pipeline
from diffcore.parameterization import make_parameterization
from diffcore.plugins import get
from diffcore.schedules import make_schedule
from diffcore.tasks.anomaly import dte_scores, reconstruction_scores
from diffcore.tasks.denoise import denoise
from diffcore.tasks.img2img import sdedit

N = 7
SIZES = (1, 2, 3, 5, N)
TINY = {"base_channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 4}


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    torch.manual_seed(0)
    model = get("models", "unet")(in_channels=1, image_size=8, num_classes=10, **TINY)
    run = {"dataset": {"shape": [1, 8, 8], "num_classes": 10}}
    return Pipeline(model, make_schedule("linear"), make_parameterization("epsilon"), run=run, steps=3)


@pytest.fixture(scope="module")
def table_pipe() -> Pipeline:
    torch.manual_seed(1)
    model = get("models", "mlp")(dim=5)
    return Pipeline(model, make_schedule("linear"), make_parameterization("epsilon"), run={"dataset": {"shape": [5]}})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(N, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1


@pytest.mark.parametrize(("sampler", "sizes"), [("euler_ancestral", SIZES), ("ddpm", (1, N))])
def test_generate_is_the_same_for_every_batch_size(pipe, sampler, sizes):
    labels = torch.arange(N) % 10
    whole = pipe.generate(N, sampler=sampler, seed=11, class_labels=labels, batch_size=N)
    for b in sizes:
        assert torch.equal(pipe.generate(N, sampler=sampler, seed=11, class_labels=labels, batch_size=b), whole), b
    assert not torch.equal(pipe.generate(N, sampler=sampler, seed=12, class_labels=labels), whole)  # seed matters


def test_start_returns_that_part_of_the_sequence(pipe):
    whole = pipe.generate(N, sampler="euler_ancestral", seed=4, batch_size=4)
    parts = [
        pipe.generate(stop - a, sampler="euler_ancestral", seed=4, start=a) for a, stop in ((0, 2), (2, 3), (3, N))
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_generator_keeps_torch_rng_draws_and_refuses_start(pipe):
    a = pipe.generate(3, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    b = pipe.generate(3, sampler="ddpm", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, pipe.generate(3, sampler="ddpm", seed=0))
    with pytest.raises(ValueError, match="start"):
        pipe.generate(3, generator=torch.Generator(), start=2)


def test_sdedit_rows_are_keyed_by_their_index(pipe, images):
    whole = sdedit(pipe, images, 0.6, sampler="euler_ancestral", steps=3, seed=3)
    parts = [
        sdedit(pipe, images[a:b], 0.6, sampler="euler_ancestral", steps=3, seed=3, sample_index=a)
        for a, b in ((0, 3), (3, 4), (4, N))
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_denoise_samples_do_not_depend_on_the_batch(pipe, images):
    def run(x: torch.Tensor, bs: int, first: int = 0) -> torch.Tensor:
        return denoise(pipe, x, 0.3, mode="sample", steps=2, seed=5, batch_size=bs, sample_index=first)

    whole = run(images, N)
    for b in SIZES[:-1]:
        assert torch.equal(run(images, b), whole), b
    assert torch.equal(torch.cat([run(images[:2], 2), run(images[2:], 3, 2)]), whole)
    assert not torch.equal(denoise(pipe, images, 0.3, mode="sample", steps=2, seed=6), whole)


def test_recon_and_dte_scores_do_not_depend_on_the_batch(table_pipe):
    x = torch.randn(N, 5, generator=torch.Generator().manual_seed(3))
    recon = {"depth": [0.2, 0.5], "repeats": 2, "sampler": "ddpm", "steps": 2, "seed": 6}
    whole = reconstruction_scores(table_pipe, x, batch_size=N, **recon).scores
    dte = dte_scores(table_pipe, x, levels=4, seed=2, batch_size=N).scores
    for b in SIZES[:-1]:
        assert torch.equal(reconstruction_scores(table_pipe, x, batch_size=b, **recon).scores, whole), b
        assert torch.equal(dte_scores(table_pipe, x, levels=4, seed=2, batch_size=b).scores, dte), b
    split = [reconstruction_scores(table_pipe, x[a:b], sample_index=a, **recon).scores for a, b in ((0, 4), (4, N))]
    assert torch.equal(torch.cat(split), whole)
    parts = [
        dte_scores(table_pipe, x[:3], levels=4, seed=2),
        dte_scores(table_pipe, x[3:], levels=4, seed=2, sample_index=3),
    ]
    assert torch.equal(torch.cat([p.scores for p in parts]), dte)


def test_simplex_recon_rows_are_keyed_by_their_index(pipe, images):
    opts = {"depth": 0.3, "repeats": 1, "noise": "simplex", "seed": 1}
    whole = reconstruction_scores(pipe, images, **opts).scores
    split = torch.cat(
        [
            reconstruction_scores(pipe, images[:3], **opts).scores,
            reconstruction_scores(pipe, images[3:], sample_index=3, **opts).scores,
        ]
    )
    assert torch.equal(split, whole)

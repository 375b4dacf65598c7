"""Image-to-image translation: SDEdit, RePaint, paired models, the translate task and command.

Tiny models trained for a few steps: these tests check the mechanics (shapes, ranges, known
pixels, per-sample strengths, errors), not quality; benchmarks/quality/img2img.py measures that.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image

import diffcore
from diffcore import ops
from diffcore.cli import main
from diffcore.ops.philox import INIT_NOISE_OFFSET
from diffcore.tasks import img2img, inputs

TINY = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}
DATA = {"limit": 240}
TRAIN = {"batch_size": 16, "warmup_steps": 2, "log_every": 5, "checkpoint_every": 100}


@pytest.fixture(scope="module")
def digits():
    return diffcore.get("datasets", "digits")(**DATA).test[:16]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An unconditional-capable (label-dropout) digits model and its run folder."""
    out = tmp_path_factory.mktemp("img2img") / "run"
    diffcore.train("digits", "unet", 25, out, dataset_options=DATA, model_config=TINY, **TRAIN)
    return out


@pytest.fixture(scope="module")
def pipe(run):
    return diffcore.Pipeline.load(run)


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """Paired models: 2x super-resolution and inpainting (run folders)."""
    root = tmp_path_factory.mktemp("paired")

    def train(name: str, condition: str, **options: object) -> None:
        diffcore.train(
            "digits",
            "unet",
            6,
            root / name,
            dataset_options=DATA,
            model_config=TINY,
            task_condition=condition,
            **options,
            **TRAIN,
        )

    train("sr", "super_resolution", task_condition_options={"factor": 2})
    train("inpaint", "inpainting")
    train("inpaint-dropout", "inpainting", task_condition_options={"dropout": 0.3})
    return root


# --------------------------------------------------------------------------- SDEdit


def test_sdedit_mixes_strengths_in_one_batch(pipe, digits):
    x = digits[:6]
    strengths = [0.2, 0.7, 0.2, 1.0, 0.45, 0.7]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    together = img2img.sdedit(pipe, x, strengths, sampler="ddim", steps=5, noise=noise)
    for s in sorted(set(strengths)):
        idx = [i for i, v in enumerate(strengths) if v == s]
        alone = img2img.sdedit(pipe, x[idx], s, sampler="ddim", steps=5, noise=noise[idx])
        assert torch.allclose(together[idx], alone, atol=1e-5), s
    assert not torch.allclose(together[0], together[1], atol=1e-2)


def test_sdedit_small_strength_keeps_the_input_and_larger_moves_further(pipe, digits):
    levels = [1e-3, 0.3, 0.6, 1.0]
    x = digits.repeat(len(levels), 1, 1, 1)
    strength = torch.tensor(levels).repeat_interleave(len(digits))
    out = img2img.sdedit(pipe, x, strength, steps=6, seed=1)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    dist = ((out - x) ** 2).flatten(1).mean(1).reshape(len(levels), -1).mean(1)
    # strength 1e-3 noises to std ~0.013 (t = 0.999) and denoises: the input up to that noise
    assert float((out[: len(digits)] - digits).abs().max()) < 0.1 and float(dist[0]) < 1e-3
    assert all(a < b for a, b in itertools.pairwise(dist)), dist.tolist()


def test_sdedit_is_seeded(pipe, digits):
    a = img2img.sdedit(pipe, digits[:4], 0.5, steps=4, seed=7, sampler="ddpm")
    b = img2img.sdedit(pipe, digits[:4], 0.5, steps=4, seed=7, sampler="ddpm")
    c = img2img.sdedit(pipe, digits[:4], 0.5, steps=4, seed=8, sampler="ddpm")
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_start_time_is_strength_times_last_timestep(pipe):
    t = inputs.start_time(pipe.schedule, torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(t, torch.tensor([0.999, 499.5, 999.0], dtype=torch.float64))


# --------------------------------------------------------------------------- RePaint


@pytest.mark.parametrize("steps,jump,resample", [(10, 2, 3), (12, 5, 2), (7, 3, 1), (6, 6, 4)])
def test_repaint_schedule_visits_each_stretch_resample_times(steps, jump, resample):
    walk = img2img.repaint_schedule(steps, jump, resample)
    downs = [i for d, i in walk if d == "down"]
    jumps = len(range(0, steps - jump, jump))
    assert len(downs) == steps + jumps * jump * (resample - 1)
    level = 0
    for d, i in walk:  # a connected walk from level 0 to the clean end
        assert i == (level if d == "down" else level - 1)
        level += 1 if d == "down" else -1
    assert level == steps and walk[-1] == ("down", steps - 1)


def test_repaint_keeps_known_pixels_exactly(pipe, digits):
    x = digits[:8]
    out = img2img.repaint(pipe, x, "bottom-half", steps=8, jump_length=2, resample=2, seed=0)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[..., :4, :], x[..., :4, :])
    assert not torch.allclose(out[..., 4:, :], x[..., 4:, :], atol=1e-2)
    mask = (torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    mask[:, 0, 0, 0] = 1
    out2 = img2img.repaint(pipe, x, mask, steps=6, jump_length=3, resample=2, seed=0, sampler="ddim")
    assert torch.equal(out2[mask.expand_as(x) == 0], x[mask.expand_as(x) == 0])
    again = img2img.repaint(pipe, x, mask, steps=6, jump_length=3, resample=2, seed=0, sampler="ddim")
    assert torch.equal(out2, again)


def test_repaint_refuses_multistep_samplers(pipe, digits):
    with pytest.raises(ValueError, match="one step at a time"):
        img2img.repaint(pipe, digits[:2], "center", steps=4, jump_length=2, sampler="dpmpp_2m")
    with pytest.raises(ValueError, match="jump_length=9 must be <= steps=4"):
        img2img.repaint(pipe, digits[:2], "center", steps=4, jump_length=9)


ROTATED = {"schedule": "squaredcos_cap_v2", "prediction": "v_prediction"}  # what _rotated_mixture's model is


def _rotated_mixture(means: torch.Tensor, stds: torch.Tensor):
    """Two-component Gaussian mixture on 1x2x2 images, correlated within each component by a
    45-degree rotation of the pixel pairs (0, 2) and (1, 3), so the known top row carries
    information about the missing bottom row. Returns (model for v-prediction on
    squaredcos_cap_v2, component means (K, 4), component covariances (K, 4, 4))."""
    from diffcore.analytic import GaussianMixture, exact_model

    r = 2**-0.5
    rot = torch.tensor([[r, 0, r, 0], [0, r, 0, r], [r, 0, -r, 0], [0, r, 0, -r]], dtype=torch.float64)  # symmetric
    mixture = GaussianMixture(means @ rot, stds, torch.full((len(means),), 1 / len(means), dtype=torch.float64))
    base = exact_model(mixture, diffcore.get("schedules", "squaredcos_cap_v2")(), "v_prediction")

    def model(x, t, cond=None):  # eps and x0 (hence v) rotate with the data: v_x = R v_y(R x)
        return (base(x.reshape(len(x), 4).double() @ rot, t) @ rot).reshape(x.shape).to(x.dtype)

    covs = torch.stack([rot @ torch.diag(s**2) @ rot for s in stds])
    return model, means, covs


def _conditional(known, means, covs):
    """Component weights, means and covariances of pixels 2-3 given pixels 0-1 = known."""
    logw, cmeans, ccovs = [], [], []
    for mu, cov in zip(means, covs):
        s11, s12, s22 = cov[:2, :2], cov[:2, 2:], cov[2:, 2:]
        d = known - mu[:2]
        logw.append(-0.5 * (d @ torch.linalg.solve(s11, d)) - 0.5 * torch.logdet(s11))
        cmeans.append(mu[2:] + s12.T @ torch.linalg.solve(s11, d))
        ccovs.append(s22 - s12.T @ torch.linalg.solve(s11, s12))
    return torch.softmax(torch.stack(logw), 0), torch.stack(cmeans), torch.stack(ccovs)


def _reference_repaint(model, known, keep, steps, jump, resample, generator):
    """RePaint (Lugmayr et al. 2022, Alg. 1) written out in float64 from the plan's levels: DDPM
    posterior steps, the known pixels noised to the level each step lands on, one-level forward
    jumps; draws noise in repaint's generator order (start, then per step: step noise unless the step
    is noise-free, known)."""
    from diffcore.timesteps import make_plan

    sched = diffcore.get("schedules", "squaredcos_cap_v2")()
    plan = make_plan(sched, steps, "trailing", "ddim")
    a, s, ts = plan.alphas.tolist(), plan.stds.tolist(), plan.timesteps
    x = torch.randn(known.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * plan.init_scale

    def randn():
        return torch.randn(known.shape, generator=generator, dtype=torch.float64)

    x = torch.where(keep, a[0] * known + s[0] * randn(), x)
    for direction, i in img2img.repaint_schedule(steps, jump, resample):
        if direction == "down":
            v = model(x, ts[i].long().expand(len(x)))
            x0 = a[i] * x - s[i] * v  # v-prediction on a variance-preserving state
            q = (a[i] * s[i + 1]) ** 2 / (a[i + 1] * s[i]) ** 2
            mean = a[i] * s[i + 1] ** 2 / (a[i + 1] * s[i] ** 2) * x + a[i + 1] * (1 - q) * x0
            var = s[i + 1] ** 2 * (1 - q)
            x = mean + var**0.5 * randn() if var > 0 else mean  # no draw for a zero-variance (final) step
            noised = known if i + 1 == steps else a[i + 1] * known + s[i + 1] * randn()
            x = torch.where(keep, noised, x)
        else:
            ratio = a[i] / a[i + 1]
            x = ratio * x + (s[i] ** 2 - (ratio * s[i + 1]) ** 2) ** 0.5 * randn()
    return torch.where(keep, known, x.clamp(-1, 1))


def test_repaint_matches_a_written_out_reference_step_for_step():
    """Levels, the known pixels' noise level after each step, the forward jumps and the final
    paste: repaint (v-prediction, squaredcos_cap_v2, trailing spacing) equals the reference."""
    means = torch.tensor([[0.3, 0.3, 0.3, -0.3], [-0.3, -0.3, -0.3, 0.3]], dtype=torch.float64)
    model, _, _ = _rotated_mixture(means, torch.full((2, 4), 0.12, dtype=torch.float64))
    known = torch.tensor([[0.25, 0.4, 0.0, 0.0], [-0.1, 0.05, 0.0, 0.0]] * 3, dtype=torch.float64).reshape(6, 1, 2, 2)
    keep = inputs.region_mask("bottom-half", 2, 2) == 0
    for steps, jump, resample in [(12, 3, 3), (9, 4, 2), (5, 5, 1)]:
        out = img2img.repaint(
            model,
            known,
            "bottom-half",
            steps=steps,
            jump_length=jump,
            resample=resample,
            generator=torch.Generator().manual_seed(steps),
            **ROTATED,
        )
        ref = _reference_repaint(model, known, keep, steps, jump, resample, torch.Generator().manual_seed(steps))
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_repaint_approaches_the_closed_form_conditional_of_a_gaussian_mixture():
    """Closed-form oracle: with the exact denoiser of a two-component mixture, the filled pixels
    approach p(missing | known) (component weight, conditional mean and variance) as resampling
    and finer steps are added. RePaint is not an exact sampler: with short jumps it
    under-uses the known pixels (the fill stays near the component mean), a bias that shrinks
    with more steps; resampling is what picks the right component."""
    means = torch.tensor([[0.4, 0.4, 0.4, 0.4], [-0.4, -0.4, 0.4, -0.4]], dtype=torch.float64)
    stds = torch.tensor([[0.2, 0.2, 0.06, 0.06], [0.2, 0.2, 0.06, 0.06]], dtype=torch.float64)
    model, mus, covs = _rotated_mixture(means, stds)  # corr(pixel 0, pixel 2) = 0.83 in each component
    known = torch.tensor([0.1, 0.15], dtype=torch.float64)
    weights, cmeans, ccovs = _conditional(known, mus, covs)
    assert weights[0] > 0.9998 and (cmeans[0] - means[0, 2:]).abs().min() > 0.2  # the known row moves the fill
    n = 500
    images = torch.zeros(n, 1, 2, 2, dtype=torch.float64)
    images.view(n, 4)[:, :2] = known
    wrong, error, ratio = {}, {}, {}
    for steps, jump, resample in [(50, 5, 1), (50, 5, 5), (100, 4, 5)]:
        out = img2img.repaint(
            model,
            images,
            "bottom-half",
            steps=steps,
            jump_length=jump,
            resample=resample,
            seed=1,
            **ROTATED,
        )
        fill = out.view(n, 4)[:, 2:]
        wrong[steps, resample] = float((fill[:, 1] < 0).double().mean())  # pixel 3's sign = component
        error[steps, resample] = float((fill.mean(0) - cmeans[0]).abs().max())
        ratio[steps, resample] = fill.var(0) / ccovs[0].diagonal()
    assert wrong[50, 1] > 0.05 and wrong[50, 5] < 0.03 and wrong[100, 5] < 0.015, wrong
    assert error[100, 5] < 0.05 and error[100, 5] < 0.6 * error[50, 5], error
    assert ((ratio[100, 5] > 0.7) & (ratio[100, 5] < 1.5)).all() and (ratio[50, 1] > 2).all(), ratio


# --------------------------------------------------------------------------- paired translation


def test_paired_super_resolution_and_inpainting(paired, digits, pipe):
    sr = diffcore.Pipeline.load(paired / "sr")
    low = torch.nn.functional.avg_pool2d(digits[:5], 2)
    out = img2img.translate(sr, low, steps=4, seed=0)
    assert out.shape == (5, 1, 8, 8) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match="source are 8x8 but the model works at 4x4"):
        img2img.translate(sr, digits[:5])
    assert img2img.translate(sr, digits[:2], resize=True, steps=2).shape == (2, 1, 8, 8)
    inp = diffcore.Pipeline.load(paired / "inpaint")
    out = img2img.translate(inp, digits[:5], mask="left-half", steps=4, seed=0)
    assert torch.equal(out[..., :, 4:], digits[:5, ..., :, 4:]) and out.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="needs a mask"):
        img2img.translate(inp, digits[:5])
    with pytest.raises(ValueError, match="not trained for paired translation"):
        img2img.translate(pipe, digits[:5])


def test_repaint_noise_is_keyed_by_row(pipe, digits):
    """Issue #17: with a seed, RePaint's start noise, known-region noise, jumps and ddpm step noise
    of row i depend on (seed, sample_index + i) only: rows 0..3 at once equal 0..0 and 1..3 apart
    (to the model's rounding)."""
    x = digits[:4]
    kw = {"steps": 4, "jump_length": 2, "resample": 2, "seed": 5}
    whole = img2img.repaint(pipe, x, "center", **kw)
    parts = [img2img.repaint(pipe, x[:1], "center", **kw), img2img.repaint(pipe, x[1:], "center", sample_index=1, **kw)]
    assert torch.allclose(whole, torch.cat(parts), atol=1e-4)  # model rounding may depend on the batch size
    assert (img2img.repaint(pipe, x[1:], "center", **kw) - whole[1:]).abs().max() > 0.1


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m"])
def test_paired_translation_noise_is_keyed_by_row(paired, digits, sampler):
    """Issue #17: with a seed, row i's x_T and step noise depend on (seed, sample_index + i) only,
    so translating rows 0..4 at once equals translating 0..1 and 2..4 separately."""
    sr = diffcore.Pipeline.load(paired / "sr")
    low = torch.nn.functional.avg_pool2d(digits[:5], 2)
    whole = img2img.translate(sr, low, sampler=sampler, steps=3, seed=7)
    parts = [
        img2img.translate(sr, low[:2], sampler=sampler, steps=3, seed=7),
        img2img.translate(sr, low[2:], sampler=sampler, steps=3, seed=7, sample_index=2),
    ]
    # the noise is equal bit for bit; the UNet's CPU kernels may round differently at another batch size
    assert torch.allclose(whole, torch.cat(parts), atol=1e-4)
    shifted = img2img.translate(sr, low[2:], sampler=sampler, steps=3, seed=7)  # rows keyed 0..2: other noise
    assert (shifted - whole[2:]).abs().max() > 0.1


def test_source_dropout_trains_the_null_source():
    from diffcore.conditions import make_task_condition

    x = torch.rand(400, 1, 8, 8) * 2 - 1
    for name, options in (("inpainting", {}), ("super_resolution", {"factor": 2})):
        plain = make_task_condition(name, **options)
        dropped = make_task_condition(name, **options, dropout=0.25)
        assert dropped.config()["dropout"] == 0.25 and "dropout" not in plain.config()
        assert make_task_condition(**dropped.config()) == dropped  # the checkpoint's spec round-trips
        src = dropped.make(x, torch.Generator().manual_seed(0))
        null = dropped.null(src)
        is_null = (src == null).flatten(1).all(1)
        assert 0.18 < float(is_null.float().mean()) < 0.32
        if name == "inpainting":  # the null source: no pixels known, every pixel missing
            assert torch.equal(null[:, :1], torch.zeros_like(x)) and torch.equal(null[:, 1:], torch.ones_like(x))
        else:
            assert torch.equal(null, torch.zeros_like(x))
        # without dropout make() draws nothing extra: the trainer's random stream is unchanged
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        plain.make(x[:8], g1)
        make_task_condition(name, **options).make(x[:8], g2)
        assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="dropout="):
            make_task_condition("inpainting", dropout=bad)
    with pytest.raises(ValueError, match=r"task condition 'inpainting' has no option\(s\) \['factor'\]"):
        make_task_condition("inpainting", factor=2)


def test_source_guidance(paired, digits, monkeypatch):
    inp = diffcore.Pipeline.load(paired / "inpaint-dropout")
    x = digits[:4]
    # what translate hands the sampler (this briefly trained model's samples mostly clip to +-1, so
    # compare the arguments as well as the outputs)
    seen = []
    real_sample = diffcore.Pipeline.sample
    monkeypatch.setattr(diffcore.Pipeline, "sample", lambda *a, **k: seen.append(k) or real_sample(*a, **k))
    for w in (2.5, np.float32(4)):
        img2img.translate(inp, x, mask="bottom-half", steps=2, seed=2, source_guidance=w)
    assert [k["guidance_scale"] for k in seen] == [2.5, 4.0]
    assert torch.equal(seen[0]["uncond"]["concat"][:, 1:], torch.ones_like(x))  # null source: all missing
    assert torch.equal(seen[0]["uncond"]["concat"][:, :1], torch.zeros_like(x))
    monkeypatch.undo()
    plain = img2img.translate(inp, x, mask="bottom-half", steps=4, seed=2)
    one = img2img.translate(inp, x, mask="bottom-half", steps=4, seed=2, source_guidance=1.0)
    three = img2img.translate(inp, x, mask="bottom-half", steps=4, seed=2, source_guidance=3.0)
    assert torch.allclose(plain, one, atol=1e-5)
    assert torch.equal(
        one, img2img.translate(inp, x, mask="bottom-half", steps=4, seed=2, source_guidance=np.float32(1))
    )
    assert torch.equal(three[..., :4, :], x[..., :4, :]) and three.min() >= -1 and three.max() <= 1
    # by hand: the sampler sees null + w * (source - null), the null source = every pixel missing
    mask = inputs.region_mask("bottom-half", 8, 8).expand(4, 1, 8, 8)
    concat = torch.cat([x * (1 - mask), mask], dim=1)
    null = torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)
    x_T = ops.philox_noise_like(torch.empty(x.shape), 2, offset=INIT_NOISE_OFFSET)  # row i keyed by (2, i)
    seed = 2
    common = {
        "sampler": inp.sampler,
        "steps": 4,
        "schedule": inp.schedule,
        "prediction": inp.param,
        "timestep_spacing": "trailing",
        "cond": {"concat": concat},
        "seed": seed,
    }
    want = diffcore.sample(inp.model, x_T, uncond={"concat": null}, guidance_scale=3.0, **common)
    assert torch.allclose(three, torch.where(mask == 0, x, want.clamp(-1, 1)), atol=1e-6)
    # (this briefly trained model's samples mostly clip to +-1: compare before the clamp)
    assert not torch.allclose(want, diffcore.sample(inp.model, x_T, **common), atol=1e-3)
    with pytest.raises(ValueError, match="source_guidance needs a model trained with source dropout"):
        img2img.translate(diffcore.Pipeline.load(paired / "inpaint"), x, mask="bottom-half", source_guidance=2.0)
    with pytest.raises(ValueError, match="not both"):
        img2img.translate(inp, x, mask="bottom-half", source_guidance=2.0, guidance_scale=2.0)
    with pytest.raises(ValueError, match="source_guidance=nan must be a finite number"):
        img2img.translate(inp, x, mask="bottom-half", source_guidance=float("nan"))


# --------------------------------------------------------------------------- bad input


def _bad_inputs(x):
    nan, inf = x.clone(), x.clone()
    nan[0, 0, 1, 1], inf[1, 0, 2, 2] = float("nan"), float("inf")
    return [
        ("sdedit", {"images": x[:, :, :6, :6]}, "are 6x6 but the model works at 8x8"),
        ("sdedit", {"images": x.repeat(1, 3, 1, 1)}, "have 3 channel"),
        ("sdedit", {"images": nan}, "NaN or inf"),
        ("repaint", {"images": inf}, "NaN or inf"),
        ("sdedit", {"images": (x + 1) * 127.5}, r"expected model space \[-1, 1\]"),
        ("sdedit", {"images": ((x + 1) * 127.5).to(torch.uint8)}, "must be floating point"),
        ("sdedit", {"strength": 0.0}, r"must be in \(0, 1\]"),
        ("sdedit", {"strength": 1.5}, r"must be in \(0, 1\]"),
        ("sdedit", {"strength": float("nan")}, r"must be in \(0, 1\]"),
        ("sdedit", {"strength": [0.5, -0.1, 0.5, 0.5]}, r"must be in \(0, 1\]"),
        ("sdedit", {"strength": [0.5, 0.5]}, "2 values for 4 images"),
        ("repaint", {"mask": torch.zeros(8, 8)}, "all zero"),
        ("repaint", {"mask": torch.zeros(0, 8)}, "mask is empty"),
        ("repaint", {"mask": torch.ones(6, 6)}, "mask is 6x6 but the images are 8x8"),
        ("repaint", {"mask": torch.full((8, 8), 0.5)}, "only 0"),
        ("repaint", {"mask": "middle"}, "mask region 'middle'"),
        ("repaint", {"jump_length": 0}, "jump_length=0"),
        ("repaint", {"resample": 0}, "resample=0"),
    ]


def test_bad_input_raises_clear_errors(pipe, digits):
    x = digits[:4]
    for fn, kw, message in _bad_inputs(x):
        args = {"images": x, "strength": 0.5} if fn == "sdedit" else {"images": x, "mask": "bottom-half"}
        args.update(kw)
        with pytest.raises((ValueError, TypeError), match=message):
            if fn == "sdedit":
                img2img.sdedit(pipe, args["images"], args["strength"], steps=2)
            else:
                extra = {k: v for k, v in args.items() if k not in ("images", "mask")}
                img2img.repaint(pipe, args["images"], args["mask"], steps=4, **{"jump_length": 2, **extra})


def test_resize_converts_size_and_channels(pipe, digits):
    rgb = torch.nn.functional.interpolate(digits[:3], size=(16, 16), mode="nearest").repeat(1, 3, 1, 1)
    out = img2img.sdedit(pipe, rgb, 0.3, steps=2, resize=True)
    assert out.shape == (3, 1, 8, 8)
    out = img2img.repaint(pipe, rgb, torch.ones(16, 16).tril(), steps=4, jump_length=2, resize=True)
    assert out.shape == (3, 1, 8, 8)


# --------------------------------------------------------------------------- the task and command


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


def test_translate_command_writes_outputs(run, paired, digits, tmp_path, capsys):
    pixels = ((digits[:3] + 1) * 127.5).round().to(torch.uint8).numpy()
    np.savez(tmp_path / "in.npz", images=pixels)
    png = _png(tmp_path / "one.png", pixels[0, 0])
    _png(tmp_path / "mask.png", (np.arange(64).reshape(8, 8) >= 40).astype(np.uint8) * 255)
    cases = [
        ["--input", str(tmp_path / "in.npz"), "--mode", "sdedit", "--strength", "0.4", "--steps", "3"],
        [
            "--input",
            str(png),
            "--mode",
            "inpaint",
            "--mask",
            str(tmp_path / "mask.png"),
            "--steps",
            "4",
            "--jump-length",
            "2",
            "--resample",
            "2",
        ],
    ]
    for k, argv in enumerate(cases):
        out = tmp_path / f"out{k}"
        assert main(["translate", "--checkpoint", str(run), *argv, "--out", str(out)]) == 0, capsys.readouterr().err
        result = json.loads(capsys.readouterr().out)
        saved = np.load(out / "output.npz")["images"]
        assert saved.shape == (result["n"], 1, 8, 8) and np.abs(saved).max() <= 1
        assert (out / "output.png").exists() and (out / "comparison.png").exists()
    known = np.load(tmp_path / "out1" / "output.npz")["images"][0, 0][:5]
    assert np.array_equal(known, pixels[0, 0][:5].astype(np.float32) / 127.5 - 1)
    low = _png(tmp_path / "low.png", pixels[0, 0][::2, ::2].copy())
    assert (
        main(
            [
                "run",
                "translate",
                "--checkpoint",
                str(paired / "sr"),
                "--input",
                str(low),
                "--mode",
                "paired",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "sr"),
            ]
        )
        == 0
    )
    assert np.load(tmp_path / "sr" / "output.npz")["images"].shape == (1, 1, 8, 8)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--strength", "0"], "strength=0.0 must be in (0, 1]"),
        (["--strength", "1.01"], "must be in (0, 1]"),
        (["--mode", "inpaint"], "needs --mask"),
        (["--mode", "inpaint", "--mask", "{tmp}/zero.png"], "all zero"),
        (["--mode", "inpaint", "--mask", "{tmp}/empty.npy"], "empty array"),
        (["--input", "{tmp}/nan.npy"], "NaN or inf"),
        (["--input", "{tmp}/big.png"], "are 12x12 but the model works at 8x8"),
        (["--input", "{tmp}/rgb.png"], "have 3 channel(s) but the model expects 1"),
        (["--input", "{tmp}/missing.png"], "does not exist"),
        (["--mode", "paired"], "not trained for paired translation"),
        (["--source-guidance", "2"], "source_guidance is for mode 'paired'"),
        (["--jump-length", "0", "--mode", "inpaint", "--mask", "center"], "jump_length=0"),
    ],
)
def test_translate_command_bad_input_is_one_line(run, tmp_path, capsys, argv, message):
    _png(tmp_path / "ok.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "zero.png", np.zeros((8, 8), np.uint8))
    _png(tmp_path / "big.png", np.zeros((12, 12), np.uint8))
    _png(tmp_path / "rgb.png", np.zeros((8, 8, 3), np.uint8) + np.array([200, 10, 10], np.uint8))
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    bad = np.zeros((8, 8), np.float32)
    bad[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--input" not in argv:
        argv = ["--input", str(tmp_path / "ok.png"), *argv]
    code = main(["translate", "--checkpoint", str(run), *argv, "--steps", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err


def test_resize_flag_accepts_other_sizes_and_rgb(run, tmp_path, capsys):
    _png(tmp_path / "rgb.png", np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8))
    assert (
        main(
            [
                "translate",
                "--checkpoint",
                str(run),
                "--input",
                str(tmp_path / "rgb.png"),
                "--resize",
                "--steps",
                "2",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert np.load(tmp_path / "o" / "output.npz")["images"].shape == (1, 1, 8, 8)


# --------------------------------------------------------------------------- RGB photos, end to end


@pytest.mark.slow
def test_rgb_photos_end_to_end(tmp_path):
    """A tiny model trained briefly on 64x64 RGB crops of scikit-image's bundled photos runs
    SDEdit and RePaint: shapes, value ranges, known pixels (not quality)."""
    skdata = pytest.importorskip("skimage.data")
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        photo = photo.resize((photo.width * 128 // min(photo.size), photo.height * 128 // min(photo.size)))
        arr = np.asarray(photo)
        for k in range(4):
            top, left = (int(rng.integers(0, s - 64 + 1)) for s in arr.shape[:2])
            Image.fromarray(arr[top : top + 64, left : left + 64]).save(root / f"{name}{k}.png")
    model = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "groups": 8}
    pipe = diffcore.train(
        "image-folder",
        "unet",
        3,
        tmp_path / "run",
        dataset_options={"root": str(root), "size": 64, "channels": 3, "holdout": 0.25},
        model_config=model,
        **{**TRAIN, "batch_size": 4},
    )
    x = diffcore.get("datasets", "image-folder")(root=str(root), size=64, channels=3, holdout=0.25).test[:2]
    assert x.shape == (2, 3, 64, 64)
    edited = img2img.sdedit(pipe, x, [0.3, 0.6], steps=3)
    assert edited.shape == x.shape and edited.min() >= -1 and edited.max() <= 1
    assert torch.isfinite(edited).all() and not torch.equal(edited, x)
    filled = img2img.repaint(pipe, x, "center", steps=4, jump_length=2, resample=2)
    keep = inputs.region_mask("center", 64, 64).expand_as(x) == 0
    assert filled.shape == x.shape and filled.min() >= -1 and filled.max() <= 1
    assert torch.equal(filled[keep], x[keep]) and not torch.equal(filled[~keep], x[~keep])

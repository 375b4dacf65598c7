"""Denoising: level matching, the posterior mean and posterior samples, tiling, sigma estimation,
the denoise task and command, and bad input.

The oracle is closed-form: a Gaussian mixture over 4x4 images whose exact denoiser is known
(:mod:`diffcore.analytic`), so ``mode="mmse"`` must return the exact posterior mean E[x0 | y] and
posterior samples must have the posterior's mean and variance. The command runs on an untrained
tiny UNet (mechanics only); benchmarks/quality/denoise.py measures quality.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from diffcore.analytic import GaussianMixture, exact_model
from diffcore.cli import main
from diffcore.parameterization import make_parameterization
from diffcore.pipeline import Pipeline
from diffcore.schedules import make_schedule
from diffcore.tasks import denoise as dn
from diffcore.timesteps import partial_plan

SIZE = 4  # the analytic "model" works on 1x4x4 images


class ImageModel:
    """The exact model of ``mixture`` (16-D) on (B, 1, 4, 4) images, with a config like a UNet's."""

    def __init__(self, mixture: GaussianMixture, schedule, prediction: str = "epsilon") -> None:
        self.fn = exact_model(mixture, schedule, prediction)
        self.config = {"in_channels": 1, "image_size": SIZE}
        self.calls = 0

    def __call__(self, x, t, cond=None):
        self.calls += 1
        return self.fn(x.flatten(1), t).reshape(x.shape)


def mixture(k: int = 3, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(k, SIZE * SIZE, generator=g, dtype=torch.float64) * 1.4 - 0.7
    stds = torch.rand(k, SIZE * SIZE, generator=g, dtype=torch.float64) * 0.2 + 0.1
    return GaussianMixture(means, stds, torch.full((k,), 1.0 / k, dtype=torch.float64))


def noisy(mix: GaussianMixture, n: int, sigma: float, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = mix.sample(n, g)
    y = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0.float().reshape(n, 1, SIZE, SIZE), y.float().reshape(n, 1, SIZE, SIZE)


# --------------------------------------------------------------------------- level matching


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
def test_match_level_is_exact_between_timesteps_and_agrees_with_partial_plans(name):
    sched = make_schedule(name)
    sigma = torch.tensor([0.0137, 0.196, 0.392, 0.588, 3.7], dtype=torch.float64)
    t, alpha, std = dn.match_level(sched, sigma)
    assert torch.allclose(std / alpha, sigma, rtol=1e-12) and torch.allclose(
        alpha**2 + std**2, torch.ones(5, dtype=torch.float64)
    )
    assert bool((t != t.round()).all()), t  # these sigmas sit between training timesteps
    train = sched.train_sigmas()
    for ti, s in zip(t.tolist(), sigma.tolist(), strict=True):
        assert train[math.floor(ti)] <= s <= train[math.ceil(ti)]
        plan = partial_plan(sched, 3, ti)  # what sample_from starts from: the same level
        assert plan.level(0) == pytest.approx((1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)), rel=1e-12)


def test_match_level_edm_and_out_of_range():
    edm = make_schedule("edm")
    t, alpha, std = dn.match_level(edm, torch.tensor([0.5]))
    assert (float(t), float(alpha), float(std)) == (0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"\[1000.*outside the model's range"):
        dn.match_level(make_schedule("linear"), torch.tensor([1000.0]))


def test_sigma_scales():
    assert dn.sigma_to_model(50.0) == pytest.approx(2 * 50 / 255)
    assert dn.check_sigma(0.1, 2, scale=1.0).tolist() == pytest.approx([0.2, 0.2])
    assert dn.check_sigma([25, 50], 2, scale=255).tolist() == pytest.approx([50 / 255, 100 / 255])
    assert dn.check_sigma("auto", 3) is None


# --------------------------------------------------------------------------- mmse and samples


@pytest.mark.parametrize(
    "name,prediction", [("linear", "epsilon"), ("squaredcos_cap_v2", "v_prediction"), ("edm", "epsilon")]
)
def test_mmse_is_the_exact_posterior_mean_in_one_evaluation(name, prediction):
    mix, sched = mixture(), make_schedule(name)
    model = ImageModel(mix, sched, prediction)
    _, y = noisy(mix, 64, 0.37)
    out = dn.denoise(model, y, 0.37, schedule=sched, prediction=prediction, clamp=False)
    exact = mix.denoise(y.flatten(1).double(), 1.0, 0.37).float().reshape(y.shape)
    assert model.calls == 1
    assert torch.allclose(out, exact, atol=2e-4), float((out - exact).abs().max())
    # per-image sigmas (pixel units) in one call
    sig = torch.linspace(10, 80, 64, dtype=torch.float64)
    y2 = y + 0 * sig.reshape(-1, 1, 1, 1).float()
    out2 = dn.denoise(model, y2, sig, sigma_scale=255, schedule=sched, prediction=prediction, clamp=False)
    exact2 = mix.denoise(y2.flatten(1).double(), 1.0, sig * 2 / 255).float().reshape(y.shape)
    assert torch.allclose(out2, exact2, atol=2e-4)


def test_posterior_samples_have_the_posterior_mean_and_variance():
    """One Gaussian: p(x0 | y) = N(m + v / (v + s^2) (y - m), v s^2 / (v + s^2)) per pixel."""
    g = torch.Generator().manual_seed(0)
    m, v, s = torch.rand(1, 16, generator=g, dtype=torch.float64) - 0.5, 0.09, 0.3
    gauss = GaussianMixture(
        m, torch.full((1, 16), math.sqrt(v), dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    )
    sched = make_schedule("linear")
    model = ImageModel(gauss, sched)
    y = (m + 0.2).float().reshape(1, 1, SIZE, SIZE).expand(1500, 1, SIZE, SIZE)
    post_mean = (m + v / (v + s * s) * 0.2).float().reshape(1, 1, SIZE, SIZE)
    post_var = v * s * s / (v + s * s)
    draws = dn.denoise(model, y, s, mode="sample", steps=50, schedule=sched, clamp=False, batch_size=1500)
    err = (draws.mean(0) - post_mean[0]).abs()  # standard error 0.0055; the shift from y is 0.1
    assert float(err.mean()) < 0.01 and float(err.max()) < 0.025
    assert float(draws.var(0).mean()) == pytest.approx(post_var, rel=0.1)
    mmse = dn.denoise(model, y[:4], s, schedule=sched, clamp=False)
    assert torch.allclose(mmse, post_mean.expand(4, 1, SIZE, SIZE), atol=1e-4)
    # the mean of K samples: a Monte-Carlo posterior mean, its spread ~ sqrt(post_var / K)
    mean8 = dn.denoise(model, y[:200], s, samples=8, steps=20, schedule=sched, clamp=False)
    assert float((mean8 - post_mean).pow(2).mean()) == pytest.approx(post_var / 8, rel=0.25)
    assert float((draws[:200] - post_mean).pow(2).mean()) > 4 * float((mean8 - post_mean).pow(2).mean())


def test_seeded_samples_are_deterministic_and_differ_across_seeds():
    mix, sched = mixture(), make_schedule("linear")
    model = ImageModel(mix, sched)
    _, y = noisy(mix, 8, 0.3)
    kw = {"sigma": 0.3, "mode": "sample", "steps": 5, "schedule": sched}
    a, b, c = (dn.denoise(model, y, seed=s, **kw) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)
    k1, k2 = (dn.denoise(model, y, 0.3, samples=3, steps=4, seed=5, schedule=sched) for _ in range(2))
    assert torch.equal(k1, k2)
    # a deterministic (ODE) sampler gives one fixed image whatever the seed
    d1, d2 = (dn.denoise(model, y, 0.3, mode="sample", sampler="ddim", steps=5, seed=s, schedule=sched) for s in (1, 2))
    assert torch.equal(d1, d2)


# --------------------------------------------------------------------------- tiling


def test_tile_starts_cover_the_image_with_the_requested_overlap():
    for size, tile, overlap in [(4, 4, 1), (11, 4, 1), (13, 4, 2), (64, 8, 3), (9, 8, 0)]:
        starts = dn.tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] == size - tile
        assert all(tile - overlap >= b - a > 0 for a, b in itertools.pairwise(starts)), starts
    w = dn.blend_window(8, 8, 3)
    assert bool((w > 0).all()) and float(w[4, 4]) == 1.0 and float(w[0, 0]) < float(w[1, 1])


class Constant:
    """x0-prediction of a constant image (or, with identity, of the noisy input itself)."""

    def __init__(self, value: float | None) -> None:
        self.value, self.config, self.batches = value, {"in_channels": 1, "image_size": SIZE}, []

    def __call__(self, x, t, cond=None):
        self.batches.append(x.shape[0])
        if self.value is None:  # on an EDM schedule the state is y itself
            return x.clone()
        return torch.full_like(x, self.value)


def test_tiling_large_images_blends_without_seams():
    y = torch.rand(2, 1, 11, 13, generator=torch.Generator().manual_seed(0)) * 2 - 1
    const = Constant(0.25)
    out = dn.denoise(const, y, 0.2, schedule="linear", prediction="sample", tile_overlap=2, batch_size=5)
    assert out.shape == y.shape and torch.allclose(out, torch.full_like(y, 0.25), atol=1e-6)
    tiles = 2 * len(dn.tile_starts(11, 4, 2)) * len(dn.tile_starts(13, 4, 2))
    assert sum(const.batches) == tiles and max(const.batches) == 5  # processed in batches
    # a model returning its input: every output pixel is the input pixel (placement is right)
    same = dn.denoise(Constant(None), y, 0.2, schedule="edm", prediction="sample", clamp=False)
    assert torch.allclose(same, y, atol=1e-6)


def test_tiled_mmse_matches_per_tile_posterior_means_away_from_overlaps():
    mix, sched = mixture(k=1), make_schedule("linear")
    model = ImageModel(mix, sched)
    _, y = noisy(mix, 1, 0.3)
    big = torch.cat([y, y], dim=-1)  # 4x8: two tiles, no overlap
    out = dn.denoise(model, big, 0.3, schedule=sched, tile_overlap=0, clamp=False)
    one = dn.denoise(model, y, 0.3, schedule=sched, clamp=False)
    assert torch.allclose(out, torch.cat([one, one], dim=-1), atol=1e-6)


# --------------------------------------------------------------------------- sigma estimation


def _smooth(n: int = 2, size: int = 96) -> torch.Tensor:
    u = torch.linspace(0, 1, size)
    img = 0.6 * torch.sin(3 * u)[:, None] * torch.cos(2 * u)[None, :]
    return img.expand(n, 1, size, size).clone()


@pytest.mark.parametrize("sigma", [0.05, 0.2, 0.5])
def test_estimate_sigma_within_ten_percent(sigma):
    clean = _smooth()
    y = clean + sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))
    est = dn.estimate_sigma(y)
    assert est.shape == (2,) and bool(((est - sigma).abs() < 0.1 * sigma).all()), est.tolist()


def test_estimate_sigma_agrees_with_scikit_image():
    pytest.importorskip("pywt")
    restoration = pytest.importorskip("skimage.restoration")
    rng = np.random.default_rng(0)
    for shape in [(32, 48), (8, 8), (17, 9), (3, 5)]:
        y = rng.random(shape) * 0.3 + 0.3 * rng.standard_normal(shape)
        ours = float(dn.estimate_sigma(torch.from_numpy(y)[None, None]))
        assert ours == pytest.approx(restoration.estimate_sigma(y), rel=1e-9), shape
    rgb = rng.standard_normal((3, 20, 20)) * np.array([0.1, 0.2, 0.3])[:, None, None]
    theirs = restoration.estimate_sigma(rgb.transpose(1, 2, 0), channel_axis=-1, average_sigmas=True)
    assert float(dn.estimate_sigma(torch.from_numpy(rgb)[None])) == pytest.approx(theirs, rel=1e-9)


def test_auto_sigma_uses_the_estimate_raised_to_the_smallest_level():
    mix, sched = mixture(k=1), make_schedule("linear")
    model = ImageModel(mix, sched)
    clean = _smooth(1, 16)
    y = clean + 0.2 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    auto = dn.denoise(model, y, "auto", schedule=sched, clamp=False)
    est = float(dn.estimate_sigma(y))
    assert torch.allclose(auto, dn.denoise(model, y, est, schedule=sched, clamp=False))
    flat = torch.zeros(2, 1, SIZE, SIZE)  # every coefficient is 0: estimate 0, below the smallest level
    assert float(dn.estimate_sigma(flat).abs().max()) == 0.0
    smallest = float(sched.train_sigmas()[0])
    assert dn.resolve_sigma(flat, "auto", sched).tolist() == [smallest, smallest]
    assert torch.isfinite(dn.denoise(model, flat, "auto", schedule=sched)).all()


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors():
    mix, sched = mixture(), make_schedule("linear")
    model = ImageModel(mix, sched)
    _, y = noisy(mix, 3, 0.2)
    nan, inf = y.clone(), y.clone()
    nan[0, 0, 1, 1], inf[1, 0, 2, 2] = float("nan"), float("inf")
    cases = [
        ({"images": y.repeat(1, 3, 1, 1)}, r"have 3 channel\(s\) but the model expects 1"),
        ({"images": nan}, "1 NaN or inf"),
        ({"images": inf}, "1 NaN or inf"),
        ({"images": y[:0]}, r"non-empty batch .* shape \(0, 1, 4, 4\)"),
        ({"images": y[..., :3, :]}, "are 3x4, smaller than the model's 4x4"),
        ({"images": (y + 1) * 127.5}, r"scale 0\.\.255 pixels"),
        ({"images": y.double().to(torch.uint8)}, "must be floating point"),
        ({"sigma": 0.0}, r"sigma=0\.0 must be > 0"),
        ({"sigma": -25.0}, r"sigma=-25\.0 must be > 0"),
        ({"sigma": [0.1, -0.5, 0.2]}, r"sigma=\[-0\.5\] must be > 0"),
        ({"sigma": float("nan")}, "must be > 0 and finite"),
        ({"sigma": [0.1, 0.2]}, "2 values for 3 images"),
        ({"sigma": "loud"}, "sigma='loud'"),
        ({"sigma": 1e-5}, r"outside the model's range"),
        ({"sigma_scale": 0}, "sigma_scale=0"),
        ({"mode": "median"}, "mode='median'"),
        ({"samples": 0}, "samples=0"),
        ({"mode": "sample", "samples": 4}, "samples=4: mode 'sample' returns one"),
        ({"tile_overlap": 4}, "tile_overlap=4 must be smaller"),
        ({"tile_overlap": -1}, "tile_overlap=-1"),
        ({"batch_size": 0}, "batch_size=0"),
    ]
    for kw, message in cases:
        args = {"images": y, "sigma": 0.2, **kw}
        with pytest.raises((ValueError, TypeError), match=message):
            dn.denoise(model, args.pop("images"), args.pop("sigma"), schedule=sched, **args)


# --------------------------------------------------------------------------- the task and command


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An untrained tiny 8x8 UNet pipeline saved as a run folder (the command's mechanics only)."""
    import diffcore

    torch.manual_seed(0)
    model = diffcore.get("models", "unet")(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mult=[1],
        num_res_blocks=1,
        attention_resolutions=[],
        groups=4,
    )
    sched = make_schedule("linear")
    spec = {
        "model": {"name": "unet", "config": model.config},
        "schedule": sched.config(),
        "prediction": {"name": "epsilon"},
        "dataset": {"name": "digits", "shape": [1, 8, 8], "num_classes": 0},
    }
    out = tmp_path_factory.mktemp("denoise") / "run"
    Pipeline(model, sched, make_parameterization("epsilon"), run=spec).save(out)
    return out


def test_denoise_command_png_and_npz(run, tmp_path, capsys):
    rng = np.random.default_rng(0)
    png = tmp_path / "noisy.png"
    Image.fromarray(rng.integers(0, 256, (20, 12), dtype=np.uint8)).save(png)
    out_png = tmp_path / "clean.png"
    assert (
        main(["denoise", "--checkpoint", str(run), "--input", str(png), "--sigma", "50", "--output", str(out_png)]) == 0
    ), capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1 and result["shape"] == [1, 20, 12] and result["sigma"] == [50.0]
    with Image.open(out_png) as im:
        assert im.size == (12, 20) and im.mode == "L"
    batch = rng.standard_normal((3, 1, 8, 8)).astype(np.float32) * 0.2
    np.savez(tmp_path / "noisy.npz", images=batch)
    out_npz = tmp_path / "clean.npz"
    given = ["--checkpoint", str(run), "--input", str(tmp_path / "noisy.npz")]
    sample = ["--sigma", "auto", "--mode", "sample", "--steps", "3", "--seed", "7"]
    argv = ["denoise", *given, *sample, "--output", str(out_npz)]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    saved = np.load(out_npz)
    assert saved["images"].shape == (3, 1, 8, 8) and np.abs(saved["images"]).max() <= 1
    assert result["sigma_estimated"] and saved["sigma"] == pytest.approx(np.array(result["sigma"]) * 2 / 255, rel=1e-3)
    first = saved["images"].copy()
    assert main(argv) == 0 and np.array_equal(np.load(out_npz)["images"], first)  # seeded
    capsys.readouterr()
    mean_of_two = ["--sigma", "0.2", "--sigma-scale", "1", "--samples", "2", "--steps", "2"]
    assert main(["run", "denoise", *given, *mean_of_two, "--output", str(tmp_path / "k.npy")]) == 0
    assert np.load(tmp_path / "k.npy").shape == (3, 1, 8, 8)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sigma", "0"], "sigma=0.0 must be > 0"),
        (["--sigma", "-3"], "sigma=-3.0 must be > 0"),
        (["--sigma", "nan"], "must be > 0 and finite"),
        (["--sigma", "loud"], "sigma='loud'"),
        (["--input", "{tmp}/nan.npy"], "1 NaN or inf"),
        (["--input", "{tmp}/inf.npz"], "NaN or inf"),
        (["--input", "{tmp}/empty.npy"], "empty array"),
        (["--input", "{tmp}/rgb.png"], "have 3 channel(s) but the model expects 1"),
        (["--input", "{tmp}/small.png"], "are 6x6, smaller than the model's 8x8"),
        (["--input", "{tmp}/pixels.npy"], "scale 0..255 pixels"),
        (["--input", "{tmp}/missing.png"], "does not exist"),
        (["--mode", "sample", "--samples", "3"], "samples=3: mode 'sample' returns one"),
        (["--output", "{tmp}/out.txt"], "expected a file ending in .png, .npz, .npy"),
        (["--tile-overlap", "8"], "tile_overlap=8 must be smaller"),
    ],
)
def test_denoise_command_bad_input_is_one_line(run, tmp_path, capsys, argv, message):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8) + np.array([200, 10, 10], np.uint8)).save(tmp_path / "rgb.png")
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), np.float32))
    bad = np.zeros((8, 8), np.float32)
    bad[3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    bad[3, 3] = np.inf
    np.savez(tmp_path / "inf.npz", images=bad)
    np.save(tmp_path / "pixels.npy", np.full((8, 8), 200.0, np.float32))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--input" not in argv:
        argv = ["--input", str(tmp_path / "ok.png"), *argv]
    if "--sigma" not in argv:
        argv = [*argv, "--sigma", "25"]
    if "--output" not in argv:
        argv = [*argv, "--output", str(tmp_path / "o.png")]
    code = main(["denoise", "--checkpoint", str(run), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, err

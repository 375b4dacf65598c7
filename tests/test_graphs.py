"""The CUDA-graph cache of ``sample(..., cuda_graph=True)``.

On CPU the cache runs with a fake capture that keeps the loop closure and re-runs it on the
static buffers as "replay": like a graph, it is frozen at capture time (first call's tables,
conditioning buffers, guidance), so a key that misses something, or a copy-in that misses an
input, gives a wrong output here too. The CUDA tests at the end capture real graphs.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections import namedtuple

import pytest
import torch
from torch import nn

import diffcore
from diffcore import graphs, ops
from diffcore.denoiser import NonFiniteModelOutput

N = 16


class Tiny(nn.Module):
    """``model(x, t, cond)`` on (B, C, N) states; ``cond`` a (B, N) tensor or None."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(N, N, generator=torch.Generator().manual_seed(seed)) * 0.2)

    def forward(self, x, t, cond=None):
        out = torch.tanh(x @ self.w.to(x.dtype)) * (t.to(x.dtype)[:, None, None] / 1000.0)
        if cond is not None:
            out = out + 0.1 * cond.to(x.dtype)[:, None, :]
        return out


class FakeCapture:
    """Counts captures; "replay" re-runs the captured closure on the static buffers."""

    def __init__(self, fail: bool = False, hold_loop: bool = True) -> None:
        self.count, self.fail, self.hold_loop = 0, fail, hold_loop

    def __call__(self, loop, inputs, denoiser, keep):
        self.count += 1
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        loop(inputs[0].clone())  # the warm-up
        replay = (lambda: loop(inputs[0])) if self.hold_loop else (lambda: None)
        return graphs.Captured(replay, inputs, keep=keep)


@pytest.fixture
def fake(monkeypatch):
    capture = FakeCapture()
    monkeypatch.setattr(graphs, "cache", graphs.GraphCache(8, capture=capture, device_type="cpu"))
    return capture


def _x(seed: int, b: int = 3) -> torch.Tensor:
    return torch.randn(b, 2, N, generator=torch.Generator().manual_seed(seed))


KW = {"steps": 8, "schedule": "linear", "seed": 7}


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc", "heun"])
def test_second_call_replays_and_equals_eager(fake, sampler):
    model = Tiny()
    outs = [diffcore.sample(model, _x(s), sampler=sampler, cuda_graph=True, **KW) for s in (1, 2, 1)]
    assert fake.count == 1
    assert graphs.cache_info()["hits"] == 2
    for s, out in zip((1, 2, 1), outs):
        eager = diffcore.sample(model, _x(s), sampler=sampler, **KW)
        torch.testing.assert_close(out, eager, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(outs[0], outs[1])  # a different x_T gives its own output


def test_stochastic_sampler_keys_on_the_seed_and_a_deterministic_one_does_not(fake):
    model = Tiny()
    kw = {**KW, "sampler": "euler_ancestral"}
    a = diffcore.sample(model, _x(1), cuda_graph=True, **kw)
    b = diffcore.sample(model, _x(1), cuda_graph=True, **kw)
    assert fake.count == 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = diffcore.sample(model, _x(1), cuda_graph=True, **{**kw, "seed": 8})  # the seed is baked in: recapture
    assert fake.count == 2
    torch.testing.assert_close(c, diffcore.sample(model, _x(1), **{**kw, "seed": 8}), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a, c)
    assert len(graphs.cache) == 1  # the new seed's graph replaced the old one
    d = diffcore.sample(model, _x(1), cuda_graph=True, **kw)
    assert fake.count == 3
    torch.testing.assert_close(d, a, rtol=0, atol=0)
    for seed in (1, 2, None):  # ddim draws no noise: any seed replays the same graph
        diffcore.sample(model, _x(1), sampler="ddim", steps=8, seed=seed, cuda_graph=True)
    assert fake.count == 4 and len(graphs.cache) == 2


def test_conditioning_is_copied_into_the_static_buffers(fake):
    model = Tiny()
    c1, c2 = torch.randn(3, N), torch.randn(3, N)
    kw = {**KW, "sampler": "dpmpp_2m", "guidance_scale": 3.0}
    first = diffcore.sample(model, _x(1), cond=c1, uncond=torch.zeros(3, N), cuda_graph=True, **kw)
    second = diffcore.sample(model, _x(1), cond=c2, uncond=torch.ones(3, N), cuda_graph=True, **kw)
    assert fake.count == 1
    torch.testing.assert_close(first, diffcore.sample(model, _x(1), cond=c1, uncond=torch.zeros(3, N), **kw))
    torch.testing.assert_close(second, diffcore.sample(model, _x(1), cond=c2, uncond=torch.ones(3, N), **kw))
    # the caller's tensors are read, never written
    assert not torch.equal(c1, c2)


class _Train(Tiny):
    pass


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 9},
        {"sampler": "unipc"},
        {"schedule": "squaredcos_cap_v2"},
        {"prediction": "v_prediction"},
        {"x": (4, 2, N)},
        {"x": (3, 3, N)},
        {"dtype": torch.float64},
        {"guidance_scale": 2.0},
        {"guidance_scale": 3.0, "guidance_rescale": 0.5},
        {"cond": (3, N + 0)},
        {"timestep_spacing": "trailing"},
        {"model": "other"},
        {"model": "eval"},
        {"check_finite": False},
    ],
)
def test_anything_baked_into_the_graph_is_in_the_key(fake, change):
    model = Tiny()
    base = {"sampler": "dpmpp_2m", "steps": 8, "schedule": "linear", "seed": 7, "guidance_scale": 3.0}
    diffcore.sample(model, _x(1), cond=torch.ones(3, N), cuda_graph=True, **base)
    kw = dict(base)
    shape, dtype, cond, m = (3, 2, N), torch.float32, torch.ones(3, N), model
    for k, v in change.items():
        if k == "x":
            shape = v
        elif k == "dtype":
            dtype = v
        elif k == "cond":
            cond = torch.ones(v[0], 1).expand(v[0], N)  # same shape, other strides
        elif k == "model":  # another object, or the same one switched to eval mode
            m = Tiny(1) if v == "other" else model.eval()
        else:
            kw[k] = v
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    if shape[0] != 3:
        cond = torch.ones(shape[0], N)
    out = diffcore.sample(m, x, cond=cond, cuda_graph=True, **kw)
    assert fake.count == 2
    torch.testing.assert_close(out, diffcore.sample(m, x, cond=cond, **kw))


def test_lru_evicts_the_least_recently_used(fake):
    graphs.set_cache_size(2)
    model = Tiny()

    def run(steps):
        diffcore.sample(model, _x(1), sampler="ddim", steps=steps, seed=1, cuda_graph=True)

    for steps in (4, 5, 4, 6):  # 4 was used after 5: 5 goes when 6 comes
        run(steps)
    assert fake.count == 3 and graphs.cache_info()["evictions"] == 1
    run(4)
    assert fake.count == 3
    run(5)
    assert fake.count == 4
    assert len(graphs.cache) == 2


def test_cache_holds_no_reference_to_the_model_and_drops_its_graphs(monkeypatch):
    capture = FakeCapture(hold_loop=False)  # a real graph keeps buffers, never the Python loop
    monkeypatch.setattr(graphs, "cache", graphs.GraphCache(8, capture=capture, device_type="cpu"))
    model = Tiny()
    ref = weakref.ref(model)
    diffcore.sample(model, _x(1), sampler="ddim", steps=4, seed=1, cond=torch.ones(3, N), cuda_graph=True)
    other = Tiny(1)
    diffcore.sample(other, _x(1), sampler="ddim", steps=4, seed=1, cuda_graph=True)
    assert len(graphs.cache) == 2
    del model
    gc.collect()
    assert ref() is None
    assert len(graphs.cache) == 1  # only the other model's graph is left


def test_a_bound_method_model_hits(fake):
    model = Tiny()
    for s in (1, 2):
        diffcore.sample(model.forward, _x(s), sampler="ddim", steps=4, seed=1, cuda_graph=True)
    assert fake.count == 1


def test_clear_and_size_zero(fake):
    model = Tiny()
    diffcore.sample(model, _x(1), sampler="ddim", steps=4, seed=1, cuda_graph=True)
    graphs.clear_cache()
    assert graphs.cache_info() == {"hits": 0, "misses": 0, "captures": 0, "evictions": 0, "size": 0, "capacity": 8}
    diffcore.sample(model, _x(1), sampler="ddim", steps=4, seed=1, cuda_graph=True)
    assert fake.count == 2
    graphs.set_cache_size(0)  # the opt-out: capture on every call, keep nothing
    for s in (1, 2):
        out = diffcore.sample(model, _x(s), sampler="ddim", steps=4, seed=1, cuda_graph=True)
        torch.testing.assert_close(out, diffcore.sample(model, _x(s), sampler="ddim", steps=4, seed=1))
    assert fake.count == 4 and len(graphs.cache) == 0
    with pytest.raises(ValueError, match="capacity"):
        graphs.set_cache_size(-1)


def test_capacity_from_the_environment(monkeypatch):
    monkeypatch.setenv(graphs.CACHE_SIZE_ENV, "3")
    assert graphs.GraphCache().capacity == 3
    monkeypatch.setenv(graphs.CACHE_SIZE_ENV, "many")
    with pytest.raises(ValueError, match="DIFFCORE_GRAPH_CACHE_SIZE"):
        graphs.GraphCache()


def test_opaque_conditioning_is_captured_per_call_and_not_kept(fake):
    class Opaque:
        pass

    def model(x, t, cond=None):
        return torch.tanh(x) * 0.1

    for _ in range(2):
        diffcore.sample(model, _x(1), sampler="ddim", steps=4, seed=1, cond=Opaque(), cuda_graph=True)
    assert fake.count == 2 and len(graphs.cache) == 0


def test_failed_capture_warns_once_then_runs_eagerly(monkeypatch):
    capture = FakeCapture(fail=True)
    monkeypatch.setattr(graphs, "cache", graphs.GraphCache(8, capture=capture, device_type="cpu"))
    model = Tiny()
    kw = {"sampler": "dpmpp_2m", "steps": 6, "seed": 1, "cond": torch.ones(3, N)}
    with pytest.warns(RuntimeWarning, match="capture failed"):
        a = diffcore.sample(model, _x(1), cuda_graph=True, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        b = diffcore.sample(model, _x(2), cuda_graph=True, **{**kw, "cond": torch.zeros(3, N)})
    assert capture.count == 1  # not retried
    torch.testing.assert_close(a, diffcore.sample(model, _x(1), **kw))
    torch.testing.assert_close(b, diffcore.sample(model, _x(2), **{**kw, "cond": torch.zeros(3, N)}))


def test_eager_sampling_does_not_touch_the_cache(fake):
    diffcore.sample(Tiny(), _x(1), sampler="ddim", steps=4, seed=1)
    assert graphs.cache_info()["misses"] == 0 and fake.count == 0


def test_graph_errors_are_raised_before_capture(fake):
    model = Tiny()
    with pytest.raises(ValueError, match="callback"):
        diffcore.sample(model, _x(1), sampler="ddim", steps=4, seed=1, cuda_graph=True, callback=lambda d: None)
    cuda_only = graphs.GraphCache(8, capture=FakeCapture())
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        graphs.check_capturable(_x(1), stochastic=False, seed=None, callback=None, graph_cache=cuda_only)
    with pytest.raises(ValueError, match="needs seed"):
        graphs.check_capturable(_x(1), stochastic=True, seed=None, callback=None, graph_cache=graphs.cache)
    assert fake.count == 0


def test_replay_reads_the_finiteness_flags_once_and_names_the_step():
    state = torch.zeros(2)
    entry = graphs.Captured(lambda: state.add_(1.0), (state,), torch.tensor([True, False, False]), (0, 1, 2))
    x = torch.full((2,), 5.0)
    with pytest.raises(NonFiniteModelOutput, match="step 1"):
        graphs.replay(entry, x, [])
    assert torch.equal(x, torch.full((2,), 6.0))  # the result is still copied out
    with pytest.raises(ValueError, match="conditioning tensors"):
        graphs.replay(entry, x, [torch.ones(1)])


def test_structure_and_leaves_round_trip():
    Pair = namedtuple("Pair", "a b")
    a, b, c = torch.ones(2), torch.zeros(3, 2), torch.arange(4.0)
    tree = {"y": [a, ("p", 3, b)], "z": Pair(c, None)}
    assert graphs.tensor_leaves(tree) == [a, b, c]
    new = [torch.full_like(t, 7.0) for t in (a, b, c)]
    rebuilt = graphs.replace_leaves(tree, iter(new))
    assert graphs.tensor_leaves(rebuilt) == new
    assert isinstance(rebuilt["z"], Pair) and rebuilt["y"][1][:2] == ("p", 3)
    assert graphs.structure(tree) == graphs.structure(rebuilt)
    assert graphs.structure({"y": 1}) != graphs.structure({"y": 1.0}) != graphs.structure({"y": True})
    assert graphs.structure(a) != graphs.structure(a.double())
    with pytest.raises(graphs.Uncacheable):
        graphs.structure({"y": object()})


# --------------------------------------------------------------------------- CUDA


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def real_cache(monkeypatch):
    monkeypatch.setattr(graphs, "cache", graphs.GraphCache(8))
    return graphs.cache


def _cuda_x(seed: int, b: int = 2) -> torch.Tensor:
    return torch.randn(b, 4, N, generator=torch.Generator().manual_seed(seed)).cuda()


@needs_cuda
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "unipc"])
def test_cuda_second_call_does_not_recapture_and_equals_eager(real_cache, sampler):
    model = Tiny().cuda().eval()
    kw = {"sampler": sampler, "steps": 20, "schedule": "linear", "seed": 5}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture falls back with a warning
        a1 = diffcore.sample(model, _cuda_x(1), cuda_graph=True, **kw)
        a2 = diffcore.sample(model, _cuda_x(2), cuda_graph=True, **kw)
        a3 = diffcore.sample(model, _cuda_x(1), cuda_graph=True, **kw)
    assert real_cache.info()["captures"] == 1 and real_cache.info()["hits"] == 2
    torch.testing.assert_close(a1, diffcore.sample(model, _cuda_x(1), **kw), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a2, diffcore.sample(model, _cuda_x(2), **kw), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a3, a1, rtol=0, atol=0)
    assert not torch.allclose(a1, a2)


@needs_cuda
def test_cuda_conditioning_and_guidance_replay(real_cache):
    model = Tiny().cuda().eval()
    kw = {"sampler": "dpmpp_2m", "steps": 20, "seed": 5, "guidance_scale": 4.0}
    outs = []
    for s in (1, 2):
        cond = torch.randn(2, N, generator=torch.Generator().manual_seed(10 + s)).cuda()
        outs.append(diffcore.sample(model, _cuda_x(s), cond=cond, uncond=torch.zeros_like(cond), cuda_graph=True, **kw))
        eager = diffcore.sample(model, _cuda_x(s), cond=cond, uncond=torch.zeros_like(cond), **kw)
        torch.testing.assert_close(outs[-1], eager, rtol=1e-5, atol=1e-5)
    assert real_cache.info()["captures"] == 1


@needs_cuda
@pytest.mark.skipif(ops.backend("cuda") != "native-cuda", reason="in-kernel Philox noise needs the CUDA build")
def test_cuda_stochastic_sampler_recaptures_for_a_new_seed_only(real_cache):
    model = Tiny().cuda().eval()
    kw = {"sampler": "euler_ancestral", "steps": 20}
    a = [diffcore.sample(model, _cuda_x(s), seed=3, cuda_graph=True, **kw) for s in (1, 2)]
    assert real_cache.info()["captures"] == 1
    b = diffcore.sample(model, _cuda_x(1), seed=4, cuda_graph=True, **kw)
    assert real_cache.info()["captures"] == 2
    torch.testing.assert_close(a[1], diffcore.sample(model, _cuda_x(2), seed=3, **kw), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, diffcore.sample(model, _cuda_x(1), seed=4, **kw), rtol=1e-5, atol=1e-5)


@needs_cuda
def test_cuda_graphs_of_a_collected_model_are_dropped(real_cache):
    model = Tiny().cuda().eval()
    ref = weakref.ref(model)
    diffcore.sample(model, _cuda_x(1), sampler="ddim", steps=10, seed=1, cuda_graph=True)
    assert len(real_cache) == 1
    del model
    gc.collect()
    assert ref() is None and len(real_cache) == 0

"""diffcore.sample's setup cache (diffcore.plan_cache): hits give bit-identical samples, and a
changed schedule, option, spacing, step count or parameterization never hits a stale entry."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import diffcore
from diffcore import plan_cache
from diffcore.schedules import make_schedule


def _model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x + 1e-3 * t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


X = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0))


def _cond_model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    return _model(x, t) if cond is None else _model(x, t) + 0.1 * cond.reshape(-1, 1, 1)


def _sample(**kw: object) -> torch.Tensor:
    kw = {"sampler": "ddim", "steps": 6, "schedule": "linear", **kw}
    return diffcore.sample(_model, X, **kw)  # type: ignore[arg-type]


def _uncached(**kw: object) -> torch.Tensor:
    plan_cache.clear_cache()
    return _sample(**kw)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    plan_cache.clear_cache()


def test_second_call_hits_every_cache_and_is_bit_identical() -> None:
    first = _sample(sampler="dpmpp_2m")
    assert plan_cache.cache_info()["plans"]["misses"] == 1
    second = _sample(sampler="dpmpp_2m")
    info = plan_cache.cache_info()
    assert (info["plans"]["hits"], info["programs"]["hits"], info["runs"]["hits"]) == (1, 1, 1)
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 7},
        {"timestep_spacing": "trailing"},
        {"eta": 0.5, "seed": 3},
        {"prediction": "v_prediction"},
        {"sampler": "dpmpp_2m"},
        {"sampler": "unipc", "sampler_options": {"order": 3}},
        {"schedule": "scaled_linear"},
        {"sigmas": [10.0, 3.0, 1.0, 0.1]},
    ],
)
def test_a_changed_setting_misses_and_matches_an_uncached_call(change: dict[str, object]) -> None:
    base = {"sampler": "unipc", "sampler_options": {"order": 2}} if change.get("sampler") == "unipc" else {}
    _sample(**base)  # fills the caches
    misses = plan_cache.cache_info()["runs"]["misses"]
    cached = _sample(**{**base, **change})
    assert plan_cache.cache_info()["runs"]["misses"] == misses + 1  # a run table made anew
    assert torch.equal(cached, _uncached(**{**base, **change}))
    assert not torch.equal(cached, _uncached(**base))


def test_a_schedule_mutated_in_place_is_not_served_from_the_cache() -> None:
    sched = make_schedule("linear")
    before = _sample(schedule=sched)
    sched.alphas_cumprod.mul_(0.98)  # in place: same object, same tensor, other values
    after = _sample(schedule=sched)
    assert not torch.equal(before, after)
    assert torch.equal(after, _uncached(schedule=sched))


def test_equal_schedules_share_an_entry_and_other_options_do_not() -> None:
    _sample(schedule=make_schedule("linear", beta_end=0.02))
    _sample(schedule=make_schedule("linear", beta_end=0.02))
    _sample(schedule=make_schedule("linear", beta_end=0.021))
    assert plan_cache.cache_info()["plans"] == {"hits": 1, "misses": 2, "size": 2, "maxsize": plan_cache.MAXSIZE}


def test_cached_programs_are_read_only_and_keys_do_not_follow_copies() -> None:
    _sample()
    plan = next(iter(plan_cache.plans._data.values()))
    program = next(iter(plan_cache.programs._data.values()))
    assert plan_cache.key_of(plan) is not None and plan_cache.key_of(program) is not None
    with pytest.raises(ValueError, match="read-only"):
        program.steps[0].rows[0, 0] = 1.0
    assert plan_cache.key_of(dataclasses.replace(plan)) is None


def test_caches_are_bounded_least_recently_used_first() -> None:
    cache = plan_cache.LRUCache("t", maxsize=2)
    cache.get("a", lambda: 1)
    cache.get("b", lambda: 2)
    cache.get("a", lambda: 0)  # a is now the most recent
    cache.get("c", lambda: 3)  # evicts b
    assert len(cache) == 2
    assert cache.get("a", lambda: -1) == 1 and cache.get("b", lambda: -2) == -2
    assert cache.get(None, lambda: 5) == 5 and len(cache) == 2  # None: never kept
    with pytest.raises(ValueError, match="maxsize"):
        plan_cache.LRUCache("t", maxsize=0)


def test_keys_tell_types_and_contents_apart() -> None:
    freeze = plan_cache.freeze
    assert freeze(2) != freeze(2.0) and freeze(True) != freeze(1)
    assert freeze({"a": [1, 2]}) == freeze({"a": [1, 2]}) != freeze({"a": (1, 2)})
    assert freeze(torch.tensor([1.0, 2.0])) == freeze(torch.tensor([1.0, 2.0])) != freeze(torch.tensor([1.0, 2.5]))
    assert freeze(object()) is None and freeze({"f": lambda: 0}) is None


def test_a_custom_sampler_callable_gets_its_own_plan() -> None:
    seen = []

    def custom(denoiser, x, plan, **kw):  # type: ignore[no-untyped-def]
        seen.append(plan)
        return x

    diffcore.sample(_model, X, sampler=custom, steps=4)
    diffcore.sample(_model, X, sampler=custom, steps=4)
    assert seen[0] is not seen[1] and plan_cache.key_of(seen[0]) is None
    assert plan_cache.cache_info()["plans"]["size"] == 0


def test_the_start_noise_check_still_refuses_nan_and_accepts_huge_finite_values() -> None:
    bad = X.clone()
    bad[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        diffcore.sample(_model, bad, sampler="ddim", steps=2)
    huge = torch.full((2, 4), 3e38)  # its float32 sum overflows, yet every element is finite
    out = diffcore.sample(lambda x, t: torch.zeros_like(x), huge, sampler="ddim", steps=2, check_finite=False)
    assert out.shape == huge.shape


def test_sample_from_mixed_starts_uses_the_cache_and_matches() -> None:
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    starts = torch.tensor([200.0, 500.0, 200.0, 800.0])
    kw = {"sampler": "ddim", "steps": 5, "seed": 2}
    first = diffcore.sample_from(_model, x0, starts, **kw)  # type: ignore[arg-type]
    again = diffcore.sample_from(_model, x0, starts, **kw)  # type: ignore[arg-type]
    assert plan_cache.cache_info()["plans"]["hits"] == 3
    assert torch.equal(first, again)


def test_a_model_writing_into_its_times_does_not_poison_the_cache() -> None:
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        t.add_(1)  # in place, into the (cached) time tensor
        return 0.3 * x

    diffcore.sample(model, X, sampler="ddim", steps=3)
    first = list(seen)
    seen.clear()
    diffcore.sample(model, X, sampler="ddim", steps=3)
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(first, seen))


def test_each_batch_size_gets_its_own_times() -> None:
    full = _sample()  # fills the cache for a batch of 3
    two = diffcore.sample(_model, X[:2], sampler="ddim", steps=6, schedule="linear")
    assert torch.equal(two, full[:2])  # samples are independent of their batch


def test_a_truncated_img2img_run_is_cached_under_its_start() -> None:
    first = _sample(start=2)
    again = _sample(start=2)
    other = _sample(start=3)
    info = plan_cache.cache_info()
    assert info["programs"]["hits"] == 1 and info["programs"]["misses"] == 2
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(other, _uncached(start=3))


def test_pooled_history_starts_at_zero_and_nested_runs_get_their_own() -> None:
    """History buffers are pooled per thread (issue #20): a reused one is zeroed, and a run
    inside a model call (the outer run holds its buffer) gets another."""
    kw = {"sampler": "unipc", "steps": 6, "schedule": "linear", "sampler_options": {"order": 3}}
    alone = diffcore.sample(_model, X, **kw)  # type: ignore[arg-type]
    inner: list[torch.Tensor] = []

    def nesting(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inner.append(diffcore.sample(_model, X, **kw))  # type: ignore[arg-type]
        return _model(x, t)

    outer = diffcore.sample(nesting, X, **kw)  # type: ignore[arg-type]
    assert torch.equal(outer, alone) and all(torch.equal(i, alone) for i in inner)
    assert not torch.equal(alone, _uncached(**{**kw, "sampler_options": {"order": 2}}))
    assert torch.equal(diffcore.sample(_model, X, **kw), alone)  # type: ignore[arg-type]


def test_the_direct_cpu_kernels_give_the_ops_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eager CPU loop calls the extension's direct entry points; torch.ops gives the same bits."""
    from diffcore import ops

    if ops.backend("cpu") != "native-cpu":
        pytest.skip("no native CPU kernels")
    direct = ops.step_kernels("cpu")
    assert direct[0] is not torch.ops.diffcore.sampler_step
    runs = {}
    for name in ("direct", "ops"):
        if name == "ops":
            pairs = (torch.ops.diffcore.sampler_step, torch.ops.diffcore.cfg_sampler_step)
            monkeypatch.setattr(ops, "step_kernels", lambda device, pairs=pairs: pairs)
        runs[name] = [
            _sample(sampler="dpmpp_2m_sde", seed=4),
            diffcore.sample(_cond_model, X, sampler="unipc", steps=6, guidance_scale=3.0, cond=torch.arange(3.0)),
            _sample(sampler="euler_ancestral", generator=torch.Generator().manual_seed(5)),
        ]
    assert all(torch.equal(a, b) for a, b in zip(runs["direct"], runs["ops"]))


def test_flags_left_set_by_a_failed_run_do_not_reach_the_next() -> None:
    """The per-step flags are pooled and zeroed only when a run may have left one set: a run that
    flagged a NaN and then raised before its check must not make the next run fail."""
    calls = {"n": 0}

    def failing(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("model broke")
        return x * float("nan") if calls["n"] == 2 else _model(x, t)

    from diffcore.samplers import flags

    flags._pool.__dict__.pop("free", None)  # the failing run gets a new flag buffer
    with pytest.raises(RuntimeError, match="model broke"):
        diffcore.sample(failing, X, sampler="ddim", steps=6)  # step 1 flagged, never checked
    clean = _sample()  # the same pooled flags: must not report step 1
    assert torch.equal(clean, _uncached())
    with pytest.raises(FloatingPointError, match="step 0"):
        diffcore.sample(lambda x, t: x * float("nan"), X, sampler="ddim", steps=6)
    assert torch.equal(_sample(), clean)

"""Bad op calls found by the fault probe (issue: reliability) raise instead of returning garbage,
on the native and the reference backend alike."""

from __future__ import annotations

import pytest
import torch

from diffcore import ops
from diffcore.ops import reference

BACKENDS = ["native", "reference"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch) -> str:
    if request.param == "native" and ops.backend("cpu") == "reference":
        pytest.skip("native kernels not built")
    monkeypatch.setenv("DIFFCORE_KERNELS", request.param)
    return request.param


def test_rescale_of_a_zero_spread_output_is_one_not_nan(backend: str) -> None:
    """A fresh model that outputs exactly 0 made guidance rescale divide 0 by 0 (all-NaN images)."""
    u, c = torch.zeros(3, 16), torch.zeros(3, 16)
    c[1] = torch.linspace(-1, 1, 16)  # sample 1 has spread, its guided output too
    r = ops.cfg_rescale_factor(u, c, 5.0, 0.7)
    assert torch.isfinite(r).all() and r[0] == 1 and r[2] == 1
    expected = 0.7 * c[1].std() / (5.0 * c[1]).std() + 0.3
    torch.testing.assert_close(r[1], expected)
    torch.testing.assert_close(reference.cfg_rescale_factor(u, c, torch.tensor(5.0), 0.7), r)


def test_meta_mixed_with_cpu_raises() -> None:
    if ops.backend("cpu") == "reference":
        pytest.skip("raw native ops not built")
    u = torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match="one device"):
        torch.ops.diffcore.cfg_rescale_factor(u.to("meta"), u, torch.tensor(2.0), 0.5)
    with pytest.raises(RuntimeError, match="one device"):
        torch.ops.diffcore.forward_noise(u.to("meta"), u, torch.zeros(2, dtype=torch.long), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="scale is on meta"):
        ops.cfg_rescale_factor(u, u, torch.tensor(2.0, device="meta"), 0.5)


def _width(slots: int, writes: int) -> int:
    return ops.coeff_width(slots, writes)


def test_x_aliasing_history_is_refused(backend: str) -> None:
    history = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="shares memory with history"):
        ops.sampler_step(history[1], torch.randn(3, 4), torch.zeros(_width(2, 1)), history, None, [1])


def test_stride_zero_history_is_refused(backend: str) -> None:
    x = torch.randn(3, 4)
    history = torch.zeros(3, 4).expand(2, 3, 4)
    with pytest.raises(ValueError, match="overlapping memory"):
        ops.sampler_step(x, x.clone(), torch.zeros(_width(2, 1)), history, None, [0])


def test_in_place_on_a_leaf_that_requires_grad_raises_like_torch(backend: str) -> None:
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad"):
        ops.sampler_step(x, torch.randn(3, 4), torch.zeros(_width(0, 0)))
    with torch.no_grad():
        ops.sampler_step(x, torch.randn(3, 4), torch.zeros(_width(0, 0)))  # allowed, as for torch's own ops


def test_both_backends_enforce_the_same_history_limit(backend: str) -> None:
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="at most 4"):
        ops.sampler_step(x, x.clone(), torch.zeros(_width(5, 0)), torch.zeros(5, 3, 4))


def test_raw_native_op_checks_aliasing_and_leaves() -> None:
    if ops.backend("cpu") == "reference":
        pytest.skip("raw native ops not built")
    history = torch.zeros(2, 3, 4)
    with pytest.raises(RuntimeError, match="shares memory"):
        torch.ops.diffcore.sampler_step(
            history[0], torch.randn(3, 4), torch.zeros(_width(2, 1)), history, None, [0], -1, 0
        )
    with pytest.raises(RuntimeError, match="overlapping memory"):
        torch.ops.diffcore.sampler_step(
            torch.randn(3, 4),
            torch.randn(3, 4),
            torch.zeros(_width(2, 1)),
            torch.zeros(3, 4).expand(2, 3, 4),
            None,
            [0],
            -1,
            0,
        )
    leaf = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad"):
        torch.ops.diffcore.sampler_step(leaf, torch.randn(3, 4), torch.zeros(_width(0, 0)), None, None, [], -1, 0)


@pytest.mark.parametrize(
    "x, scale, error, match",
    [
        (torch.arange(6).reshape(2, 3), 1.0, TypeError, "floating-point torch.Tensor, got torch.int64"),
        ([[0.0, 1.0]], 1.0, TypeError, "got list"),
        (torch.ones(2, 3), float("nan"), ValueError, "scale=nan must be a finite number"),
        (torch.ones(2, 3), float("inf"), ValueError, "scale=inf"),
        (torch.ones(2, 3), True, ValueError, "scale=True"),
        (torch.ones(2, 3), "2", ValueError, "scale='2'"),
    ],
)
def test_start_state_refuses_what_it_cannot_scale(backend: str, x, scale, error, match) -> None:
    """ops.start_state: an integer tensor was cloned on one backend and refused in C++ on the other;
    a NaN scale gave an all-NaN start state reported as finite."""
    with pytest.raises(error, match=match):
        ops.start_state(x, scale)

"""Noise levels as the tasks name them, on discrete, EDM and flow schedules alike.

A task speaks of a *fraction* of the schedule (SDEdit's strength, a reconstruction depth, the
diffusion-time score of DTE), of a *model time* (what :func:`diffcore.sample_from` starts from)
and of a VE noise level ``sigma = std / alpha`` (a noisy image's noise std, DTE's grid). This
module converts between them:

- discrete schedules: the fraction f is the training timestep ``f (T - 1)``, the VE sigma of a
  fractional timestep the piecewise-linear interpolation of the training sigmas;
- EDM schedules: the fraction is the position on the Karras ramp (rho) from sigma_min to sigma_max,
  and the model time is sigma;
- flow schedules (``x_t = (1 - t) x0 + t eps``): the fraction u is the flow time before the
  schedule's shift, ``t = s u / (1 + (s - 1) u)`` (as a flow schedule's training index k is
  ``shift((k + 1) / T)``), the model time is ``t T`` and the VE sigma ``t / (1 - t)``. Times stop
  at :data:`FLOW_T_MAX` = 1 - 1e-6 (where diffusers' UniPC flow grid starts): fraction 1 is pure
  noise up to 1e-6 of the input, and every sampler can start there (at t = 1, sigma is infinite).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffcore.schedules import DiscreteSchedule, EDMSchedule, FlowSchedule, Schedule, flow_time, shift_times

__all__ = ["FLOW_T_MAX", "fraction_of_sigma", "fraction_to_time", "max_time", "sigma_at_time", "sigma_range"]

FLOW_T_MAX = 1 - 1e-6


def _flow_shift(schedule: FlowSchedule) -> float:
    """The shift the schedule's training times take: 1 under dynamic shifting without mu (the
    unshifted times, as :meth:`FlowSchedule.train_times`), else the effective shift."""
    return 1.0 if schedule.use_dynamic_shifting and schedule.mu is None else schedule.effective_shift()


def _discrete(schedule: Schedule) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"expected a discrete, EDM or flow schedule, got {type(schedule).__name__}")
    return schedule


def fraction_to_time(schedule: Schedule, fraction: Tensor) -> Tensor:
    """Model time (float64) of each fraction in (0, 1] of the schedule (see the module docstring):
    ``f (T - 1)`` on a discrete schedule; the sigma at that fraction of the Karras ramp from
    sigma_min to sigma_max on an EDM schedule; ``min(shift(f), FLOW_T_MAX) T`` on a flow schedule."""
    fraction = torch.as_tensor(fraction, dtype=torch.float64)
    if isinstance(schedule, EDMSchedule):
        lo, hi, rho = schedule.sigma_min ** (1 / schedule.rho), schedule.sigma_max ** (1 / schedule.rho), schedule.rho
        sig = (lo + fraction * (hi - lo)) ** rho
        return torch.maximum(sig, torch.full_like(sig, schedule.sigma_min * (1 + 1e-6)))
    if isinstance(schedule, FlowSchedule):
        times = shift_times(fraction, _flow_shift(schedule)).clamp(max=FLOW_T_MAX)
        return times * schedule.num_train_timesteps
    return fraction * (_discrete(schedule).num_train_timesteps - 1)


def fraction_of_sigma(schedule: Schedule, sigma: Tensor) -> Tensor:
    """The fraction of the schedule (in [0, 1]) at VE ``sigma``: the inverse of
    :func:`fraction_to_time` (a discrete schedule's fractional timestep by log-sigma
    interpolation, over T - 1)."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if isinstance(schedule, EDMSchedule):
        lo, hi = schedule.sigma_min ** (1 / schedule.rho), schedule.sigma_max ** (1 / schedule.rho)
        return ((sigma ** (1 / schedule.rho) - lo) / (hi - lo)).clamp(0, 1)
    if isinstance(schedule, FlowSchedule):
        s, t = _flow_shift(schedule), flow_time(sigma)
        return (t / (s - (s - 1) * t)).clamp(0, 1)  # the inverse of shift_times
    return schedule.sigma_to_t(sigma) / (_discrete(schedule).num_train_timesteps - 1)


def max_time(schedule: Schedule) -> float:
    """The largest model time a task starts from: ``T - 1`` on a discrete schedule, ``FLOW_T_MAX T``
    on a flow schedule."""
    if isinstance(schedule, FlowSchedule):
        return FLOW_T_MAX * schedule.num_train_timesteps
    return float(_discrete(schedule).num_train_timesteps - 1)


def sigma_at_time(schedule: Schedule, t: float) -> float:
    """The VE sigma at model time ``t``: the linear interpolation of a discrete schedule's training
    sigmas at fractional timestep t, sigma itself on EDM, ``t' / (1 - t')`` with ``t' = t / T`` on
    flow (inf at t = T)."""
    if isinstance(schedule, EDMSchedule):
        return float(t)
    if isinstance(schedule, FlowSchedule):
        frac = t / schedule.num_train_timesteps
        return math.inf if frac >= 1 else frac / (1 - frac)
    train = _discrete(schedule).train_sigmas()
    lo = min(int(t), train.shape[0] - 2)
    return float(train[lo] + (t - lo) * (train[lo + 1] - train[lo]))


def sigma_range(schedule: Schedule) -> tuple[float, float]:
    """The smallest and largest VE sigma the model was trained at: a discrete schedule's first and
    last training sigma, EDM's sigma_min and sigma_max, a flow schedule's first training level
    ``shift(1 / T)`` and infinity (t = 1)."""
    if isinstance(schedule, EDMSchedule):
        return float(schedule.sigma_min), float(schedule.sigma_max)
    if isinstance(schedule, FlowSchedule):
        first = fraction_to_time(schedule, torch.tensor(1.0 / schedule.num_train_timesteps))
        t = float(first) / schedule.num_train_timesteps
        return t / (1 - t), math.inf
    train = _discrete(schedule).train_sigmas()
    return float(train[0]), float(train[-1])

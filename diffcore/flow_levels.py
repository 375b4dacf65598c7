"""Where the sampling times of a flow schedule sit: the grids of diffusers' flow schedulers, then
the schedule's ``shift_terminal`` and ``sigma_spacing`` (spacings in flow time t, see
:class:`diffcore.schedules.FlowSchedule`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffcore.schedules import FlowSchedule, shift_times, stretch_to_terminal
from diffcore.sigmas import BETWEEN_ENDS, ON_TRAINING_GRID, between_ends, grid_indices

FLOW_GRIDS = ("euler", "dpm", "unipc")


def _flow_shifted(schedule: FlowSchedule, u: np.ndarray, grid: str) -> np.ndarray:
    """Shift sampling times ``u``, in the float64 operation order of the scheduler of ``grid``
    (so DPM/UniPC timesteps truncate to the same integers as diffusers')."""
    s = schedule.effective_shift()
    if schedule.use_dynamic_shifting and grid != "dpm":  # FlowMatchEuler's and UniPC's time_shift(mu, 1, u)
        with np.errstate(divide="ignore"):
            return s / (s + (1 / u - 1))
    return s * u / (1 + (s - 1) * u)


def flow_times(schedule: FlowSchedule, n: int, grid: str = "euler", *, uniform: bool = False) -> tuple[Tensor, bool]:
    """The ``n`` descending sampling times t of a flow schedule as a diffusers flow scheduler
    places them, and whether its model sees ``t * num_train_timesteps`` truncated to an integer.

    ``euler``: FlowMatchEulerDiscreteScheduler, ``linspace(1, t_min, n)`` with t_min the shifted
    last training time (1 / T under dynamic shifting), then shifted; ``dpm``:
    DPMSolverMultistepScheduler(use_flow_sigmas), the shifted ``1 - linspace(1, 1/T, n + 1)``
    without its 0; ``unipc``: UniPCMultistepScheduler(use_flow_sigmas), the shifted first n of
    ``linspace(1, 1/T, n + 1)`` with a first time of 1 moved to ``1 - 1e-6``. Then
    ``shift_terminal`` and the schedule's ``sigma_spacing``: between the first and last time, or
    on the shifted training grid (:func:`flow_grid_times`) with a first time no higher than the
    grid's (DPM's and UniPC's solvers need a finite first sigma, so theirs is below 1).
    ``uniform`` (``timestep_spacing="trailing"``) replaces the ``euler`` grid by evenly spaced
    times ``1 - i / n`` that end the run exactly at t = 0 (the Euler grid of rectified flow, Liu
    et al. 2023): diffusers' ``linspace(1, 1/T, n)`` spends one of ``n`` steps going from 1/T to 0.
    """
    if grid not in FLOW_GRIDS:
        raise ValueError(f"flow grid {grid!r}: expected one of {FLOW_GRIDS}")
    T = schedule.num_train_timesteps
    if grid == "euler" and uniform:
        u = np.linspace(1.0, 0.0, n + 1)[:-1]
    elif grid == "euler":
        t_min = 1 / T if schedule.use_dynamic_shifting else float(shift_times(torch.tensor(1 / T), schedule.shift))
        u = np.linspace(1.0 * T, t_min * T, n) / T
    elif grid == "dpm":
        u = (1.0 - np.linspace(1, 1 / T, n + 1))[::-1][:-1]
    else:
        u = np.linspace(1, 1 / T, n + 1)[:-1]
    t = _flow_shifted(schedule, np.ascontiguousarray(u), grid)
    if schedule.shift_terminal:
        t = stretch_to_terminal(torch.from_numpy(t), schedule.shift_terminal).numpy()
    if grid == "unipc" and abs(t[0] - 1) < 1e-6:
        t[0] -= 1e-6
    times = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float64))
    if schedule.sigma_spacing in ON_TRAINING_GRID:  # no higher than the grid's first time (DPM, UniPC: below 1)
        grid_times = flow_grid_times(schedule, n)
        grid_times[0] = min(float(grid_times[0]), float(times[0]))
        times = grid_times
    elif schedule.sigma_spacing != "timesteps":
        times = flow_spaced_times(schedule, float(times[-1]), float(times[0]), n)
    return times, grid != "euler"


def flow_grid_times(schedule: FlowSchedule, n: int) -> Tensor:
    """``simple`` / ``sgm_uniform`` on a flow schedule: the shifted training times
    ``shift((k + 1) / T)`` at the grid's (fractional) training index k (index k of a flow
    schedule is time (k + 1) / T before the shift, as its training levels are), then
    ``shift_terminal``."""
    T = schedule.num_train_timesteps
    if schedule.sigma_spacing == "simple" and n > T:
        raise ValueError(f"steps={n} exceeds num_train_timesteps={T}: simple picks distinct training levels")
    u = (grid_indices(schedule.sigma_spacing, T, n) + 1) / T
    times = shift_times(u, schedule.effective_shift())
    if schedule.shift_terminal:
        times = stretch_to_terminal(times, schedule.shift_terminal)
    return times


def flow_spaced_times(schedule: FlowSchedule, lo: float, hi: float, n: int) -> Tensor:
    """n flow times from ``hi`` down to ``lo`` in the schedule's ``sigma_spacing``, one of
    :data:`diffcore.sigmas.BETWEEN_ENDS` (karras, exponential, beta, kl_optimal)."""
    if schedule.sigma_spacing not in BETWEEN_ENDS:
        raise ValueError(f"sigma_spacing={schedule.sigma_spacing!r} is not a spacing between two ends")
    return between_ends(schedule.sigma_spacing, lo, hi, n, schedule.rho)

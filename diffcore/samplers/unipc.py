"""UniPC (Zhao et al. 2023, "UniPC", Alg. 1-2 with B(h) = e^h - 1, "bh2"), data prediction.

Each step first applies the corrector UniC to the current point, using the model output just
computed there (no extra evaluation), then the predictor UniP of order p to the next level.
The corrected point is kept in a history slot because the next corrector starts from it.
Order schedule and ``lower_order_final`` follow diffusers' UniPCMultistepScheduler; the
rho coefficients solve the same small linear systems (eq. 8 of the paper) in float64.
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import ProgramSampler
from diffcore.samplers.program import Cols, Program, Step, lam, level_of
from diffcore.timesteps import Plan


def _b_vector(h: float, order: int) -> tuple[np.ndarray, float, float]:
    """(b, h_phi_1, B_h) of UniPC-bh2 for step size h in lambda (data prediction: hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = h_phi_1
    b = []
    factorial = 1.0
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.array(b), h_phi_1, b_h


def _update(cols: Cols, x_col: np.ndarray, x0_cols: list[np.ndarray], lams: list[float], lam_to: float,
            alpha_to: float, std_to: float, std_from: float, order: int, corrector: bool,
            x0_new: np.ndarray | None = None) -> np.ndarray:
    """Row of UniP (``corrector=False``) or UniC over the columns.

    ``x0_cols[k]`` is the column vector of the model output at ``lams[k]`` (k=0 the step start);
    ``x0_new`` (corrector only) is the output at the step end.
    """
    h = lam_to - lams[0]
    b, h_phi_1, b_h = _b_vector(h, order)
    rks = [(lams[k] - lams[0]) / h for k in range(1, order)]
    d1s = [(x0_cols[k] - x0_cols[0]) / rks[k - 1] for k in range(1, order)]
    ratio = 0.0 if std_to == 0.0 else std_to / std_from
    out = ratio * x_col - alpha_to * h_phi_1 * x0_cols[0]
    if corrector:
        assert x0_new is not None
        if order == 1:
            rhos = np.array([0.5])
        else:
            r = np.array([[rk ** (i - 1) for rk in rks + [1.0]] for i in range(1, order + 1)])
            rhos = np.linalg.solve(r, b)
        res = sum((rhos[k] * d1s[k] for k in range(order - 1)), np.zeros(cols.width))
        return out - alpha_to * b_h * (res + rhos[-1] * (x0_new - x0_cols[0]))
    if order == 1:
        return out
    if order == 2:
        rhos = np.array([0.5])
    else:
        r = np.array([[rk ** (i - 1) for rk in rks + [1.0]] for i in range(1, order + 1)])
        rhos = np.linalg.solve(r[:-1, :-1], b[:-1])
    res = sum((rhos[k] * d1s[k] for k in range(order - 1)), np.zeros(cols.width))
    return out - alpha_to * b_h * res


def _unipc(plan: Plan, order: int, lower_order_final: bool) -> Program:
    if not isinstance(order, int) or not 1 <= order <= 3:
        raise ValueError(f"unipc: order={order!r} must be an integer in [1, 3]")
    n = plan.steps
    slots = order + 1  # x0 history (order slots) + the corrected point
    last_slot = order
    cols = Cols(slots)
    prog = Program(slots=slots)
    lams = [lam(*plan.level(i)) for i in range(n)]
    ring: list[int] = []  # slots of x0_{i-1}, x0_{i-2}, ... (newest first)
    prev_order = 0
    for i in range(n):
        alpha, std = plan.level(i)
        alpha_to, std_to = plan.target(i)
        this_order = min(order, i + 1, n - i if lower_order_final else order)
        if std_to == 0.0:  # lambda' = inf: only the first-order update is defined
            this_order = 1
        x0_cur = cols.unit(cols.x0)
        hist = [cols.unit(cols.h(s)) for s in ring]
        if i == 0:
            x_c = cols.unit(cols.x)
        else:  # corrector from the previous step's start (slot last_slot) to this level
            prev_alpha, prev_std = plan.level(i - 1)
            x_c = _update(cols, cols.unit(cols.h(last_slot)), hist[:prev_order], lams[i - 1 :: -1][:prev_order],
                          lams[i], alpha, std, prev_std, prev_order, True, x0_cur)
        x0_list = [x0_cur] + hist[: this_order - 1]
        lam_list = [lams[i - k] for k in range(this_order)]
        x_next = _update(cols, x_c, x0_list, lam_list, lam(alpha_to, std_to), alpha_to, std_to, std, this_order, False)
        rows, writes = [x_next], []
        if i < n - 1:
            slot = ring[-1] if len(ring) == order else len(ring)
            rows.append(x0_cur)
            writes.append(slot)
            rows.append(x_c)
            writes.append(last_slot)
            ring = [slot] + [s for s in ring if s != slot]
        prog.steps.append(Step(level_of(plan, i), np.stack(rows), writes=tuple(writes), sigma=float(plan.sigmas[i + 1])))
        prev_order = this_order
    return prog


unipc = ProgramSampler(
    "unipc",
    _unipc,
    plan_style="dpm",
    options={"order": 2, "lower_order_final": True},
    doc="UniPC-bh2 predictor-corrector (Zhao et al. 2023), data prediction.",
)

"""Linear multistep (Adams-Bashforth in sigma) on the probability-flow ODE, as in k-diffusion and
diffusers' LMSDiscreteScheduler: ``x' = x + sum_j c_j d_{i-j}`` (VE units) where ``c_j`` integrates
the Lagrange basis polynomial of the last ``order`` sigmas over [s_i, s_{i+1}]. The integral is
computed exactly from polynomial coefficients (no numerical quadrature); the first steps warm up
with orders 1, 2, 3.
"""

from __future__ import annotations

import math

import numpy as np

from diffcore.samplers.base import program_sampler
from diffcore.samplers.builder import Builder


def lagrange_basis(nodes: list[float]) -> list[np.polynomial.Polynomial]:
    """The Lagrange basis polynomials l_j of ``nodes`` (l_j(nodes[k]) = [j == k])."""
    basis = []
    for j, vj in enumerate(nodes):
        poly = np.polynomial.Polynomial([1.0])
        for k, vk in enumerate(nodes):
            if k != j:
                poly = poly * np.polynomial.Polynomial([-vk, 1.0]) / (vj - vk)
        basis.append(poly)
    return basis


def lms_coefficients(sigmas: list[float], s_from: float, s_to: float) -> np.ndarray:
    """c_j = integral over [s_from, s_to] of the Lagrange basis polynomial l_j of ``sigmas``
    (``sigmas[0]`` is the newest node)."""
    return np.array([(a := poly.integ())(s_to) - a(s_from) for poly in lagrange_basis(sigmas)])


@program_sampler("lms", plan_style="karras", order=4)
def lms(b: Builder, order: int) -> None:
    """Linear multistep of order <= 4 in sigma (k-diffusion / diffusers LMSDiscrete)."""
    if not isinstance(order, int) or not 1 <= order <= 4:
        raise ValueError(f"lms: order={order!r} must be an integer in [1, 4]")
    ds = b.history(order - 1) if order > 1 else None  # d_{i-1}, d_{i-2}, ...
    known = 0  # levels behind this one whose d is a node (sigma = inf, pure noise, is none)
    for i in range(b.steps):
        p = b.model(i)
        if math.isinf(p.sigma):  # zero SNR / flow t = 1: the exact first-order step, x0 + s' d
            b.update(p.x0 + p.sigma_to * p.d)
            continue
        c = lms_coefficients([b.sigma(i - j) for j in range(min(known, order - 1) + 1)], p.sigma, p.sigma_to)
        x_next = p.x + c[0] * p.d + sum(c[j] * ds[j - 1] for j in range(1, len(c)))  # type: ignore[index]
        if ds is not None:
            ds.push(p.d)
        known += 1
        b.update(x_next)

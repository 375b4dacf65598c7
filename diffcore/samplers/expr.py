"""Linear expressions over the quantities a fused sampler step can combine.

A sampler step is linear in the state ``x``, the model's ``x0`` estimate, the history slots and
the step's standard-normal noise ``z``. :class:`Expr` holds such a combination with float64
coefficients and supports ``+``, ``-``, ``*`` and ``/`` by numbers, so a sampler reads like its
paper: ``p.x0 + s_down * p.d + s_up * noise``.
"""

from __future__ import annotations

Term = str | int  # "x", "x0", "z", or a history slot index
Scalar = int | float


class Expr:
    """``sum(coeff * term)`` over state terms; ``step`` is the model evaluation the ``x``/``x0``
    terms belong to (None when the expression holds only history and noise)."""

    __slots__ = ("terms", "step")
    __array_ufunc__ = None  # numpy scalars defer to Expr's reflected operators

    def __init__(self, terms: dict[Term, float], step: int | None = None) -> None:
        self.terms = terms
        self.step = step

    def _owner(self, other: Expr) -> int | None:
        if self.step is not None and other.step is not None and self.step != other.step:
            raise ValueError(
                f"an expression mixes the x/x0 of model evaluation {self.step} and {other.step}; carry "
                "earlier values across evaluations in a History"
            )
        return self.step if self.step is not None else other.step

    def __add__(self, other: Expr | Scalar) -> Expr:
        if isinstance(other, (int, float)) and other == 0:  # lets sum() start from 0
            return self
        if not isinstance(other, Expr):
            return NotImplemented
        terms = dict(self.terms)
        for k, v in other.terms.items():
            terms[k] = terms.get(k, 0.0) + v
        return Expr(terms, self._owner(other))

    __radd__ = __add__

    def __neg__(self) -> Expr:
        return self * -1.0

    def __sub__(self, other: Expr) -> Expr:
        return self + (-other)

    def __rsub__(self, other: Expr) -> Expr:
        return other + (-self)

    def __mul__(self, c: Scalar) -> Expr:
        if not isinstance(c, (int, float)):
            return NotImplemented
        return Expr({k: float(c) * v for k, v in self.terms.items()}, self.step)

    __rmul__ = __mul__

    def __truediv__(self, c: Scalar) -> Expr:
        return self * (1.0 / c)

    def __repr__(self) -> str:
        body = " + ".join(f"{v:.6g}*{k if isinstance(k, str) else f'h{k}'}" for k, v in self.terms.items())
        return f"Expr({body or '0'})"

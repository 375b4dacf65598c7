"""The tabular anomaly detector's defaults, in one place (issue #19).

:class:`diffcore.DiffusionDetector`, ``diffcore detect`` and ``diffcore train --dataset tabular``
read them from here. They are chosen on the development half of
``benchmarks/quality/tabular_suite.py`` by the rule written in that module's docstring (and the
README's "Tabular anomaly suite" section) and reported on its held-out half.

The default score, ``"mahalanobis"``, whitens the signed reconstruction residuals by their mean
and covariance on the training rows; those statistics are computed once at ``fit`` (the rows
themselves are not needed at scoring time; ``diffcore detect`` needs them as ``--reference``).

- ``METHOD``: the score: ``"recon"`` (reconstruction error), ``"mahalanobis"``, ``"dte"``,
  ``"dte_np"`` or ``"dte_c"`` (see :mod:`diffcore.detector`);
- ``ERROR``: ``recon``'s per-feature error, ``"abs"`` or ``"squared"``;
- ``DEPTHS``: the noise depths (fractions of the schedule) of the one-shot reconstructions;
- ``REPEATS``: noise draws per depth;
- ``SCALING``: the column scaling of :class:`~diffcore.tasks.anomaly.tables.TableScaler`.
"""

from __future__ import annotations

__all__ = ["DEPTHS", "ERROR", "METHOD", "REPEATS", "SCALING"]

# chosen by the rule on the development half (benchmarks/results/tabular_suite.md, 3 seeds): among the
# candidates within 0.05 AUROC of the best baseline on every development setting (recon abs/squared,
# mahalanobis, dte_np, recon_dte_np), the best development rank: mahalanobis 4.21, recon abs 4.86
METHOD = "mahalanobis"
ERROR = "abs"
DEPTHS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
REPEATS = 16
SCALING = "robust"

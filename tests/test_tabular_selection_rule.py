"""The tabular suite's default-selection rule (issue #19): development settings only, the 0.05 gap
filter first, then development rank among all methods, ties to the higher development AUROC."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not an installed package
suite = pytest.importorskip("benchmarks.quality.tabular_suite")


def _auc() -> dict[str, dict[str, float]]:
    return {
        "a": {"diffcore_x": 0.99, "diffcore_y": 0.90, "diffcore_z": 0.95, "knn": 0.96},
        "b": {"diffcore_x": 0.80, "diffcore_y": 0.97, "diffcore_z": 0.94, "knn": 0.96},
        "held": {"diffcore_x": 0.10, "diffcore_y": 1.00, "diffcore_z": 0.10, "knn": 0.50},
    }


def test_gap_filter_beats_rank() -> None:
    """x ranks best on 'a' but is 0.16 below kNN on 'b': z, within 0.05 everywhere, is chosen."""
    auc = _auc()
    choice = suite.choose_default(auc, list(auc["a"]), ["a", "b"])
    assert choice["within"] == ["diffcore_z"] and choice["chosen"] == "diffcore_z"


def test_heldout_settings_do_not_enter() -> None:
    auc = _auc()
    only_a = suite.choose_default(auc, list(auc["a"]), ["a"])
    assert only_a["chosen"] == "diffcore_x"  # 'held' favours y; it is not a development setting
    auc["held"]["diffcore_x"] = 0.0
    assert suite.choose_default(auc, list(auc["a"]), ["a"]) == only_a


def test_no_candidate_within_gap_falls_back_to_all_and_ties_go_to_higher_auroc() -> None:
    auc = {
        "a": {"diffcore_x": 0.70, "diffcore_y": 0.60, "knn": 0.99},
        "b": {"diffcore_x": 0.60, "diffcore_y": 0.80, "knn": 0.99},
    }
    choice = suite.choose_default(auc, list(auc["a"]), ["a", "b"])
    assert choice["within"] == []
    assert choice["ranks"]["diffcore_x"] == choice["ranks"]["diffcore_y"]  # 2.5 each
    assert choice["chosen"] == "diffcore_y"  # development mean 0.70 vs 0.65

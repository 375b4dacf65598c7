"""benchmarks/summarize_calls.py (issue #20's make-bench tables) on bad input: one line, no traceback."""

from __future__ import annotations

import json

import pytest

from benchmarks import summarize_calls


def test_summarize_calls_names_an_unreadable_or_foreign_json(tmp_path) -> None:
    with pytest.raises(SystemExit, match="cannot read a pytest-benchmark JSON: .*missing.json"):
        summarize_calls.main([str(tmp_path / "missing.json")])
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read a pytest-benchmark JSON"):
        summarize_calls.main([str(broken)])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"benchmarks": [{"extra_info": {"suite": "e2e"}, "stats": {"min": 1.0}}]}))
    with pytest.raises(SystemExit, match="no test_sample_call.py cases in it"):
        summarize_calls.main([str(other)])


def test_summarize_calls_reports_the_targets_of_a_run(tmp_path) -> None:
    """A two-case run (a 16K ddim call on both sides, its add floor, the clocked call) gives the
    ratio and the verdict lines from those numbers."""

    def case(info: dict, seconds: float) -> dict:
        return {"extra_info": {"suite": "calls", **info}, "stats": {"min": seconds, "median": seconds}}

    common = {"case": "call", "size": "16K", "sampler": "ddim", "stochastic": False, "steps": 20}
    report = {
        "machine_info": {"diffcore": {"torch": "t", "torch_threads": 1}},
        "benchmarks": [
            case({**common, "impl": "diffusers"}, 2e-3),
            case({**common, "impl": "diffcore", "tensors_streamed": 3, "iterations": 20, "working_set": 3}, 1e-4),
            case({"case": "add", "size": "16K", "tensors": 3, "adds": 20, "steps": 20}, 6e-5),
            case({"case": "clocked", "size": "16K", "setup_min_s": 4e-5, "step_min_s": 3.5e-6}, 1e-4),
        ],
    }
    path = tmp_path / "calls.json"
    path.write_text(json.dumps(report))
    text = summarize_calls.main([str(path), "--out", str(tmp_path / "calls.md")])
    assert "| 16K | ddim | 2,000 | 100 | 20.00x | 3 | 1.67x | 1.67x |" in text
    assert (
        "host work <= 10 us per step at 16K: 0.5 us" in text
        and "setup <= 100 us per 20-step call: 40.0 us — met" in text
    )
    assert "deterministic >= 10x diffusers at 16K: ddim 20.0x — met" in text
    assert (tmp_path / "calls.md").read_text() == text

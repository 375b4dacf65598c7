"""Load every malformed checkpoint of tests/checkpoint_corpus.py and print the tally.

    python benchmarks/faults/checkpoints.py [--verbose] [--json OUT]

Prints ``tried / clear error / raw exception / silently loaded`` (issue #18, finding 5: the
target is 0 raw and 0 silent); ``--verbose`` adds one line per variant with its message.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # the corpus lives with the tests

from checkpoint_corpus import counts, run_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="one line per variant")
    parser.add_argument("--json", type=Path, help="also write the verdicts and counts to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = run_corpus(Path(tmp))
    if args.verbose:
        for name, (verdict, message) in results.items():
            print(f"{verdict:6s}  {name:40s}  {message.replace(tmp, '<tmp>')[:160]}")
    tally = counts(results)
    print(
        f"malformed checkpoints: tried {tally['tried']}, clear error {tally['clear']}, "
        f"raw exception {tally['raw']}, silently loaded {tally['silent']}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"counts": tally, "verdicts": results}, indent=2) + "\n")
    return 0 if tally["raw"] == tally["silent"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

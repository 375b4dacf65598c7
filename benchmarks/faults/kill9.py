"""kill -9 during training, then resume: is the run intact and bit-identical to an uninterrupted one?

    python benchmarks/faults/kill9.py [--trials 15] [--steps 30] [--seed 0]

Each trial starts ``diffcore.train`` in a subprocess, kills it with SIGKILL once a random step
has been logged (so sometimes mid-checkpoint, sometimes before the first one), then runs it
again in a new process with ``resume=True`` (``overwrite=True`` when no checkpoint was written
yet: the error for that case must be a clear one). The folder's stale lock, temporary files and
records past the checkpoint must be handled, and the final weights must equal a run that was
never interrupted. Prints ``tried / bit-identical / clear error / traceback / silent wrong``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = """
import json, sys
import diffcore
out, steps, resume, overwrite = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "1"
tiny = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4], "groups": 8}
try:
    diffcore.train("digits", "unet", steps, out, dataset_options={"limit": 120}, model_config=tiny, batch_size=8,
                   log_every=1, checkpoint_every=5, warmup_steps=1, resume=resume, overwrite=overwrite)
except ValueError as exc:  # what the CLI prints as one line
    print(json.dumps({"error": str(exc)}))
    sys.exit(2)
"""


def _run(out: Path, steps: int, resume: bool = False, overwrite: bool = False) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", RUN, str(out), str(steps), str(int(resume)), str(int(overwrite))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(line).get("step", 0) for line in lines if line.endswith("}")]
    return max(steps, default=0)


def _weights(out: Path) -> dict:
    from diffcore.training.checkpoint import load_checkpoint

    tensors, _ = load_checkpoint(out / "checkpoint.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "ema.", "optim."))}


def trial(out: Path, steps: int, kill_at: int, reference: dict) -> tuple[str, str]:
    """Kill the run once step ``kill_at`` is logged, resume it, compare: (verdict, detail)."""
    proc = _run(out, steps)
    deadline = time.monotonic() + 300
    while proc.poll() is None and _logged(out) < kill_at and time.monotonic() < deadline:
        time.sleep(0.005)
    if proc.poll() is not None:
        return "not killed", f"finished before step {kill_at}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _run(out, steps, resume=True)
    _, err = resumed.communicate(timeout=600)
    restarted = resumed.returncode != 0
    if restarted:
        text = err.strip().splitlines()[-1] if err.strip() else ""
        if "Traceback" in err:
            return "traceback", text
        again = _run(out, steps, overwrite=True)  # no checkpoint yet: a clear error, then start afresh
        _, err2 = again.communicate(timeout=600)
        if again.returncode != 0:
            return "traceback" if "Traceback" in err2 else "clear error", err2.strip()[-200:]
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in records if "loss" in r]
    got = _weights(out)
    same = got.keys() == reference.keys() and all(bool((got[k] == reference[k]).all()) for k in got)
    if not same or leftovers or loss_steps != list(range(1, steps + 1)):
        return "silent wrong", f"identical={same} leftovers={leftovers} steps={loss_steps[:3]}..{loss_steps[-3:]}"
    return "bit-identical", "restarted: no checkpoint yet, a clear error on resume" if restarted else "resumed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    tally = {"tried": 0, "bit-identical": 0, "clear error": 0, "traceback": 0, "silent wrong": 0, "not killed": 0}
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        done = _run(ref, args.steps)
        if done.wait(timeout=600) != 0:
            print(done.stderr.read() if done.stderr else "", file=sys.stderr)
            return 1
        reference = _weights(ref)
        for i in range(args.trials):
            kill_at = rng.randint(1, args.steps - 1)
            verdict, detail = trial(Path(tmp) / f"trial{i}", args.steps, kill_at, reference)
            tally["tried"] += 1
            tally[verdict] += 1
            print(f"trial {i:2d}: kill after step {kill_at:2d}: {verdict} ({detail})", flush=True)
    print(
        f"kill -9 during training: tried {tally['tried']}, bit-identical after resume {tally['bit-identical']}, "
        f"clear error {tally['clear error']}, traceback {tally['traceback']}, silent wrong {tally['silent wrong']}, "
        f"finished before the kill {tally['not killed']}"
    )
    return 0 if tally["traceback"] == tally["silent wrong"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

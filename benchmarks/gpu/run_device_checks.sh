#!/usr/bin/env bash
# diffcore's checks on a CUDA machine, as ONE prepared run from the repository root:
#
#   bash benchmarks/gpu/run_device_checks.sh
#
# builds the CUDA extension, records the environment, runs the CUDA tests, the GPU benchmarks
# and compute-sanitizer's memcheck of the CUDA tests, then summarizes. Everything lands under
# $OUT (default: outputs/device):
#   status.txt       one line per stage: exit code (seconds used / allowed); 124/130/137 = cut at its limit
#   env.txt          nvidia-smi, Python / torch / CUDA versions, tool versions, the kernel backend check
#   build.log        wheel install (if .whl/ exists) and `pip install -e .` (the nvcc build)
#   cuda_tests.log   pytest tests/test_native.py
#   bench.log        the GPU benchmark runs (pytest output)
#   gpu_bench.json   the benchmarks, both stages merged (pytest-benchmark JSON)
#   gpu_summary.md   benchmarks/gpu/summarize_gpu.py's tables
#   memcheck.log     compute-sanitizer --tool memcheck on the CUDA tests
# The end-to-end stage (benchmarks/test_e2e_speed.py: diffusers UNets sampled by diffcore, eager and
# CUDA-graph, vs the diffusers pipeline loop; needs diffusers, carried as wheels in .whl/) logs to
# bench.log, its cases go into gpu_bench.json and its speedup table is appended to gpu_summary.md
# (the files that come back are capped at 8, so it adds none). The SD-class stage
# (benchmarks/gpu/test_gpu_sd.py: an SD-1.5-shaped conditional UNet, CFG, float16) does the same.
# The whole run keeps to DIFFCORE_DEVICE_BUDGET_S seconds (default 540): every stage has a cap
# and gets at most what is left of the budget; one that fails or is cut short is recorded and
# the next one runs. DIFFCORE_BENCH_SIZES=16K,1M,64M (say) restricts the benchmark sizes.
set -euo pipefail

OUT="${OUT:-outputs/device}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET_S="${DIFFCORE_DEVICE_BUDGET_S:-540}"
RESERVE_S=25  # kept for the final summary
START=$(date +%s)
WORK="$(mktemp -d)"
STATUS="$OUT/status.txt"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
echo "# stage: exit code (seconds used / seconds allowed); budget ${BUDGET_S}s" > "$STATUS"

left() { echo $(( START + BUDGET_S - $(date +%s) )); }

# stage NAME CAP_S LOG CMD...: run CMD (a program, or one of the functions below) for at most
# CAP_S seconds (less when the budget is short), output appended to LOG. SIGINT first, so pytest
# stops cleanly and writes its JSON; benchmarks/gpu/conftest.py also skips the tests that would
# start after DIFFCORE_BENCH_DEADLINE.
stage() {
  local name=$1 cap=$2 log=$3
  shift 3
  if declare -F "$1" >/dev/null; then set -- bash -c "$1"; fi  # timeout runs programs: exported functions via bash
  local allowed=$(( $(left) - RESERVE_S ))
  if (( allowed > cap )); then allowed=$cap; fi
  if (( allowed < 20 )); then
    echo "$name: skipped ($(left)s of the budget left)" >> "$STATUS"
    return 0
  fi
  local t0 rc=0
  t0=$(date +%s)
  echo "== $name (up to ${allowed}s): $*" >> "$log"
  DIFFCORE_BENCH_DEADLINE=$(( t0 + allowed - 20 )) timeout -s INT -k 10 "$allowed" "$@" >> "$log" 2>&1 || rc=$?
  echo "$name: $rc ($(( $(date +%s) - t0 ))s / ${allowed}s)" >> "$STATUS"
}

environment() {
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); torch.cuda.is_available() and print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))'
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|triton|diffusers|pytest|pytest-benchmark|numpy|scipy|setuptools|ninja) ' || true
  command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "nvcc: not on PATH"
  echo "compute-sanitizer: ${SANITIZER:-not found}"
}

install_wheels() {  # diffusers (and what it needs) carried as wheels in .whl/, when the machine lacks them
  if "$PY" -m pip install --no-index --no-deps .whl/*.whl; then return 0; fi
  echo "site install failed; installing into $WORK/site instead"
  "$PY" -m pip install --no-index --no-deps --target "$WORK/site" .whl/*.whl
}

build() {  # for this GPU's architecture only (torch's default list takes much longer to compile)
  local arch
  arch=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))') || arch=""
  if [[ -n $arch ]]; then export TORCH_CUDA_ARCH_LIST=$arch; fi
  echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-torch default}"
  MAX_JOBS="$(nproc)" "$PY" -m pip install -v --no-deps --no-build-isolation -e .
}

backend_check() {
  "$PY" -c 'from diffcore import ops; b = ops.backend("cuda"); print("diffcore.ops.backend(cuda) =", b, "| backend(cpu) =", ops.backend("cpu")); raise SystemExit(0 if b == "native-cuda" else "expected native-cuda, got " + b)'
}

summarize() {
  local jsons=()
  for f in "$WORK/core.json" "$WORK/compile.json" "$WORK/e2e.json" "$WORK/sd.json"; do [[ -s $f ]] && jsons+=("$f"); done
  if (( ${#jsons[@]} == 0 )); then echo "no benchmark JSON to summarize"; return 1; fi
  local rc=0
  "$PY" benchmarks/gpu/summarize_gpu.py "${jsons[@]}" --out "$OUT/gpu_summary.md" --merged-json "$OUT/gpu_bench.json" || rc=$?
  local e2e=()
  for f in "$WORK/e2e.json" "$WORK/sd.json"; do [[ -s $f ]] && e2e+=("$f"); done
  if (( ${#e2e[@]} > 0 )); then
    "$PY" benchmarks/summarize_e2e.py "${e2e[@]}" --out "$OUT/gpu_summary.md" --append || rc=$?
  fi
  return $rc
}

SANITIZER=$(command -v compute-sanitizer || true)
if [[ -z $SANITIZER && -x /usr/local/cuda/bin/compute-sanitizer ]]; then SANITIZER=/usr/local/cuda/bin/compute-sanitizer; fi
export OUT PY WORK SANITIZER
export -f environment install_wheels build backend_check summarize

stage env 30 "$OUT/env.txt" environment
if compgen -G ".whl/*.whl" >/dev/null; then
  stage wheels 60 "$OUT/build.log" install_wheels
  if [[ -d $WORK/site ]]; then export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"; fi
fi
stage build 300 "$OUT/build.log" build
stage backend 60 "$OUT/env.txt" backend_check
stage cuda_tests 120 "$OUT/cuda_tests.log" "$PY" -m pytest tests/test_native.py -q -rs -p no:cacheprovider
# the CUDA graph cache: a repeated sample(cuda_graph=True) replays, equal to eager
stage graphs_cuda 60 "$OUT/cuda_tests.log" "$PY" -m pytest tests/test_graphs.py -q -rs -k cuda -p no:cacheprovider
# diffusers interop: diffcore.sample(cuda_graph=True) of a diffusers UNet equals eager (skips without diffusers)
stage interop_cuda 60 "$OUT/cuda_tests.log" "$PY" -m pytest tests/test_interop_diffusers.py -q -rs -k cuda_graph \
  -p no:cacheprovider
# Benchmarks before memcheck: they are this run's main product; compile last (compilation is slow).
stage bench 200 "$OUT/bench.log" "$PY" -m pytest benchmarks/gpu -q -rs -p no:cacheprovider -k "not compile" \
  --benchmark-json="$WORK/core.json"
# End to end (issue #8): diffusers UNets, diffcore eager / cuda_graph vs the diffusers loop, 50 steps.
stage e2e 150 "$OUT/bench.log" "$PY" -m pytest benchmarks/test_e2e_speed.py -q -rs -p no:cacheprovider \
  --benchmark-json="$WORK/e2e.json"
# SD-class end to end (issue #15): an SD-1.5-shaped UNet2DConditionModel (random weights from its config),
# CFG 7.5, 50 steps, float16, batch 1 and 4, DDIM / DPM-Solver++ 2M; diffusers loop vs diffcore eager / cuda_graph.
stage sd_e2e 180 "$OUT/bench.log" "$PY" -m pytest benchmarks/gpu/test_gpu_sd.py -q -rs -p no:cacheprovider \
  --benchmark-json="$WORK/sd.json"
stage summary 30 "$OUT/bench.log" summarize
if [[ -n $SANITIZER ]]; then
  # No caching allocator: every tensor is its own cudaMalloc, so memcheck sees out-of-bounds accesses.
  stage memcheck 150 "$OUT/memcheck.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck \
    --error-exitcode 99 "$PY" -m pytest tests/test_native.py -q -k cuda -x -p no:cacheprovider
else
  echo "memcheck: skipped (compute-sanitizer not found)" >> "$STATUS"
fi
stage bench_compile 200 "$OUT/bench.log" "$PY" -m pytest benchmarks/gpu -q -rs -p no:cacheprovider -k compile \
  --benchmark-json="$WORK/compile.json"
RESERVE_S=0 stage summary 30 "$OUT/bench.log" summarize
echo "total: $(( $(date +%s) - START ))s" >> "$STATUS"
cat "$STATUS"

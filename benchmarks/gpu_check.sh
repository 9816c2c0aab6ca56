#!/usr/bin/env bash
# The GPU checks of issue 15 in one run, for a machine with a CUDA GPU (about 8 minutes
# at most on one H200; every part has its own time limit and runs even when an earlier
# one failed):
#   1. the CUDA tests: cached sampling on CUDA equals the CPU (tests/test_sampling.py),
#      bf16-mixed and 16-mixed training with finite, falling loss (tests/test_gpu_path.py)
#   2. the speed-up of torch.compile (train.compile) on a training step, per arch
#   3. bf16 autocast training figures (losses first and last, images/s), eager
#   4. training throughput (benchmarks/throughput.py) and 5. sampling speed
#      (benchmarks/sampling.py) on CUDA
# A summary of each part's exit status ends the output (124: its time limit ran out);
# the script exits 1 when any part failed.
#
# Usage: bash benchmarks/gpu_check.sh    (PYTHON=... picks the interpreter; with OUT set,
#        the whole output is also written to $OUT/gpu_check.log)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
THREADS=${THREADS:-16}
declare -a SUMMARY=()
FAILED=0

part() {  # part NAME SECONDS COMMAND...: a header, the command under a time limit, its status
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit}s, $(date +%T))"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local status=$?
    [ "$status" -eq 0 ] || FAILED=$((FAILED + 1))
    SUMMARY+=("$(printf '%-28s exit %3d  %4ds' "$name" "$status" $((SECONDS - start)))")
}

checks() {
    echo "=== machine ($(date -u +%FT%TZ))"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
        || echo "nvidia-smi: not found"
    if ! "$PYTHON" - <<'EOF'
import sys, torch, lightning
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"lightning {lightning.__version__}")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: nothing to check here")
print("device:", torch.cuda.get_device_name(0), f"(compute capability {torch.cuda.get_device_capability(0)})")
EOF
    then
        return 1
    fi
    part "1 CUDA tests" 100 "$PYTHON" -m pytest -q -rsx -p no:cacheprovider \
        tests/test_sampling.py tests/test_gpu_path.py -k cuda
    part "2 torch.compile speed-up" 180 "$PYTHON" benchmarks/compile_speedup.py \
        --device cuda --threads "$THREADS"
    part "3 bf16 autocast (eager)" 40 "$PYTHON" benchmarks/compile_speedup.py \
        --device cuda --threads "$THREADS" --bf16 --eager-only
    part "4 training throughput" 100 "$PYTHON" benchmarks/throughput.py \
        --device cuda --threads "$THREADS"
    part "5 sampling speed" 60 "$PYTHON" benchmarks/sampling.py \
        --device cuda --threads "$THREADS"
    echo
    echo "=== summary"
    printf '%s\n' "${SUMMARY[@]}"
    [ "$FAILED" -eq 0 ]
}

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    checks 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
checks

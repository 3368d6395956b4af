#!/usr/bin/env bash
# One call on the GPU machine (H100): configure and build everything with CUDA, then run the whole
# test suite exactly as the README's test command does (ctest: CPU and GPU-labelled tests; then the
# Python package's tests, GPU ones included). Logs go under $OUT.
#   device run:  scripts/gpu_all.sh        (carry .deps: the CUTLASS/CuTe headers)
# The per-area scripts (gpu_decode.sh, gpu_prefill.sh, gpu_engine.sh, gpu_python.sh) add the
# sanitizer runs and the benchmarks.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/fp8kv_out}
mkdir -p "$out"
export FP8KV_BUILD_DIR=${FP8KV_BUILD_DIR:-build-gpu}
export FP8KV_JOBS=${FP8KV_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
start=$(date +%s)
scripts/test.sh 2>&1 | tee "$out/test.log"
status=${PIPESTATUS[0]}
echo "gpu_all: scripts/test.sh exited $status after $(( $(date +%s) - start )) s" | tee -a "$out/test.log"
exit "$status"

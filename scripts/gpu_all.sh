#!/usr/bin/env bash
# One script for the GPU machine (H100): builds everything with CUDA, then
#   tests  the whole test suite exactly as the README's test command runs it (ctest: CPU and
#          GPU-labelled tests; then the Python package's tests, GPU ones included), then
#          compute-sanitizer memcheck + racecheck on the prefill and decode kernels;
#   bench  `fp8kv bench decode` and `fp8kv bench prefill` with their PyTorch peers (JSON, tables)
#          and the plots of both (bench/plot_kernels.py);
#   all    both (about 9 minutes on an H100: more than one 10-minute device call allows with a
#          cold build, so the H100 results are made with one call of each).
# Logs, JSON and PNGs go under $OUT (at most 8 files: what a device call brings back).
#   device run:  scripts/gpu_all.sh [tests|bench|all]   (default tests; carry .deps: CUTLASS/CuTe)
# The per-area scripts (gpu_decode.sh, gpu_prefill.sh, gpu_engine.sh, gpu_python.sh) run one
# area's checks against binaries built elsewhere.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-tests}
out=${OUT:-/tmp/fp8kv_out}
mkdir -p "$out"
export FP8KV_BUILD_DIR=${FP8KV_BUILD_DIR:-build-gpu}
export FP8KV_JOBS=${FP8KV_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1
build=$FP8KV_BUILD_DIR
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
status=0

if [[ $what == tests || $what == all ]]; then
  start=$(date +%s)
  scripts/test.sh 2>&1 | tee "$out/test.log"
  test_status=${PIPESTATUS[0]}
  echo "gpu_all: scripts/test.sh exited $test_status after $(($(date +%s) - start)) s" | tee -a "$out/test.log"
  [[ $test_status == 0 ]] || status=$test_status

  tests=$build/tests/fp8kv_cuda_tests
  # Representative subsets: varlen/paged/chunked prefill with every scale granularity, RoPE +
  # quantize, cache writes, decode with empty sequences, splits + merge, fp16 I/O, bad block ids,
  # graph replay, the balanced partition and per-token scales over six decades.
  subset='CudaPrefill.VarlenMixedLengthsAndPrefixes:CudaPrefill.Fp8WideTilesEveryShape:CudaPagedPrefill.ChunkedPrefillOverFp8Pages'
  subset+=':CudaRopeQuantize.*'
  subset+=':CacheWrite.PartialRotaryDimIsBitExact:CacheWrite.OutOfRangeSlotIsReportedAndNotWritten'
  subset+=':PagedDecode.EmptySequencesGiveZeroRows:PagedDecode.SplitCountsFromOptions:PagedDecode.Fp16InputAndOutput'
  subset+=':PagedDecode.BadDeviceBlockIdIsReported:PagedDecode.GraphReplayWithGrowingLengths'
  subset+=':PagedDecode.BalancedPlanOfEqualLengths:PagedDecode.PerTokenScalesSpanningDecades'
  for tool in memcheck racecheck; do
    timeout 200 compute-sanitizer --tool "$tool" --error-exitcode 9 "$tests" --gtest_filter="$subset" \
      > "/tmp/sanitizer_$tool.log" 2>&1
    rc=$?
    cat "/tmp/sanitizer_$tool.log" >> "$out/sanitizers.log"
    echo "gpu_all: compute-sanitizer $tool exit $rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "/tmp/sanitizer_$tool.log" |
      tr '\n' ' ')$(grep -cE '^\[       OK \]' "/tmp/sanitizer_$tool.log") tests passed" | tee -a "$out/sanitizers.log"
    [[ $rc == 0 ]] || status=$rc
  done
fi

if [[ $what == bench || $what == all ]]; then
  if [[ ! -f $build/build.ninja ]]; then
    # shellcheck disable=SC2086  # FP8KV_CMAKE_ARGS is a list of flags
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${FP8KV_CMAKE_ARGS:-} > /tmp/fp8kv_build.log 2>&1
  fi
  cmake --build "$build" -j "$FP8KV_JOBS" --target fp8kv_cli >> /tmp/fp8kv_build.log 2>&1 ||
    { tail -30 /tmp/fp8kv_build.log; exit 1; }
  "$build/fp8kv" bench decode --json "$out/decode_h100.json" 2>&1 | tee "$out/bench.log" || status=1
  "$build/fp8kv" bench prefill --peers-script bench/prefill_peers.py --json "$out/prefill_h100.json" 2>&1 |
    grep -v "^peer " | tee -a "$out/bench.log" || status=1
  if python3 -c "import matplotlib" 2>/dev/null; then
    python3 bench/plot_kernels.py --decode "$out/decode_h100.json" "$out/decode_h100.png" \
      --prefill "$out/prefill_h100.json" "$out/prefill_h100.png" || status=1
  else
    echo "gpu_all: python3 lacks matplotlib: no plots (bench/plot_kernels.py runs anywhere it is installed)"
  fi
fi
exit "$status"

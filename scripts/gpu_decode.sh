#!/usr/bin/env bash
# What helper B runs on the GPU machine (issue 3): the GPU decode / cache-write tests, then
# compute-sanitizer memcheck and racecheck on a representative subset, then `fp8kv bench decode`.
# Binaries are built on the development machine and carried in .devcarry/decode/.
# Usage: scripts/gpu_decode.sh [tests|sanitize|bench|all]   (logs and JSON under $OUT)
set -uo pipefail
BIN=${BIN:-.devcarry/decode}
OUT=${OUT:-/tmp/fp8kv_out}
mkdir -p "$OUT"
what=${1:-all}
status=0
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"

if [[ $what == tests || $what == all ]]; then
  "$BIN/fp8kv_cuda_tests" --gtest_filter='Fp8Device.*:CacheWrite.*:PagedDecode.*' 2>&1 | tee "$OUT/tests.log" || status=1
fi

if [[ $what == sanitize || $what == all ]]; then
  subset='CacheWrite.PartialRotaryDimIsBitExact:CacheWrite.OutOfRangeSlotIsReportedAndNotWritten:PagedDecode.EmptySequencesGiveZeroRows:PagedDecode.SplitCountsFromOptions:PagedDecode.Fp16InputAndOutput:PagedDecode.BadDeviceBlockIdIsReported:PagedDecode.GraphReplayWithGrowingLengths:PagedDecode.BalancedPlanOfEqualLengths'
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/fp8kv_cuda_tests" --gtest_filter="$subset" \
      > "$OUT/sanitizer_$tool.log" 2>&1 || status=1
    tail -n 3 "$OUT/sanitizer_$tool.log"
  done
fi

if [[ $what == bench || $what == all ]]; then
  "$BIN/fp8kv" bench decode --json "$OUT/decode_h100.json" "${@:2}" 2> "$OUT/bench_progress.log" | tee "$OUT/bench.log" || status=1
fi
exit $status

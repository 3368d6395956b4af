#!/usr/bin/env bash
# Runs issue 4's GPU checks on the device machine: the prefill test suite (accuracy numbers to
# JSON), compute-sanitizer memcheck and racecheck on a representative subset, and
# `bench prefill` with its PyTorch peers.
#   scripts/gpu_prefill.sh BIN_DIR OUT_DIR
# BIN_DIR is a CMake build directory (tests/fp8kv_cuda_tests, fp8kv) or a folder holding
# test_prefill_all (tests/cuda/test_prefill*.cc linked alone with the library) and bench_prefill
# (the `bench prefill` subcommand alone), which is how the H100 results were produced.
set -uo pipefail
bin=${1:?BIN_DIR}
out=${2:?OUT_DIR}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/gpu.txt"
tests=("$bin/test_prefill_all")
if [ ! -x "$bin/test_prefill_all" ]; then
  tests=("$bin/tests/fp8kv_cuda_tests" --gtest_filter='CudaPrefill*:CudaPagedPrefill*:CudaRopeQuantize*')
fi

echo "== tests"
FP8KV_PREFILL_ACCURACY_JSON="$out/accuracy.json" timeout 200 "${tests[@]}" 2>&1 | tee "$out/tests.log" |
  grep -E "^\[ *(OK|FAILED|PASSED|RUN) |Failure|actual|accuracy|retrieval|  (bf16|fp8)" | grep -v "RUN"

echo "== bench"
bench=("$bin/fp8kv")
[ -x "$bin/fp8kv" ] || bench=("$bin/bench_prefill")
timeout 240 "${bench[@]}" bench prefill --peers-script bench/prefill_peers.py --json "$out/prefill_bench.json" 2>&1 |
  tee "$out/bench.log" | grep -v "^peer "

echo "== compute-sanitizer"
subset='CudaPrefill.VarlenMixedLengthsAndPrefixes:CudaPrefill.GraphReplayMatchesDirectLaunch:CudaPagedPrefill.ChunkedPrefillOverFp8Pages:CudaRopeQuantize.*'
for tool in memcheck racecheck; do
  timeout 70 compute-sanitizer --tool "$tool" --error-exitcode 9 "${tests[0]}" --gtest_filter="$subset" \
    > "$out/sanitizer_$tool.log" 2>&1
  echo "$tool exit $?: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$out/sanitizer_$tool.log" | tr '\n' ' ')"
done

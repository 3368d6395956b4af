#!/usr/bin/env bash
# Nsight Compute profiles of the attention kernels on their benchmark shapes (H100; device run with
# carry .deps). Builds the CLI if the build directory lacks it, then profiles one launch each of:
#   prefill  FP8 default, Qwen3-8B 1 x 16384 causal   (the 900 TFLOP/s target's shape)
#   decode   FP8 per-tensor, Llama-3.1-8B 128 x 4096, block 16   (the 90%-of-read-bandwidth target)
#   decode   FP8 per-token,  Qwen3-0.6B 1 x 16384, block 16     (the per-token cost target)
# For each: the report's details page (throughputs, pipe utilisation, warp states) and its source
# page (SASS with per-instruction stall samples), gzipped, under $OUT/profile.
# ncu needs --clock-control none on these machines (the device's METHOD.md: leave the clocks alone).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/fp8kv_out}/profile
mkdir -p "$out"
build=${FP8KV_BUILD_DIR:-build-gpu}
if [[ ! -x "$build/fp8kv" ]]; then
  cmake -S . -B "$build" -G Ninja -DFP8KV_CUDA=ON -DCMAKE_BUILD_TYPE=Release ${FP8KV_CMAKE_ARGS:-} > "$out/build.log" 2>&1 &&
    ninja -C "$build" -j"$(nproc)" fp8kv_cli >> "$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
fi
cli=$build/fp8kv

# profile NAME KERNEL_REGEX LAUNCH_SKIP -- CLI ARGS...
profile() {
  local name=$1 kernel=$2 skip=$3
  shift 4
  timeout 240 ncu --clock-control none --set full --import-source yes -k "regex:$kernel" --launch-skip "$skip" \
    --launch-count 1 -f -o "/tmp/$name" "$cli" "$@" > "/tmp/$name.run.log" 2>&1 || { tail -20 "/tmp/$name.run.log"; return 1; }
  ncu -i "/tmp/$name.ncu-rep" --page details > "$out/$name.details.txt" 2>&1
  { ncu -i "/tmp/$name.ncu-rep" --page source --csv --print-source sass 2>/dev/null ||
      ncu -i "/tmp/$name.ncu-rep" --page source --csv; } | gzip > "$out/$name.sass.csv.gz"
  echo "profile $name: $(grep -m1 -i 'Duration' "$out/$name.details.txt")"
}

# Each timed variant runs warm-up launches first; the skip counts pick the variant named above.
profile prefill_16k prefill_kernel 1 -- bench prefill --no-peers --only qwen3-8b/1/16384/causal --warmup 1 --repeats 2
profile decode_128x4k paged_decode_kernel 5 -- bench decode --no-peers --shapes llama-3.1-8b --batches 128 \
  --contexts 4096 --block-sizes 16 --repeats 2
profile decode_token_16k paged_decode_kernel 15 -- bench decode --no-peers --shapes qwen3-0.6b --batches 1 \
  --contexts 16384 --block-sizes 16 --repeats 2
ls -la "$out"

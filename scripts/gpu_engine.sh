#!/usr/bin/env bash
# Engine checks and benchmark on the GPU machine. Expects the binaries built on the build host in
# .devcarry/engine/ (fp8kv, fp8kv_cuda_tests) and writes logs, JSON and the plot under $OUT.
set -o pipefail
BIN=.devcarry/engine
OUT=${OUT:-/tmp/engine_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"

# 1. CUDA backend vs transformers / CPU backend, greedy, FP8 vs BF16 KV (KL, agreement).
"$BIN/fp8kv_cuda_tests" --gtest_filter='*EngineCuda*' 2>&1 | tee "$OUT/engine_cuda_tests.log"

# 2. Memory errors in the engine's kernels (tiny models, one pass).
compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/fp8kv_cuda_tests" \
  --gtest_filter='*EngineCuda*MatchesTransformers*/0' 2>&1 | tail -5 | tee "$OUT/engine_sanitizer.log"

# 3. The CLI end to end on the golden checkpoint: FP8 KV from a fraction of free memory, a batch
#    from JSONL.
"$BIN/fp8kv" run --model tests/data/tiny-qwen3 --prompt "The quick brown fox jumps over" --max-new-tokens 16 \
  --kv-cache-dtype fp8 --device cuda 2>&1 | tee "$OUT/engine_run.log"
printf '{"prompt": "Attention over a paged cache"}\n{"input_ids": [414, 720, 663], "max_new_tokens": 8}\n' > /tmp/prompts.jsonl
"$BIN/fp8kv" run --model tests/data/tiny-llama --input-file /tmp/prompts.jsonl --output-file "$OUT/engine_run_out.jsonl" \
  --kv-cache-dtype fp8_e4m3 --kv-cache-memory 256KiB --max-new-tokens 24 --device cuda 2>&1 | tee -a "$OUT/engine_run.log"

# 4. Qwen3-8B decode ITL vs context, BF16 vs FP8 KV, and capacity.
"$BIN/fp8kv" bench engine --json "$OUT/bench_engine.json" 2>&1 | tee "$OUT/bench_engine.log"
python3 bench/plot_engine.py "$OUT/bench_engine.json" "$OUT/bench_engine.png"

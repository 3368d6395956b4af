// The CUDA implementation of the cache write and of paged decode attention.
//
// Streams are passed as `void*` (a cudaStream_t; nullptr = the default stream) so that this header
// needs no CUDA include. Every function validates its arguments with fp8kv::validate() (shapes,
// dtypes, devices, head dims, GQA ratio). Tensors that live on the device (block tables, slot
// mappings, positions, sequence lengths) cannot be read by the host without a synchronisation, so
// the kernels bounds-check them instead: an out-of-range entry is never dereferenced (the cache
// write skips the token; decode reads zeros in its place, so that sequence's output is not
// meaningful), and a sticky device error bit is set that check_errors() turns into an
// InvalidArgument naming the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "fp8kv/attention.h"

namespace fp8kv::cuda {

// True when the library was built with CUDA and a CUDA device is present.
bool available();

// Waits for the current device, then throws InvalidArgument naming the tensor if a kernel since the
// last call met a bad device-resident input (slot, block id, position or sequence length out of
// range). Clears the error bits.
void check_errors();

// Writes args.key / args.value (bf16/fp16, on the device) into their slots of the paged cache.
// Bit-exact with reference::write_kv_cache, RoPE included.
void write_kv_cache(const CacheWriteArgs& args, void* stream = nullptr);

// ---- paged decode: plan once on the host, run (graph-capturable) many times ----------------------

struct DecodePlanOptions {
  // Extra tokens of context each sequence may grow by and still be served by this plan, so that
  // one plan (and a CUDA graph captured around run()) can be replayed over several decode steps.
  int32_t headroom_tokens = 0;
  // Upper bound on the split-KV count of one sequence; 0 = the heuristic's choice.
  int32_t max_splits = 0;
  // The balanced partition for batches of equal planned lengths (thread-block rows of equal key
  // counts laid over the sequences end to end; not with max_splits): 0 = where the plan expects it
  // to be faster than whole-sequence splits, 1 = wherever it applies, -1 = never.
  int32_t balanced = 0;
};

// Work partition of one decode batch: which thread block covers which (sequence, key range), how
// many splits each sequence has, and the FP32 workspace for the split results and their merge.
// Computed from the host copy of seq_lens; owns its device memory.
class DecodePlan {
 public:
  // `args` gives the shapes, dtypes and cache format (its device pointers are not read);
  // `host_seq_lens` holds args.seq_lens' values ([batch]).
  DecodePlan(const DecodeArgs& args, const std::vector<int32_t>& host_seq_lens, const DecodePlanOptions& options = {});
  ~DecodePlan();
  DecodePlan(const DecodePlan&) = delete;
  DecodePlan& operator=(const DecodePlan&) = delete;
  DecodePlan(DecodePlan&&) noexcept;
  DecodePlan& operator=(DecodePlan&&) noexcept;

  // Runs decode attention over `args` (same shapes and cache format as planned; any pointers).
  // No allocation, no host synchronisation: safe inside CUDA graph capture. A sequence longer than
  // its planned length + headroom sets a device error bit (check_errors()) and only its planned
  // keys are used.
  void run(const DecodeArgs& args, void* stream = nullptr) const;

  int64_t batch() const;
  int32_t chunk_tokens() const;        // keys per split (per block row of the balanced partition)
  int64_t num_work_items() const;      // thread-block rows of the main kernel
  int32_t num_splits(int64_t sequence) const;
  size_t workspace_bytes() const;      // device memory held for split results + work lists

  struct State;

 private:
  std::unique_ptr<State> state_;
};

// True if this build has a decode kernel for the configuration (head dim, storage dtype, q dtype).
bool decode_supported(DType storage, DType q_dtype, int head_dim, int num_q_heads, int num_kv_heads);

// Convenience: plan + run. Copies seq_lens to the host (a synchronisation) when they are on the
// device; use DecodePlan directly in a decoding loop.
void paged_decode(const DecodeArgs& args, void* stream = nullptr);

}  // namespace fp8kv::cuda

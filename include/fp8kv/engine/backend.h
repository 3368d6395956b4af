// The compute a decoder layer needs, behind one interface with a CPU and a CUDA implementation.
//
// The model (model.h) is written once over these operations; the engine and its scheduler never
// see which backend runs them. Tensors are TensorRefs on the backend's device. Activations are in
// the backend's activation dtype (float32 on the CPU, bfloat16 on CUDA, as transformers runs a
// bf16 checkpoint); every reduction (norms, GEMM accumulation, softmax) is in float32 or wider.
// Logits are always float32.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "fp8kv/attention.h"
#include "fp8kv/kv_cache.h"
#include "fp8kv/tensor.h"

namespace fp8kv::engine {

// A tensor that owns its memory on a backend's device.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(Device device, DType dtype, const std::vector<int64_t>& shape);

  const TensorRef& ref() const { return ref_; }
  bool defined() const { return ref_.defined(); }
  int64_t numel() const { return ref_.numel(); }
  // The same memory seen with another shape of equal element count (e.g. [n, heads * d] as
  // [n, heads, d]).
  TensorRef view(const std::vector<int64_t>& shape) const;
  // The first `rows` rows (dim 0) of the tensor, with the other dims kept.
  TensorRef rows(int64_t rows) const;

 private:
  Buffer buffer_;
  TensorRef ref_;
};

// The attention work of one step, for every sequence of the batch: its new query tokens attend to
// its pages, which already hold the prefix and the new tokens' K/V (written just before).
struct AttentionBatch {
  int32_t num_seqs = 0;
  int32_t max_q_len = 0;             // longest query chunk in the batch
  int32_t max_blocks_per_seq = 0;
  // Device copies.
  TensorRef block_tables;            // [num_seqs, max_blocks_per_seq] int32
  TensorRef cu_seqlens_q;            // [num_seqs + 1] int32
  TensorRef seq_lens;                // [num_seqs] int32: keys per sequence after this step
  // The same work as one decode row per query token (row i of sequence b sees seq_len - len_q + i + 1
  // keys): the exact causal mask of the prefill, for backends that run it through the decode kernel.
  TensorRef row_block_tables;        // [total_q, max_blocks_per_seq] int32
  TensorRef row_seq_lens;            // [total_q] int32
  // Host copies of the lengths (work partitioning is planned on the host).
  std::vector<int32_t> host_seq_lens, host_row_seq_lens;
  // Changes with every forward call: a backend may plan once per step and reuse it for all layers.
  int64_t step = 0;

  // The batch as a paged-prefill call: queries `q` over `cache`, written to `out`. Descales stay
  // unset (1.0); a backend that quantises q sets q_descale itself.
  PagedPrefillArgs prefill_args(const TensorRef& q, const PagedKvLayer& cache, float softmax_scale,
                                const TensorRef& out) const {
    PagedPrefillArgs args;
    args.q = q;
    args.cache = cache;
    args.block_tables = block_tables;
    args.cu_seqlens_q = cu_seqlens_q;
    args.seq_lens = seq_lens;
    args.out = out;
    args.softmax_scale = softmax_scale;
    return args;
  }
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  virtual const char* name() const = 0;
  // float32 on the CPU, bfloat16 on CUDA.
  virtual DType activation_dtype() const = 0;
  // Dtype the weights are kept in (float32 on the CPU: converted once at load; bfloat16 on CUDA).
  virtual DType weight_dtype() const = 0;

  // Host <-> device copies of whole tensors (host memory holds the same dtype and element count).
  virtual void copy_from_host(const TensorRef& dst, const void* host) = 0;
  virtual void copy_to_host(void* host, const TensorRef& src) = 0;
  // Fills a float32/bf16 tensor with N(0, stddev) values from `seed` (generated on the device).
  virtual void fill_normal(const TensorRef& dst, uint64_t seed, float stddev) = 0;

  // out[i, :] = table[ids[i], :]. ids [n] int32; table [vocab, hidden]; out [n, hidden].
  virtual void embed(const TensorRef& ids, const TensorRef& table, const TensorRef& out) = 0;
  // RMSNorm over the last dim: out = x / sqrt(mean(x^2) + eps) * weight. x, out [rows, dim]; weight [dim].
  // x and out may alias.
  virtual void rms_norm(const TensorRef& x, const TensorRef& weight, float eps, const TensorRef& out) = 0;
  // out = x @ w^T (+ bias). x [m, k]; w [n, k]; bias [n] or undefined; out [m, n] (activation dtype or float32).
  virtual void linear(const TensorRef& x, const TensorRef& w, const TensorRef& bias, const TensorRef& out) = 0;
  // Rotate-half RoPE in place. x [n, heads, head_dim]; positions [n] int32; cos_sin [max_pos, rotary_dim] float32.
  virtual void rope(const TensorRef& x, const TensorRef& positions, const TensorRef& cos_sin, int rotary_dim) = 0;
  // out = silu(gate) * up, all [n, intermediate].
  virtual void swiglu(const TensorRef& gate, const TensorRef& up, const TensorRef& out) = 0;
  // x += y, both [n, dim].
  virtual void add(const TensorRef& x, const TensorRef& y) = 0;
  // out[i, :] = x[rows[i], :]. x [n, dim]; rows [m] int32; out [m, dim].
  virtual void gather_rows(const TensorRef& x, const TensorRef& rows, const TensorRef& out) = 0;

  // Stores new K/V (already normed and rotated) in their slots, converting to the cache dtype.
  virtual void write_kv_cache(const CacheWriteArgs& args) = 0;
  // q [total_q, num_q_heads, head_dim] -> out, same shape, over the layer's pages.
  virtual void attention(const TensorRef& q, const PagedKvLayer& cache, const AttentionBatch& batch,
                         float softmax_scale, const TensorRef& out) = 0;

  // out[i] = argmax_j logits[i, j] (lowest index on ties). logits [m, vocab] float32; out [m] int32.
  virtual void argmax(const TensorRef& logits, const TensorRef& out) = 0;
  // Fills a layer's K/V pools with valid random values (stored codes of N(0,1) values;
  // per-token scales, when the layer has them, set to 1) for benchmarks whose cost does
  // not depend on the values.
  virtual void fill_kv_random(const PagedKvLayer& layer, uint64_t seed) = 0;
  // Waits for the work issued so far (a no-op on the CPU).
  virtual void synchronize() = 0;
  // Free and total device memory in bytes (for sizing the cache from a fraction of free memory).
  virtual void memory_info(int64_t& free_bytes, int64_t& total_bytes) const = 0;
};

std::unique_ptr<Backend> make_cpu_backend();
// Throws Unsupported in a build without CUDA or when no GPU is present.
std::unique_ptr<Backend> make_cuda_backend();
// True when this build has CUDA and a GPU is visible.
bool cuda_available();
// "auto" (CUDA when available), "cpu", "cuda". Throws InvalidArgument("device", ...) otherwise.
std::unique_ptr<Backend> make_backend(const std::string& device);

}  // namespace fp8kv::engine

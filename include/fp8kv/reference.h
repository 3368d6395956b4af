// The CPU reference: a direct, readable implementation of every computation fp8kv performs, with
// float64 accumulation. It is the oracle for the CUDA kernels and the engine's CPU attention.
//
// Exactness: cache writes (conversion, per-token scales) are bit-exact definitions; attention
// results are float64 sums of float-rounded inputs, rounded once to the output dtype. The only
// approximations are those of the storage format, which is the point of comparing against it.
#pragma once

#include <cstdint>
#include <vector>

#include "fp8kv/attention.h"

namespace fp8kv {

// How a model's rotary embedding is parameterised (Hugging Face config.json fields).
struct RopeConfig {
  double theta = 10000.0;       // rope_theta
  int rotary_dim = 0;           // usually head_dim
  // rope_scaling {"rope_type": "llama3", ...}; disabled when factor == 0.
  double llama3_factor = 0.0;
  double llama3_low_freq_factor = 1.0;
  double llama3_high_freq_factor = 4.0;
  int llama3_original_max_position = 8192;
};

// [max_position, rotary_dim] float32 cos|sin table (see RopeTable). inv_freq (with Llama-3 scaling)
// and the angle position * inv_freq are float32 operations in the order Hugging Face transformers
// performs them, so the table is the one the model runs with; cos and sin are correctly rounded.
std::vector<float> build_rope_table(const RopeConfig& config, int max_position);

namespace reference {

void write_kv_cache(const CacheWriteArgs& args);
void paged_decode(const DecodeArgs& args);
void prefill(const PrefillArgs& args);
void paged_prefill(const PagedPrefillArgs& args);

// Applies rotate-half RoPE in place to x [num_tokens, num_heads, head_dim] (float32) using the
// table; the channels past rotary_dim are left as they are.
void apply_rope(float* x, int64_t num_tokens, int num_heads, int head_dim, const int32_t* positions,
                const float* cos_sin, int rotary_dim);

// Quantizes x [num_tokens, num_heads, head_dim] (float32/bf16/fp16) to FP8 `out` of the same
// shape, with per_tensor ([1]), per_head ([num_heads]) or per_token ([num_tokens, num_heads],
// computed here from each row's amax and written to `scales`) scales.
void quantize(const TensorRef& x, const TensorRef& out, ScaleGranularity granularity, const TensorRef& scales);
// out (float32, same shape) = float(x) * scale, with the same scale shapes as quantize().
void dequantize(const TensorRef& x, const TensorRef& out, ScaleGranularity granularity, const TensorRef& scales);

}  // namespace reference
}  // namespace fp8kv

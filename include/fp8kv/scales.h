// Scales: how real K/V values map to stored FP8 codes. The convention, written once:
//
//     stored = satfinite_rne(x / scale)          (float division, then the FP8 encoder)
//     x     ~= float(stored) * scale
//     scale  = max(amax, kAmaxFloor) / fp8_max    (fp8_max = 448 for E4M3, 57344 for E5M2)
//
// `scale` is a dequantization factor ("descale" in FlashAttention-3's words): a larger scale
// means coarser codes. A scale must be finite and > 0; anything else is rejected. kAmaxFloor keeps
// an all-zero token (padding, a zeroed head) from producing a zero scale: its codes are then all
// zero and the scale is harmless. A NaN quotient (a NaN input, or inf / inf when an infinite value
// makes a per-token scale infinite) is stored as +NaN on the CPU and the GPU alike: IEEE leaves
// the sign of such a NaN to the machine, and x86 gives inf / inf a negative one.
//
// Granularity:
//   per_tensor: one K scale and one V scale per layer          -> float[1] each
//   per_head:   one K and one V scale per layer and KV head     -> float[num_kv_heads] each
//   per_token:  one K and one V scale per token and KV head, computed from that token's amax
//               when it is written, stored beside the pages     -> float[num_blocks, num_kv_heads, block_size]
// 16-bit storage (bf16/fp16) uses no scale at all.
#pragma once

#include <cstdint>
#include <string>

#include "fp8kv/dtype.h"
#include "fp8kv/macros.h"

namespace fp8kv {

enum class ScaleGranularity : uint8_t { kPerTensor, kPerHead, kPerToken };

// amax below this is treated as this, so scale >= kAmaxFloor / fp8_max > 0.
constexpr float kAmaxFloor = 1e-6f;

// scale = max(amax, kAmaxFloor) / fp8_max(dtype); `amax` must be finite and >= 0.
FP8KV_HOST_DEVICE float scale_from_amax(float amax, float fp8_max_value) {
  return (amax > kAmaxFloor ? amax : kAmaxFloor) / fp8_max_value;
}

// "per_tensor" | "per_head" | "per_token". Throws InvalidArgument naming `argument_name`.
ScaleGranularity parse_scale_granularity(const std::string& name,
                                         const std::string& argument_name = "kv_scales");
const char* scale_granularity_name(ScaleGranularity g);

// Number of static scale values per layer for K (and again for V): 1, num_kv_heads, or 0 for
// per_token (whose scales live in the cache's per-token buffers) and for 16-bit storage.
int64_t static_scale_count(DType storage, ScaleGranularity g, int num_kv_heads);

// Throws InvalidArgument(argument, ...) unless every one of the `count` scales is finite and > 0,
// naming the first bad index and value.
void validate_scales(const float* scales, int64_t count, const char* argument);

// Calibration: amax over `count` values (NaN is an error, inf is an error), for computing
// per-tensor / per-head scales from data. Host only; the GPU path has its own reduction.
float amax_of(const float* values, int64_t count, const char* argument);

}  // namespace fp8kv

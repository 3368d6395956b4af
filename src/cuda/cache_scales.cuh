// The scale buffers of one paged cache layer as the kernels read them (include/fp8kv/paged_cache.h
// describes the buffers). An FP8 cache sets either the per-token pair or the static pair; a 16-bit
// cache sets neither, and every scale then reads as 1.
#pragma once

#include "fp8kv/paged_cache.h"

namespace fp8kv::cuda_detail {

struct CacheScales {
  float* k_token = nullptr;         // [num_blocks, num_kv_heads, block_size], per-token only
  float* v_token = nullptr;         // same shape
  const float* k_static = nullptr;  // [1] per tensor / [num_kv_heads] per head
  const float* v_static = nullptr;  // same shape
  bool per_head = false;            // static scales indexed by KV head

  static CacheScales of(const PagedKvLayer& cache) {
    CacheScales s;
    if (cache.has_token_scales()) {
      s.k_token = cache.k_token_scale;
      s.v_token = cache.v_token_scale;
    } else if (is_fp8(cache.dtype)) {
      s.k_static = cache.k_scale;
      s.v_static = cache.v_scale;
      s.per_head = cache.granularity == ScaleGranularity::kPerHead;
    }
    return s;
  }

  __device__ __forceinline__ bool per_token() const { return k_token != nullptr; }
  // The static scales of KV head `head`; 1 where there are none (per-token or 16-bit caches).
  __device__ __forceinline__ float k_of_head(int head) const {
    return k_static != nullptr ? k_static[per_head ? head : 0] : 1.0f;
  }
  __device__ __forceinline__ float v_of_head(int head) const {
    return v_static != nullptr ? v_static[per_head ? head : 0] : 1.0f;
  }
};

}  // namespace fp8kv::cuda_detail

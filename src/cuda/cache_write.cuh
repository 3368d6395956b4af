// Device code of the cache write: new K/V tokens -> (optional RoPE on K) -> storage dtype -> their
// slots of the paged cache (paged_cache.h), with per-token scales where the layer has them.
//
// Thread mapping: one (token, head) row of kHeadDim values is handled by kRowThreads = kHeadDim / 8
// consecutive lanes, 8 values each (one 16-byte load of bf16/fp16 input). Every op that decides a
// stored bit matches reference::write_kv_cache: RoPE is x1*cos - x2*sin, x2*cos + x1*sin with
// explicit _rn intrinsics (no FMA contraction), amax is exact, the scale is scale_from_amax() with
// IEEE division, and each value is divided (IEEE) by the scale before the satfinite RNE encoder.
// Result: the cache bytes and per-token scales are bit-identical to the CPU reference.
#pragma once

#include <cstdint>

#include "cuda/cache_scales.cuh"
#include "cuda/fp8_convert.cuh"
#include "fp8kv/paged_cache.h"
#include "fp8kv/scales.h"

namespace fp8kv::cuda_detail {

// Bits of the sticky device error word (device_errors.h), turned into errors by cuda::check_errors().
constexpr uint32_t kErrorSlotOutOfRange = 1u << 0;
constexpr uint32_t kErrorBlockIdOutOfRange = 1u << 1;
constexpr uint32_t kErrorSeqLenOutOfRange = 1u << 2;
constexpr uint32_t kErrorPositionOutOfRange = 1u << 3;

// Stores `kWords` 32-bit words at `dst` with the widest vector store their size allows.
template <int kWords>
__device__ __forceinline__ void store_words(void* dst, const uint32_t (&w)[kWords]) {
  if constexpr (kWords == 4) {
    *static_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
  } else if constexpr (kWords == 2) {
    *static_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
  } else {
#pragma unroll
    for (int i = 0; i < kWords; ++i) static_cast<uint32_t*>(dst)[i] = w[i];
  }
}

// Max over the kRowThreads lanes of an aligned lane group (a row). Every lane of the warp calls.
template <int kRowThreads>
__device__ __forceinline__ float row_max(float v) {
#pragma unroll
  for (int offset = kRowThreads / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset, kRowThreads));
  }
  return v;
}

// The per-token quantize-and-store step, shared with the prefill path's fused RoPE + quantize
// kernel. A row (one token of one head, kRowThreads * kChunk values) is spread over an aligned
// group of kRowThreads consecutive lanes, kChunk values per lane in `x`; `dst` is this lane's first
// element in the cache (16-bit: kChunk*2 bytes aligned; FP8: kChunk bytes aligned).
//   per_token = true:  scale = scale_from_amax(row amax, fp8 max); lane 0 of the group writes it
//                      to *token_scale (FP8 storage only).
//   per_token = false: scale = static_scale (per-tensor or this head's per-head value).
// 16-bit storage ignores scales. Lanes with active = false still take part in the row reduction
// (every lane of the warp must call: shuffles are warp-wide) but write nothing.
// Returns the scale used (1 for 16-bit storage).
template <typename Storage, int kChunk, int kRowThreads>
__device__ __forceinline__ float quantize_store_chunk(const float (&x)[kChunk], Storage* dst, bool per_token,
                                                      float static_scale, float* token_scale, bool active) {
  static_assert(kRowThreads >= 1 && kRowThreads <= 32 && (kRowThreads & (kRowThreads - 1)) == 0,
                "a row is a power-of-two group of lanes inside one warp");
  constexpr int kWords = kChunk * static_cast<int>(sizeof(Storage)) / 4;
  uint32_t words[kWords];
  float scale = 1.0f;
  if constexpr (StorageTraits<Storage>::kIsFp8) {
    if (per_token) {
      float amax = 0.0f;
#pragma unroll
      for (int i = 0; i < kChunk; ++i) amax = fmaxf(amax, fabsf(x[i]));
      amax = row_max<kRowThreads>(amax);
      scale = scale_from_amax(amax, Storage::kMax);
      if (active && (threadIdx.x % kRowThreads) == 0) *token_scale = scale;
    } else {
      scale = static_scale;
    }
  }
  pack_floats<Storage>(x, scale, words);
  if (active) store_words<kWords>(dst, words);
  return scale;
}

// Rotate-half RoPE on the chunk [c0, c0 + kChunk) of one row, as reference::apply_rope: for
// channel c < half = rotary_dim / 2 with partner c + half, x1' = x1*cos - x2*sin and
// x2' = x2*cos + x1*sin, cos/sin taken at (position, c mod half). Channels >= rotary_dim pass.
// `row` is the row's unrotated input in global memory (the partner values are read from there).
template <typename In, int kChunk>
__device__ __forceinline__ void rope_chunk(float (&x)[kChunk], const In* row, int c0, const float* cos_sin_row,
                                           int rotary_dim) {
  const int half = rotary_dim / 2;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) {
    const int c = c0 + i;
    if (c >= rotary_dim) continue;
    const bool first = c < half;
    const int j = first ? c : c - half;
    const float cos_v = cos_sin_row[j];
    const float sin_v = cos_sin_row[half + j];
    const float partner = to_float(row[first ? c + half : c - half]);
    x[i] = first ? __fsub_rn(__fmul_rn(x[i], cos_v), __fmul_rn(partner, sin_v))
                 : __fadd_rn(__fmul_rn(x[i], cos_v), __fmul_rn(partner, sin_v));
  }
}

struct CacheWriteParams {
  const void* key;             // [num_tokens, num_kv_heads, head_dim] In
  const void* value;           // [num_tokens, num_kv_heads, head_dim] In
  const int64_t* slot_mapping; // [num_tokens]; < 0 = skip
  const int32_t* positions;    // [num_tokens], null without RoPE
  const float* cos_sin;        // [max_position, rotary_dim], null without RoPE
  int max_position;
  int rotary_dim;
  int64_t num_tokens;
  int64_t num_blocks;
  PagedLayout layout;
  void* k_cache;               // [num_blocks, num_kv_heads, block_size, head_dim] Storage
  void* v_cache;               // [num_blocks, num_kv_heads, block_size, head_dim] Storage
  CacheScales scales;          // per-token scales are written, static ones read
  uint32_t* error_flags;       // device word; bits kError*
};

constexpr int kCacheWriteThreads = 256;

// One thread per 8 values; kCacheWriteThreads / kRowThreads rows (token, head) per block.
template <typename In, typename Storage, int kHeadDim>
__global__ void __launch_bounds__(kCacheWriteThreads) cache_write_kernel(const CacheWriteParams p) {
  constexpr int kChunk = 8;  // one 16-byte vector of bf16/fp16 input
  constexpr int kRowThreads = kHeadDim / kChunk;
  static_assert(kRowThreads <= 32, "a row must fit in one warp");
  const int64_t row_index = (static_cast<int64_t>(blockIdx.x) * kCacheWriteThreads + threadIdx.x) / kRowThreads;
  const int lane_in_row = static_cast<int>(threadIdx.x % kRowThreads);
  const int heads = p.layout.num_kv_heads;
  const bool in_range = row_index < p.num_tokens * heads;
  const int64_t token = in_range ? row_index / heads : 0;
  const int head = in_range ? static_cast<int>(row_index % heads) : 0;

  const int64_t slot = in_range ? p.slot_mapping[token] : -1;
  const int64_t block = slot >= 0 ? p.layout.slot_block(slot) : 0;
  bool active = slot >= 0;
  if (active && block >= p.num_blocks) {
    atomicOr(p.error_flags, kErrorSlotOutOfRange);
    active = false;
  }
  int position = 0;
  if (active && p.cos_sin != nullptr) {
    position = p.positions[token];
    if (position < 0 || position >= p.max_position) {
      atomicOr(p.error_flags, kErrorPositionOutOfRange);
      active = false;
    }
  }
  const int pos_in_block = active ? p.layout.slot_position(slot) : 0;
  const int c0 = lane_in_row * kChunk;
  const int64_t in_offset = (token * heads + head) * kHeadDim;
  const int64_t cache_offset = p.layout.token_offset(block, head, pos_in_block) + c0;
  const int64_t scale_offset = p.layout.token_scale_offset(block, head, pos_in_block);
  const bool per_token = p.scales.per_token();

  float k[kChunk];
  float v[kChunk];
  {
    const In* key_row = static_cast<const In*>(p.key) + in_offset;
    const In* value_row = static_cast<const In*>(p.value) + in_offset;
    uint4 kv = make_uint4(0, 0, 0, 0);
    uint4 vv = make_uint4(0, 0, 0, 0);
    if (in_range) {
      kv = *reinterpret_cast<const uint4*>(key_row + c0);
      vv = *reinterpret_cast<const uint4*>(value_row + c0);
    }
    StorageTraits<In>::unpack(kv, k);
    StorageTraits<In>::unpack(vv, v);
    if (active && p.cos_sin != nullptr) {
      rope_chunk<In, kChunk>(k, key_row, c0, p.cos_sin + static_cast<int64_t>(position) * p.rotary_dim,
                             p.rotary_dim);
    }
  }
  const float k_static = p.scales.k_of_head(head);
  const float v_static = p.scales.v_of_head(head);
  quantize_store_chunk<Storage, kChunk, kRowThreads>(k, static_cast<Storage*>(p.k_cache) + cache_offset, per_token,
                                                     k_static, per_token ? p.scales.k_token + scale_offset : nullptr,
                                                     active);
  quantize_store_chunk<Storage, kChunk, kRowThreads>(v, static_cast<Storage*>(p.v_cache) + cache_offset, per_token,
                                                     v_static, per_token ? p.scales.v_token + scale_offset : nullptr,
                                                     active);
}

}  // namespace fp8kv::cuda_detail

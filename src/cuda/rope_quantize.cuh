// Device code of the prefill path's Q/K quantiser: RoPE, the optional random-sign Hadamard
// rotation (hadamard.cuh), FP8 quantisation of Q with one scale per KV-head group, and the K/V
// cache write through the cache writer's quantize-and-store step (cache_write.cuh).
//
// Thread mapping: a row (one token of one head, d channels) is kRowLanes = d / 4 consecutive lanes
// holding 4 channels each (one 8-byte bf16 load), so a warp holds 32 * 4 / d rows and the
// Hadamard transform's cross-channel stages are xor-shuffles inside the row's lane group.
// Q needs its scale before it is quantised, so the work is three launches: amax of the rotated Q
// (atomicMax per group), amax -> scale, then the fused quantise-Q + write-K/V kernel.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/cache_write.cuh"
#include "cuda/cache_scales.cuh"
#include "cuda/fp8_convert.cuh"
#include "cuda/hadamard.cuh"
#include "fp8kv/paged_cache.h"
#include "fp8kv/scales.h"

namespace fp8kv::cuda_detail {

constexpr int kRopeQuantizeThreads = 256;

struct RopeQuantizeParams {
  const Bf16* q;               // [num_tokens, num_q_heads, head_dim]
  const Bf16* k;               // [num_tokens, num_kv_heads, head_dim] (null: Q only)
  const Bf16* v;               // [num_tokens, num_kv_heads, head_dim]
  const int32_t* positions;    // [num_tokens], null without RoPE
  const float* cos_sin;        // [max_position, rotary_dim], null without RoPE
  int max_position;
  int rotary_dim;
  int64_t num_tokens;
  int num_q_heads;
  int num_kv_heads;            // for the cache rows (0 = no cache write)
  int q_groups;                // Q scale groups: num_q_heads / q_groups heads share a scale
  bool hadamard;
  uint64_t hadamard_seed;
  Fp8E4M3* q_out;              // [num_tokens, num_q_heads, head_dim]
  float* q_scale;              // [q_groups]: amax bits during the amax pass, then the scale
  // Cache write (num_kv_heads > 0).
  const int64_t* slot_mapping; // [num_tokens]; < 0 = skip
  int64_t num_blocks;
  PagedLayout layout;
  Fp8E4M3* k_cache;
  Fp8E4M3* v_cache;
  CacheScales scales;          // per-token scales are written, static ones read
  uint32_t* error_flags;
};

template <int kHeadDim>
struct RowMap {
  static constexpr int kChunk = 4;
  static constexpr int kRowLanes = kHeadDim / kChunk;
  static constexpr int kRowsPerBlock = kRopeQuantizeThreads / kRowLanes;
  static_assert(kRowLanes <= 32 && 32 % kRowLanes == 0, "a row is a lane group inside one warp");
};

__device__ __forceinline__ void load_bf16x4(const Bf16* src, float (&x)[4]) {
  const uint2 w = *reinterpret_cast<const uint2*>(src);
  const float2 a = bf16x2_to_float2(w.x), b = bf16x2_to_float2(w.y);
  x[0] = a.x;
  x[1] = a.y;
  x[2] = b.x;
  x[3] = b.y;
}

// Loads one lane's 4 channels of a row, applies RoPE (position `pos`) and the rotation. A row past
// the end of its tensor (`in_range` false: padding rows that only keep their warp's shuffles whole)
// reads nothing and is zeros: its tensor may not exist at all (quantize_heads has no K/V, so the
// K/V role's padding rows would otherwise read through a null pointer), and it still takes part in
// the rotation's warp shuffles.
template <int kHeadDim>
__device__ __forceinline__ void load_rotated(const RopeQuantizeParams& p, const Bf16* row, int pos, bool rope,
                                             bool in_range, int lane_in_row, float (&x)[4]) {
  using M = RowMap<kHeadDim>;
  if (in_range) {
    load_bf16x4(row + lane_in_row * M::kChunk, x);
    if (rope) rope_chunk<Bf16, M::kChunk>(x, row, lane_in_row * M::kChunk, p.cos_sin + static_cast<int64_t>(pos) * p.rotary_dim, p.rotary_dim);
  } else {
#pragma unroll
    for (int i = 0; i < M::kChunk; ++i) x[i] = 0.0f;
  }
  if (p.hadamard) random_hadamard<M::kChunk, M::kRowLanes>(x, lane_in_row, p.hadamard_seed);
}

// Pass 1: amax of rope(q) [* H] per Q scale group, as float bits (non-negative floats order like
// their bit patterns, so atomicMax on the bits is a float max).
template <int kHeadDim>
__global__ void __launch_bounds__(kRopeQuantizeThreads) q_amax_kernel(const RopeQuantizeParams p) {
  using M = RowMap<kHeadDim>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * M::kRowsPerBlock + threadIdx.x / M::kRowLanes;
  const int lane_in_row = static_cast<int>(threadIdx.x % M::kRowLanes);
  const bool valid = row < p.num_tokens * p.num_q_heads;
  const int64_t token = valid ? row / p.num_q_heads : 0;
  const int head = valid ? static_cast<int>(row % p.num_q_heads) : 0;
  int pos = 0;
  bool rope = p.cos_sin != nullptr;
  if (rope && valid) {
    pos = p.positions[token];
    if (pos < 0 || pos >= p.max_position) {
      atomicOr(p.error_flags, kErrorPositionOutOfRange);
      pos = 0;
    }
  }
  float x[4];
  load_rotated<kHeadDim>(p, p.q + (token * p.num_q_heads + head) * kHeadDim, pos, rope, valid, lane_in_row, x);
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(x[i]));
  amax = row_max<M::kRowLanes>(amax);
  if (valid && lane_in_row == 0) {
    const int group = head / (p.num_q_heads / p.q_groups);
    atomicMax(reinterpret_cast<unsigned int*>(p.q_scale) + group, __float_as_uint(amax));
  }
}

// Pass 2: amax -> scale (scales.h convention), in place.
__global__ void amax_to_scale_kernel(float* scale, int count) {
  const int i = static_cast<int>(threadIdx.x);
  if (i < count) scale[i] = scale_from_amax(scale[i], kE4M3Max);
}

// Pass 3: rows [0, T*Hq) quantise Q; rows [T*Hq, T*(Hq+Hk)) write K and V of one (token, KV head).
template <int kHeadDim>
__global__ void __launch_bounds__(kRopeQuantizeThreads) rope_quantize_kernel(const RopeQuantizeParams p) {
  using M = RowMap<kHeadDim>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * M::kRowsPerBlock + threadIdx.x / M::kRowLanes;
  const int lane_in_row = static_cast<int>(threadIdx.x % M::kRowLanes);
  const int64_t q_rows = p.num_tokens * p.num_q_heads;
  const int64_t kv_rows = p.num_tokens * p.num_kv_heads;
  const bool rope = p.cos_sin != nullptr;
  // Q rows are padded to whole warps so that no warp mixes the two roles (their shuffles differ).
  constexpr int kRowsPerWarp = 32 / M::kRowLanes;
  const int64_t q_rows_padded = (q_rows + kRowsPerWarp - 1) / kRowsPerWarp * kRowsPerWarp;
  if (row < q_rows_padded) {
    const bool valid = row < q_rows;
    const int64_t q_row = valid ? row : 0;
    const int64_t token = q_row / p.num_q_heads;
    const int head = static_cast<int>(q_row % p.num_q_heads);
    int pos = rope && valid ? p.positions[token] : 0;
    if (pos < 0 || pos >= p.max_position) pos = 0;  // reported by the amax pass
    float x[4];
    load_rotated<kHeadDim>(p, p.q + q_row * kHeadDim, pos, rope, valid, lane_in_row, x);
    const float scale = p.q_scale[head / (p.num_q_heads / p.q_groups)];
    const uint32_t codes =
        float4_to_fp8x4<Fp8E4M3>(quantize_quotient(x[0], scale), quantize_quotient(x[1], scale),
                                 quantize_quotient(x[2], scale), quantize_quotient(x[3], scale));
    if (valid) *reinterpret_cast<uint32_t*>(p.q_out + q_row * kHeadDim + lane_in_row * M::kChunk) = codes;
    return;
  }
  const int64_t kv_row = row - q_rows_padded;
  const bool in_range = kv_row < kv_rows;
  const int64_t token = in_range ? kv_row / p.num_kv_heads : 0;
  const int head = in_range ? static_cast<int>(kv_row % p.num_kv_heads) : 0;
  const int64_t slot = in_range ? p.slot_mapping[token] : -1;
  bool active = slot >= 0;
  if (active && p.layout.slot_block(slot) >= p.num_blocks) {
    atomicOr(p.error_flags, kErrorSlotOutOfRange);
    active = false;
  }
  int pos = rope && in_range ? p.positions[token] : 0;
  if (pos < 0 || pos >= p.max_position) {
    if (active) atomicOr(p.error_flags, kErrorPositionOutOfRange);
    active = false;
    pos = 0;
  }
  const int64_t block = active ? p.layout.slot_block(slot) : 0;
  const int in_block = active ? p.layout.slot_position(slot) : 0;
  const int64_t in_offset = (token * p.num_kv_heads + head) * kHeadDim;
  const int64_t cache_offset = p.layout.token_offset(block, head, in_block) + lane_in_row * M::kChunk;
  const int64_t scale_offset = p.layout.token_scale_offset(block, head, in_block);
  const bool per_token = p.scales.per_token();
  float k[4], v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  load_rotated<kHeadDim>(p, p.k + in_offset, pos, rope, in_range, lane_in_row, k);
  if (in_range) load_bf16x4(p.v + in_offset + lane_in_row * M::kChunk, v);
  const float k_static = p.scales.k_of_head(head);
  const float v_static = p.scales.v_of_head(head);
  quantize_store_chunk<Fp8E4M3, M::kChunk, M::kRowLanes>(k, p.k_cache + cache_offset, per_token, k_static,
                                                         per_token ? p.scales.k_token + scale_offset : nullptr, active);
  quantize_store_chunk<Fp8E4M3, M::kChunk, M::kRowLanes>(v, p.v_cache + cache_offset, per_token, v_static,
                                                         per_token ? p.scales.v_token + scale_offset : nullptr, active);
}

}  // namespace fp8kv::cuda_detail

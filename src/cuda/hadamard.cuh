// Random-sign Hadamard rotation of one head row (incoherent processing, FlashAttention-3 sec. 3.3):
//     y = H_d * diag(s) * x / sqrt(d),   s_c = +-1 from a seeded hash of the channel index.
// The matrix is orthogonal, so applying it to both Q and K leaves every q.k unchanged while an
// outlier channel is spread over all d channels, which shrinks the amax that sets the FP8 scale.
//
// Layout: a row of d = kRowLanes * kChunk channels lives in an aligned group of kRowLanes lanes,
// lane l holding channels [l * kChunk, (l + 1) * kChunk). The fast Walsh-Hadamard transform runs
// its low log2(kChunk) butterfly stages in registers and the rest across lanes with xor-shuffles.
#pragma once

#include <cstdint>

namespace fp8kv::cuda_detail {

// +1 or -1 for channel c, fixed by the seed (SplitMix64 finaliser).
__host__ __device__ __forceinline__ float hadamard_sign(uint64_t seed, int c) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(c + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (z & 1u) ? -1.0f : 1.0f;
}

template <int kChunk, int kRowLanes>
__device__ __forceinline__ void random_hadamard(float (&x)[kChunk], int lane_in_row, uint64_t seed) {
  constexpr int kDim = kChunk * kRowLanes;
#pragma unroll
  for (int i = 0; i < kChunk; ++i) x[i] *= hadamard_sign(seed, lane_in_row * kChunk + i);
#pragma unroll
  for (int h = 1; h < kChunk; h *= 2) {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      if ((i & h) == 0) {
        const float a = x[i], b = x[i + h];
        x[i] = a + b;
        x[i + h] = a - b;
      }
    }
  }
#pragma unroll
  for (int lane_bit = 1; lane_bit < kRowLanes; lane_bit *= 2) {
#pragma unroll
    for (int i = 0; i < kChunk; ++i) {
      const float other = __shfl_xor_sync(0xffffffffu, x[i], lane_bit, kRowLanes);
      x[i] = (lane_in_row & lane_bit) ? other - x[i] : x[i] + other;
    }
  }
  const float norm = rsqrtf(static_cast<float>(kDim));
#pragma unroll
  for (int i = 0; i < kChunk; ++i) x[i] *= norm;
}

}  // namespace fp8kv::cuda_detail

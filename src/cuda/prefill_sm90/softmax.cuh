// Online softmax over the S accumulator of one consumer warpgroup (64 rows x kBlockN keys).
//
// Each thread holds two rows (r and r + 8 of its warp's 16) and, per row, 2 columns of every
// 8-column group; the 4 threads of a quad together hold whole rows, so row reductions are two
// xor-shuffles. Statistics are FP32. The exponentials run on exp2 with log2(e) and every descale
// folded into one multiplier (scale_log2).
//
// Conditional rescaling (kConditional; kernel.cuh says which kernels use it): a row's factor is
// exactly 1 unless the tile raised its max, and when no row of a warp raised its max (a vote) the
// O rescale is skipped; past the first few tiles of a long row that is most tiles. The
// unconditional form computes every factor as exp2 of (old max - new max), which an FFMA turns
// into 1 +- a few ulp when the max did not move. Measured with one-level FP8 accumulation (H100,
// 2026-11-24, same seed): long-context retrieval error at 128k keys 3.24e-2 with that factor,
// 1.65e-3 with the exact 1 (64k 1.43e-2 -> 1.79e-3, 32k 7.6e-3 -> 1.7e-3), presumably because
// each FP32 multiply by 1 +- ulp refreshes low bits of O that the FP8 tensor cores truncate again
// on the next accumulation.
// Measured and not kept: FlashAttention-4's threshold (move the max only when a tile exceeds it
// by more than 8 in log2 units, so P <= 256). It ran no faster than the exact max (Qwen3-8B 16k
// causal 2831-2879 us against 2822-2856, separate device calls), and the dominant probability is
// then 2^d (d in [0, 8]) instead of exactly 1: its E4M3 rounding (up to 6%) broke the bound of 2x
// the naive same-precision error on peaked rows (CudaPrefill accumulation-mode test, 1.57e-2
// against 1.44e-2).
#pragma once

#include <cmath>

#include "cuda/prefill_sm90/poly_exp2.cuh"
#include "cuda/prefill_sm90/sm90_primitives.cuh"

namespace fp8kv::cuda::sm90 {

// kPolyExpPeriod: every kPolyExpPeriod-th group of 4 S registers takes its exponentials from
// poly_exp2 (0: none). kRowsApart: the thread's two rows one after the other (step_rows_apart).
template <int kSRegs, bool kConditional, int kPolyExpPeriod = 0, bool kRowsApart = false>
struct OnlineSoftmax {
  // -inf until the row has seen a visible key; conditional: scaled (log2) units, else raw S units.
  float row_max[2];
  float row_sum[2];  // per thread partial sums; reduced over the quad once, at the end

  __device__ void init() {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.0f;
  }

  static __device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
  }
  static __device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
  }

  static constexpr int kGroups = kSRegs / 4;
  static_assert(kGroups % 4 == 0, "4 partial accumulators per row");

  // The max of this thread's values of row r (0: row r, 1: row r + 8) in S. The row max and the
  // row sum are split over 4 independent partial accumulators per row: an SM sub-partition runs
  // only one warp of each consumer warpgroup, so long dependency chains would leave its pipes idle
  // (measured on the H100: FP8 one-level 7-18% faster than with one running max and sum).
  // kSeeded: the first partial also takes `seed` (step_rows_apart's ordering token).
  template <bool kSeeded>
  static __device__ __forceinline__ float thread_row_max(const float (&s)[kSRegs], int r, float seed = -INFINITY) {
    float part[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) part[k] = fmaxf(s[4 * k + 2 * r], s[4 * k + 2 * r + 1]);
    if constexpr (kSeeded) part[0] = fmaxf(part[0], seed);
#pragma unroll
    for (int j = 4; j < kGroups; ++j) part[j % 4] = fmaxf(part[j % 4], fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
    return fmaxf(fmaxf(part[0], part[1]), fmaxf(part[2], part[3]));
  }

  // Conditional rescaling: row r takes the tile's max m (raw S units, reduced over the quad) if
  // it is larger. Returns whether it moved; `alpha` is O's factor, `base` what the exponentials
  // subtract. Against row_max = -inf any finite tile max moves it, and alpha = exp2(-inf) = 0
  // clears nothing but zeros. A row that has seen only masked keys keeps max = -inf and
  // exponentiates against 0, so every probability is exp2(-inf) = 0 rather than NaN. Scaling is
  // monotonic (scale_log2 > 0): the max of the scaled tile maxima is the scaled max.
  __device__ __forceinline__ bool move_max(int r, float m, float scale_log2, float& alpha, float& base) {
    const float tile_max = m * scale_log2;
    const bool move = tile_max > row_max[r];
    alpha = move ? fast_exp2(row_max[r] - tile_max) : 1.0f;
    if (move) row_max[r] = tile_max;
    base = row_max[r] == -INFINITY ? 0.0f : row_max[r];
    return move;
  }

  // One row's sum over a tile, kept as 4 partial sums (see thread_row_max): x is the value of S
  // register group j in column k (0, 1) of the thread's pair.
  static __device__ __forceinline__ void add_to_partials(float (&sum)[4], int j, int k, float x) {
    if (j < 2) {
      sum[2 * j + k] = x;
    } else {
      sum[2 * (j % 2) + k] += x;
    }
  }
  // Row r's running sum moves to the tile's max (alpha) and takes the tile's partial sums.
  __device__ __forceinline__ void add_tile_sum(int r, float alpha, const float (&sum)[4]) {
    row_sum[r] = row_sum[r] * alpha + ((sum[0] + sum[1]) + (sum[2] + sum[3]));
  }

  // exp2(x * scale_log2 - base) for a value of S register group j: on the FMA pipes for every
  // kPolyExpPeriod-th group (poly_scale and poly_base are its operands, poly_exp2.cuh), else MUFU.
  static __device__ __forceinline__ float exp_of(float x, int j, float scale_log2, float base, float poly_scale,
                                                 float poly_base) {
    if (kPolyExpPeriod > 0 && j % kPolyExpPeriod == kPolyExpPeriod - 1) return poly_exp2(x, poly_scale, poly_base);
    return fast_exp2(fmaf(x, scale_log2, -base));
  }

  // Turns S (raw, masked entries = -inf) into unnormalised probabilities in place and returns the
  // factors by which the O accumulator rows must be rescaled and (conditional) whether any row of
  // this warp moved its max (otherwise every factor of the warp is 1 and the rescale can be
  // skipped; unconditional: true).
  __device__ bool step(float (&s)[kSRegs], float scale_log2, float (&alpha)[2]) {
    if constexpr (kRowsApart) return step_rows_apart(s, scale_log2, alpha);
    float m[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m[r] = thread_row_max<false>(s, r);
      if constexpr (!kConditional) m[r] = fmaxf(m[r], row_max[r]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 1));
#pragma unroll
    for (int r = 0; r < 2; ++r) m[r] = fmaxf(m[r], __shfl_xor_sync(0xffffffffu, m[r], 2));
    float base[2];
    [[maybe_unused]] bool move[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // A row that has seen only masked keys keeps max = -inf and exponentiates against 0, so
      // every probability is exp2(-inf) = 0 rather than NaN.
      if constexpr (kConditional) {
        move[r] = move_max(r, m[r], scale_log2, alpha[r], base[r]);
      } else {
        base[r] = m[r] == -INFINITY ? 0.0f : m[r] * scale_log2;
        alpha[r] = row_max[r] == -INFINITY ? (m[r] == -INFINITY ? 1.0f : 0.0f)
                                           : fast_exp2(row_max[r] * scale_log2 - base[r]);
        row_max[r] = m[r];
      }
    }
    [[maybe_unused]] const float poly_scale = -scale_log2 * (1.0f / kPolyExpClamp);
    [[maybe_unused]] const float poly_base[2] = {base[0] * (1.0f / kPolyExpClamp),
                                                 base[1] * (1.0f / kPolyExpClamp)};
    float sum[2][4];
#pragma unroll
    for (int j = 0; j < kGroups; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float& x = s[4 * j + e];
        x = exp_of(x, j, scale_log2, base[e >> 1], poly_scale, poly_base[e >> 1]);
        add_to_partials(sum[e >> 1], j, e & 1, x);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) add_tile_sum(r, alpha[r], sum[r]);
    if constexpr (kConditional) {
      return __any_sync(0xffffffffu, move[0] || move[1]);
    } else {
      return true;
    }
  }

  // step() with the thread's two rows one after the other: row r + 8's max waits (through an FFMA
  // that always gives -inf) on one of row r's first exponentials, so that ptxas runs part of its
  // FMNMX beside row r's MUFU work instead of all of both rows' before it. The serial-turn kernels
  // (128 x 256, 192 x 128 at head dim 128) use it. Measured on the 256-key kernel (H100,
  // 2026-11-25, 4 interleaved rounds, FP8 default): Qwen3-8B 16k causal 2618-2627 us against
  // 2661-2711, non-causal 5170-5259 against 5258-5347, Qwen3-0.6B 8 x 4096 751-756 against
  // 757-765, Qwen3-8B 4 x 4096 level; on the 192 x 128 one, README "Fourteenth session".
  __device__ bool step_rows_apart(float (&s)[kSRegs], float scale_log2, float (&alpha)[2]) {
    static_assert(kConditional, "conditional rescaling only");
    [[maybe_unused]] const float poly_scale = -scale_log2 * (1.0f / kPolyExpClamp);
    bool move[2];
    float token = -INFINITY;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Row r's max also takes the token (-inf): left out, ptxas serialises the kernel's wgmmas
      // (C7511), register allocation being what it is.
      const float m = quad_max(thread_row_max<true>(s, r, token));
      float base;
      move[r] = move_max(r, m, scale_log2, alpha[r], base);
      [[maybe_unused]] const float poly_base = base * (1.0f / kPolyExpClamp);
      float sum[4];
#pragma unroll
      for (int j = 0; j < kGroups; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& x = s[4 * j + 2 * r + e];
          x = exp_of(x, j, scale_log2, base, poly_scale, poly_base);
          add_to_partials(sum, j, e, x);
        }
      }
      add_tile_sum(r, alpha[r], sum);
      // Exactly -inf (the probabilities are finite; a NaN is ignored by fmaxf), which ptxas cannot
      // know: an exponential of group kGroups / 4 of row r.
      if (r == 0) token = fmaf(s[4 * (kGroups / 4)], 0.0f, -INFINITY);
    }
    return __any_sync(0xffffffffu, move[0] || move[1]);
  }

  // 1 / (row sum) per row, 0 for a row without keys (its output is defined as zero).
  __device__ void finalize(float (&inv_sum)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float l = quad_sum(row_sum[r]);
      inv_sum[r] = l > 0.0f ? 1.0f / l : 0.0f;
    }
  }
};

// Multiplies accumulator rows: register 4j+e belongs to row e / 2.
template <int N>
__device__ __forceinline__ void scale_rows(float (&acc)[N], const float (&factor)[2]) {
#pragma unroll
  for (int j = 0; j < N / 4; ++j) {
    acc[4 * j + 0] *= factor[0];
    acc[4 * j + 1] *= factor[0];
    acc[4 * j + 2] *= factor[1];
    acc[4 * j + 3] *= factor[1];
  }
}

}  // namespace fp8kv::cuda::sm90

// The prefill kernel: one CTA computes one 128-row query block of one query head, with a
// producer warpgroup (TMA loads, FP8 V transpose) and two consumer warpgroups (64 rows each:
// S = Q K^T, online softmax, O += P V). setmaxnreg moves registers from the producer, which needs
// few, to the consumers, which hold S, O and (two-level accumulation) the per-tile O.
#pragma once

#include <cmath>

#include "cuda/prefill_sm90/epilogue.cuh"
#include "cuda/prefill_sm90/mainloop.cuh"
#include "cuda/prefill_sm90/softmax.cuh"
#include "cuda/prefill_sm90/tile_scheduler.cuh"

namespace fp8kv::cuda::sm90 {

__device__ __forceinline__ float load_descale(const float* ptr, int stride, int kv_head) {
  return ptr ? ptr[kv_head * stride] : 1.0f;
}

template <class Traits>
__device__ void consumer(const PrefillParams& p, const WorkTile& t, const SmemView<Traits>& sm, int n_tiles,
                         int warpgroup) {
  using G = Gemms<Traits>;
  constexpr bool kTwoLevelCapable = Traits::kFp8;
  const int thread = static_cast<int>(threadIdx.x) % 128;
  const int warp = thread / 32, lane = thread % 32;
  const int kv_head = t.q_head / p.head_group;
  const bool token_scales = Traits::kPaged && p.k_token_scale != nullptr;
  const float scale_log2 = p.softmax_scale_log2 * load_descale(p.q_descale, p.q_descale_stride, kv_head) *
                           load_descale(p.k_descale, p.k_descale_stride, kv_head);
  const float v_descale = load_descale(p.v_descale, p.v_descale_stride, kv_head);
  // Per-token V scales multiply P column-wise before P is quantised, so every tile's product must
  // be accumulated on its own (scaled back by the tile's largest V scale): always two-level then.
  const bool two_level = kTwoLevelCapable && (p.two_level || token_scales);

  const int wg_row0 = t.m_block * Traits::kBlockM + warpgroup * 64;
  const int row0 = wg_row0 + warp * 16 + lane / 4;  // this thread's rows: row0, row0 + 8
  const int col_in_group = 2 * (lane % 4);
  const int causal_offset = t.len_k - t.len_q;

  float o[G::kORegs];
#pragma unroll
  for (int i = 0; i < G::kORegs; ++i) o[i] = 0.0f;
  OnlineSoftmax<G::kSRegs> softmax;
  softmax.init();

  if (n_tiles > 0) Barrier::wait(sm.q_full(), 0);
  for (int iter = 0; iter < n_tiles; ++iter) {
    const Stage st = stage_of<Traits>(iter);
    const int n0 = iter * Traits::kBlockN;
    float s[G::kSRegs];
    Barrier::wait(sm.k_full(st.index), st.phase);
    fence_registers(s);
    cute::warpgroup_arrive();
    G::issue_qk(s, sm.q(), sm.k(st.index), warpgroup);
    cute::warpgroup_commit_batch();
    cute::warpgroup_wait<0>();
    fence_registers(s);
    if (token_scales) {
      const float* ks = sm.k_scale(st.index);
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
        const float2 k2 = *reinterpret_cast<const float2*>(ks + 8 * j + col_in_group);
        s[4 * j + 0] *= k2.x;
        s[4 * j + 1] *= k2.y;
        s[4 * j + 2] *= k2.x;
        s[4 * j + 3] *= k2.y;
      }
    }
    Barrier::arrive(sm.k_empty(st.index));

    // Only the tiles that cross the sequence end or the causal diagonal pay for the mask.
    const bool need_mask = n0 + Traits::kBlockN > t.len_k || (p.causal && n0 + Traits::kBlockN - 1 > wg_row0 + causal_offset);
    if (need_mask) {
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = n0 + 8 * j + col_in_group + (e & 1);
          const int row = row0 + 8 * (e >> 1);
          if (col >= t.len_k || (p.causal && col > row + causal_offset)) s[4 * j + e] = -INFINITY;
        }
      }
    }
    float alpha[2];
    softmax.step(s, scale_log2, alpha);

    float tile_v_scale = 1.0f;
    if (token_scales) {
      // P[:, j] * v_scale[j] / max_j v_scale: in [0, 1] again, so E4M3 keeps its relative precision.
      const float* vs = sm.v_scale(st.index);
      float vmax = 0.0f;
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
        const float2 v2 = *reinterpret_cast<const float2*>(vs + 8 * j + col_in_group);
        vmax = fmaxf(vmax, fmaxf(v2.x, v2.y));
      }
      tile_v_scale = OnlineSoftmax<G::kSRegs>::quad_max(vmax);
      const float inv = 1.0f / tile_v_scale;
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
        const float2 v2 = *reinterpret_cast<const float2*>(vs + 8 * j + col_in_group);
        s[4 * j + 0] *= v2.x * inv;
        s[4 * j + 1] *= v2.y * inv;
        s[4 * j + 2] *= v2.x * inv;
        s[4 * j + 3] *= v2.y * inv;
      }
    }
    uint32_t pa[G::kPRegs];
    G::make_p_fragments(s, pa);

    uint64_t* v_full = Traits::kFp8 ? sm.vt_full(st.index) : sm.v_full(st.index);
    uint64_t* v_empty = Traits::kFp8 ? sm.vt_empty(st.index) : sm.v_empty(st.index);
    const uint8_t* v_operand = Traits::kFp8 ? sm.vt(st.index) : sm.v(st.index);
    if (two_level) {
      float o_tile[G::kORegs];
      Barrier::wait(v_full, st.phase);
      fence_registers(o_tile);
      fence_registers(pa);
      cute::warpgroup_arrive();
      G::issue_pv(o_tile, pa, v_operand, false);
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
      fence_registers(o_tile);
      Barrier::arrive(v_empty);
#pragma unroll
      for (int j = 0; j < G::kORegs / 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * j + e] = fmaf(o[4 * j + e], alpha[e >> 1], o_tile[4 * j + e] * tile_v_scale);
      }
    } else {
      scale_rows(o, alpha);
      Barrier::wait(v_full, st.phase);
      fence_registers(o);
      fence_registers(pa);
      cute::warpgroup_arrive();
      G::issue_pv(o, pa, v_operand, true);
      cute::warpgroup_commit_batch();
      cute::warpgroup_wait<0>();
      fence_registers(o);
      Barrier::arrive(v_empty);
    }
  }

  float factor[2];
  softmax.finalize(factor);
  factor[0] *= v_descale;
  factor[1] *= v_descale;
  scale_rows(o, factor);
  store_output<Traits>(p, t, o, warpgroup, thread);
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) prefill_kernel(const __grid_constant__ PrefillParams p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const WorkTile t = get_work_tile<Traits>(p);
  if (!t.valid) return;
  const SmemView<Traits> sm{base};
  const int n_tiles = num_kv_tiles<Traits>(t, p.causal);
  if (threadIdx.x == 0) init_barriers<Traits>(sm);
  __syncthreads();
  const int warpgroup = static_cast<int>(threadIdx.x) / 128;
  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    producer<Traits>(p, t, sm, n_tiles);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    consumer<Traits>(p, t, sm, n_tiles, warpgroup - 1);
  }
}

}  // namespace fp8kv::cuda::sm90

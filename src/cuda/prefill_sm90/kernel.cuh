// The prefill kernel: a persistent CTA per SM computes query blocks (64 rows per consumer
// warpgroup) of one query head after another (tile_scheduler.cuh), with a producer warpgroup (TMA
// loads, FP8 V transpose) and two or three consumer warpgroups (S = Q K^T, online softmax,
// O += P V). setmaxnreg moves registers from the producer, which needs few, to the consumers,
// which hold S, O and (two-level accumulation) the per-tile O.
#pragma once

#include <cmath>
#include <type_traits>

#include "cuda/prefill_sm90/epilogue.cuh"
#include "cuda/prefill_sm90/mainloop.cuh"
#include "cuda/prefill_sm90/softmax.cuh"
#include "cuda/prefill_sm90/tile_scheduler.cuh"

namespace fp8kv::cuda::sm90 {

// A warp-uniform value broadcast from lane 0, so that ptxas knows it is uniform. Used for what
// decides the consumers' branches (whether there is a tile, its K/V tile count): the stage, the
// descriptors and the barrier addresses that flow through those branches then stay uniform
// (otherwise every value joined after them is per-thread: ~100 more R2UR moves, and spills). The
// tile's other fields stay in ordinary registers: as uniform values they crowded the 63 uniform
// registers, and ptxas rebuilt the Q descriptors every turn (+20 instructions per turn).
__device__ __forceinline__ int warp_uniform(int x) { return __shfl_sync(0xffffffffu, x, 0); }

// `a` if kFirst, else `b` (arrays whose sizes differ with the template parameters).
template <bool kFirst, class A, class B>
__device__ __forceinline__ auto& pick(A& a, B& b) {
  if constexpr (kFirst) {
    return a;
  } else {
    return b;
  }
}

__device__ __forceinline__ float load_descale(const float* ptr, int stride, int kv_head) {
  return ptr ? ptr[kv_head * stride] : 1.0f;
}

// Named barriers that make the consumer warpgroups take turns issuing their GEMMs (FA3's
// ping-pong): while one warpgroup runs its softmax on the CUDA cores (exp2 on the MUFU units costs
// about as much as an FP8 tile's wgmma), the others' P.V and Q.K^T products run on the tensor
// cores. Warpgroup w waits on barrier w and, once it has issued, lets warpgroup w + 1 (mod the
// count) go: with three consumer warpgroups a softmax has two others' GEMMs to hide under.
constexpr int kPingPongBarrierBase = 2;  // ids 2 to 4 (1 is the producer's)

__device__ __forceinline__ void pingpong_sync(int warpgroup) {
  cutlass::arch::NamedBarrier::sync(256, kPingPongBarrierBase + warpgroup);
}
template <int kPingPongWarpgroups>
__device__ __forceinline__ void pingpong_arrive_next(int warpgroup) {
  const int next = kPingPongWarpgroups == 2 ? warpgroup ^ 1 : (warpgroup + 1) % kPingPongWarpgroups;
  cutlass::arch::NamedBarrier::arrive(256, kPingPongBarrierBase + next);
}

// Turns first_turn..n_tiles of a work tile for a warpgroup whose rows need no more K/V tiles
// (warpgroup_kv_tiles, tile_scheduler.cuh): it keeps its place in the ping-pong rotation, so that
// every warpgroup still takes n_tiles + 1 turns per work tile, and releases the stages of the
// tiles it does not read, without waiting for them, so the others' GEMMs run back to back. Turn
// j releases tile j - 1 (`next_release` is its stage), one turn after a computing warpgroup would
// release its K: by then, through the rotation, every warpgroup has released the tile that last
// used the stage (kStages >= 2 tiles earlier), so the arrival counts toward the right phase.
template <class Traits>
__device__ void pass_turns(const SmemView<Traits>& sm, int warpgroup, int first_turn, int n_tiles, Stage next_release) {
  for (int turn = first_turn; turn <= n_tiles; ++turn) {
    pingpong_sync(warpgroup);
    if (turn > 0) {
      Barrier::arrive(sm.k_empty(next_release.index));
      Barrier::arrive(Traits::kFp8 ? sm.vt_empty(next_release.index) : sm.v_empty(next_release.index));
      next_release = next_stage<Traits>(next_release);
    }
    pingpong_arrive_next<Traits::kConsumerWarpgroups>(warpgroup);
  }
}

// One consumer warpgroup: 64 query rows, which need own_tiles of the work tile's n_tiles K/V
// tiles (at least one). Turn i (0..own_tiles) issues, as one ping-pong turn, P.V of
// tile i - 1 and Q.K^T of tile i. Serial schedule (BF16): wait for both, then the softmax of tile
// i. Overlapped schedule (FP8, Traits::kOverlap): Q.K^T and P.V are committed as two groups and
// the source waits for P.V only after the softmax; ptxas (CUDA 13.0) nevertheless places that
// wait before the softmax: short of registers, it gives the row max's temporaries the P fragments
// that the P.V in flight still reads. So in the machine code the softmax starts once P.V has
// completed. Either way the P.V result is then folded into O and the softmax output becomes the P
// of the next turn. Measured and not kept (H100, 2026-11-25, README "Tenth session"): the softmax
// under its own P.V (a basic-block boundary before the wait keeps ptxas from hoisting it) was
// 3-7% slower, and 32 of O's registers in shared memory (which frees the P fragments) 4-5%.
// Measured alternative (H100, 2026-11-24): waiting for P.V of tile i - 2 at the top of turn i,
// behind the barrier waits, with P double-buffered, so that the softmax does run under P.V, was
// 0.5% slower with two-level accumulation (ptxas spills 92 bytes) and 4.4% slower one-level
// (geometric means over the 25 bench points): the fold or rescale then sits before the issue.
// The first and last turns are separate instantiations (and two-level accumulation a template
// parameter) so that no wgmma sits on a runtime branch: ptxas serialises every wgmma of a function
// that has one.
// `q_buffer`: the Q buffer (and work slot) of this work tile, released after the output store.
// `kv_done`: K/V tiles this CTA consumed before this work tile (the stage ring runs on across
// work tiles).
template <class Traits, bool kTwoLevel>
__device__ void consumer_loop(const PrefillParams& p, const WorkTile& t, const SmemView<Traits>& sm, int n_tiles,
                              int own_tiles, int warpgroup, int q_buffer, int kv_done) {
  using G = Gemms<Traits>;
  const int thread = static_cast<int>(threadIdx.x) % 128;
  const int warp = thread / 32, lane = thread % 32;
  const int kv_head = t.q_head / p.head_group;
  const bool token_scales = Traits::kPaged && p.k_token_scale != nullptr;
  const float scale_log2 = p.softmax_scale_log2 * load_descale(p.q_descale, p.q_descale_stride, kv_head) *
                           load_descale(p.k_descale, p.k_descale_stride, kv_head);
  const float v_descale = load_descale(p.v_descale, p.v_descale_stride, kv_head);
  const int wg_row0 = block_row0<Traits>(t) + warpgroup * 64;
  const int row0 = wg_row0 + warp * 16 + lane / 4;  // this thread's rows: row0, row0 + 8
  const int col_in_group = 2 * (lane % 4);
  const int causal_offset = t.len_k - t.len_q;

  float o[G::kORegs];
#pragma unroll
  for (int i = 0; i < G::kORegs; ++i) o[i] = 0.0f;
  // Conditional rescaling (softmax.cuh) and multi-tile promotion where they were measured to win
  // (H100, 2026-11-24, A/B against the per-tile rescale and fold in one call, 3 runs each): FP8
  // two-level at d 128 (Qwen3-8B 16k causal 3030 -> 2842 us, non-causal 6035 -> 5682, 1 x 4096
  // 209 -> 197, Qwen3-0.6B 8 x 4096 825 -> 793) and BF16 (d 128 1.7-3.0% faster, Qwen3-0.6B
  // 8 x 4096 within noise; d 64 level). The same code made FP8 at d 64 5% slower and FP8
  // one-level 0.2-4% slower, so those keep the per-tile rescale (as does the paged FP8 kernel,
  // which has no benchmark). The serial-turn kernels (128 x 256, 192 x 128) use it in both modes
  // (not timed against the per-tile rescale; with it, one-level matched two-level on the 128k
  // retrieval test, README).
  constexpr bool kConditional =
      !Traits::kFp8 || Traits::kSerialTurn || (kTwoLevel && Traits::kOverlap && Traits::kHeadDim == 128);
  // The overlapped two-level schedule accumulates the P.V products of Traits::kPromoteTiles
  // consecutive tiles in the tensor cores before promoting them into the FP32 O.
  constexpr bool kGrouped = kConditional && kTwoLevel && Traits::kOverlap;
  // The FP8 head-dim-128 dense kernel runs the tiles that need no mask (below the diagonal and the
  // sequence end, for all 64 rows) in a loop of their own, without the mask code. Measured (H100,
  // 2026-11-25, README "Tenth session", 3 interleaved rounds): one-level 3.5-4.4% faster at 16k
  // and 1-2.5% at 4096, the default (two-level) within +-1.4%. The serial-turn kernels have it too
  // (not timed without it); the other kernels keep one loop.
  constexpr bool kMaskFreeTurns = Traits::kFp8 && (Traits::kOverlap || Traits::kSerialTurn) && Traits::kHeadDim == 128;
  OnlineSoftmax<G::kSRegs, kConditional, Traits::kPolyExpPeriod, Traits::kSerialTurn> softmax;
  softmax.init();
  // pa (P of the previous tile) lives across turns; S and the per-tile O are declared where they
  // are used: the wgmma asm reads its accumulators ("+f"), so an array that outlived its use
  // would stay live across the loop. The grouped partial product (o_group) does live across turns.
  uint32_t pa[G::kPRegs];
  // Zeroed although the first P.V product of a group overwrites it (accumulate = false): left
  // undefined, ptxas (CUDA 13.0) spills 48 bytes in the dense FP8 d128 kernel and serialises its
  // wgmmas ("insufficient register resources").
  [[maybe_unused]] float o_group[kGrouped ? G::kORegs : 1];
  if constexpr (kGrouped) {
#pragma unroll
    for (int i = 0; i < G::kORegs; ++i) o_group[i] = 0.0f;
  }
  // The factor that brings O to the max the pending partial product is at (the product of the
  // softmax's factors since the last fold), and the previous tile's per-token V scale factor.
  float alpha_acc[2] = {1.0f, 1.0f};
  float tile_v_scale_prev[2] = {1.0f, 1.0f};
  // Grouped: K/V tile k ends its promotion group when (k + 1) & group_mask == 0.
  constexpr int group_mask = Traits::kPromoteTiles - 1;

  // S of tile `iter` (in registers, stage `st` of K) -> unnormalised probabilities: per-token K
  // scales, the mask, the online softmax, per-token V scales. Returns O's rescale factor, whether
  // any row of the warp moved its max (softmax.cuh) and, with per-token V scales, the factor the
  // tile's P.V product must be scaled back by. `may_mask_tag` false: the caller knows that no row
  // of this warpgroup needs the mask on this tile, and the mask code is left out.
  auto scores_to_p = [&](auto may_mask_tag, float (&s)[G::kSRegs], int iter, const Stage& st, float (&alpha)[2],
                         float (&tile_v_scale)[2]) -> bool {
    constexpr bool kMayMask = decltype(may_mask_tag)::value;
    const int n0 = iter * Traits::kBlockN;
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
    } else {
      Barrier::arrive(sm.k_empty(st.index));
    }
    // Only the tiles that cross the sequence end or the causal diagonal pay for the mask.
    const bool need_mask =
        kMayMask && (n0 + Traits::kBlockN > t.len_k || (p.causal && n0 + Traits::kBlockN - 1 > wg_row0 + causal_offset));
    if (need_mask) {
      // Both rules bound a row's visible keys from above: key < min(len_k, row + causal_offset + 1).
      // One limit per row, relative to this thread's first column, leaves a compare and a select
      // per element.
      int limit[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int end = p.causal ? min(t.len_k, row0 + 8 * r + causal_offset + 1) : t.len_k;
        limit[r] = end - n0 - col_in_group;
      }
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (8 * j + (e & 1) >= limit[e >> 1]) s[4 * j + e] = -INFINITY;
        }
      }
    }
    const bool moved = softmax.step(s, scale_log2, alpha);
    tile_v_scale[0] = tile_v_scale[1] = 1.0f;
    if (token_scales) {
      // P[i, j] * v_scale[j] / max over the row's visible keys of v_scale: in [0, 1] again, so E4M3
      // keeps its relative precision. Masked keys (P = 0) are left out of the max: the scale of an
      // unwritten slot past the sequence end is arbitrary.
      const float* vs = sm.v_scale(st.index);
      float vmax[2] = {0.0f, 0.0f};
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
        const float2 v2 = *reinterpret_cast<const float2*>(vs + 8 * j + col_in_group);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          vmax[r] = fmaxf(vmax[r], s[4 * j + 2 * r] > 0.0f ? v2.x : 0.0f);
          vmax[r] = fmaxf(vmax[r], s[4 * j + 2 * r + 1] > 0.0f ? v2.y : 0.0f);
        }
      }
      float inv[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float m = decltype(softmax)::quad_max(vmax[r]);
        tile_v_scale[r] = m > 0.0f ? m : 1.0f;  // a row with no visible key here adds nothing
        inv[r] = 1.0f / tile_v_scale[r];
      }
#pragma unroll
      for (int j = 0; j < G::kSRegs / 4; ++j) {
        const float2 v2 = *reinterpret_cast<const float2*>(vs + 8 * j + col_in_group);
        s[4 * j + 0] *= v2.x * inv[0];
        s[4 * j + 1] *= v2.y * inv[0];
        s[4 * j + 2] *= v2.x * inv[1];
        s[4 * j + 3] *= v2.y * inv[1];
      }
      Barrier::arrive(sm.k_empty(st.index));  // the scales of this stage are no longer needed
    }
    return moved;
  };
  // Two-level accumulation: O moves (alpha_acc) to the max the partial product is at and takes
  // that product, computed from zero by the tensor cores, in FP32. Without per-token V scales the
  // tile's factor is 1: one FFMA per element instead of two instructions (the consumers are close
  // to issue-bound, so this shows in the timings).
  // `o_tile`: the product in the first kORegs registers of an accumulator array.
  auto fold_tile = [&](const auto& o_tile) {
    static_assert(std::extent_v<std::remove_reference_t<decltype(o_tile)>> >= G::kORegs, "a whole product");
    if (token_scales) {
#pragma unroll
      for (int j = 0; j < G::kORegs / 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          o[4 * j + e] =
              fmaf(o[4 * j + e], alpha_acc[e >> 1], o_tile[4 * j + e] * tile_v_scale_prev[e >> 1]);
        }
      }
    } else {
#pragma unroll
      for (int j = 0; j < G::kORegs / 4; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[4 * j + e] = fmaf(o[4 * j + e], alpha_acc[e >> 1], o_tile[4 * j + e]);
      }
    }
  };
  // After the softmax of tile `iter`, once the P.V product of tile iter - 1 has landed. One-level
  // rescales O (conditional: if a row of the warp moved its max). Two-level: a partial product
  // that ends its group (ungrouped: every tile's) has just been folded: O is at tile iter - 1's max
  // and alpha_acc becomes this tile's factor. Inside a group, the partial product moves to this
  // tile's max before the next P.V accumulates into it, and O's pending factor takes this tile's.
  // The warp-uniform branches hold register math only (no wgmma).
  auto after_softmax = [&](int iter, const float (&alpha)[2], const float (&tile_v_scale)[2], bool moved) {
    if constexpr (kTwoLevel) {
      if constexpr (kGrouped) {
        if ((iter & group_mask) != 0) {
          alpha_acc[0] *= alpha[0];
          alpha_acc[1] *= alpha[1];
          if (moved) scale_rows(o_group, alpha);
          return;
        }
      }
      alpha_acc[0] = alpha[0];
      alpha_acc[1] = alpha[1];
      tile_v_scale_prev[0] = tile_v_scale[0];
      tile_v_scale_prev[1] = tile_v_scale[1];
    } else if constexpr (kConditional) {
      if (moved) scale_rows(o, alpha);
    } else {
      scale_rows(o, alpha);
    }
  };

  const uint64_t desc_q = G::q_desc(sm.q(q_buffer), warpgroup);
  const uint64_t desc_k0 = G::k_desc(sm.k(0));
  const uint64_t desc_v0 = G::v_desc(Traits::kFp8 ? sm.vt(0) : sm.v(0));

  // Turn `iter`: K of tile iter in stage st, V of tile iter - 1 in stage prev.
  auto turn = [&](auto has_pv_tag, auto has_qk_tag, auto may_mask_tag, int iter, const Stage& st, const Stage& prev) {
    constexpr bool kHasPV = decltype(has_pv_tag)::value;
    constexpr bool kHasQK = decltype(has_qk_tag)::value;
    uint64_t* v_full = Traits::kFp8 ? sm.vt_full(prev.index) : sm.v_full(prev.index);
    uint64_t* v_empty = Traits::kFp8 ? sm.vt_empty(prev.index) : sm.v_empty(prev.index);
    if constexpr (kHasQK) Barrier::wait(sm.k_full(st.index), st.phase);
    if constexpr (kHasPV) Barrier::wait(v_full, prev.phase);

    float s[G::kSRegs];
    float alpha[2], tile_v_scale[2];
    bool moved = false;
    if constexpr (Traits::kPingPong) pingpong_sync(warpgroup);
    if constexpr (Traits::kOverlap) {
      // Q.K^T of this tile and P.V of the previous one are issued together. P stays in S's fp32
      // registers until P.V has read the previous P fragments. Grouped: P.V of tile iter - 1
      // starts a new partial product when that tile begins a promotion group (a runtime operand
      // of the wgmma, not a branch).
      [[maybe_unused]] float o_tile[kTwoLevel && !kGrouped ? G::kORegs : 1];
      auto& partial = pick<kGrouped>(o_group, o_tile);
      fence_registers(o);
      fence_registers(pa);
      if constexpr (kGrouped) fence_registers(o_group);
      cute::warpgroup_arrive();
      if constexpr (kHasQK) {
        G::issue_qk(s, desc_q, desc_k0, st.index);
        cute::warpgroup_commit_batch();
      }
      if constexpr (kHasPV) {
        if constexpr (kTwoLevel) {
          G::issue_pv(partial, pa, desc_v0, prev.index, kGrouped && ((iter - 1) & group_mask) != 0);
        } else {
          G::issue_pv(o, pa, desc_v0, prev.index, true);
        }
        cute::warpgroup_commit_batch();
      }
      if constexpr (Traits::kPingPong) pingpong_arrive_next<Traits::kConsumerWarpgroups>(warpgroup);
      if constexpr (kHasQK) {
        cute::warpgroup_wait<kHasPV ? 1 : 0>();
        fence_registers(s);
        moved = scores_to_p(may_mask_tag, s, iter, st, alpha, tile_v_scale);
      }
      if constexpr (kHasPV) {
        cute::warpgroup_wait<0>();
        fence_registers(o);
        if constexpr (kTwoLevel) {
          fence_registers(partial);
          // The last turn always folds; otherwise tile iter - 1 ends its group when iter starts one.
          if (!kGrouped || !kHasQK || (iter & group_mask) == 0) fold_tile(partial);
        }
        Barrier::arrive(v_empty);
      }
      if constexpr (!kHasQK) return;
      after_softmax(iter, alpha, tile_v_scale, moved);
    } else {
      if constexpr (kHasPV && kTwoLevel) {
        // The tile's product is folded into O before Q.K^T is issued, so that S and the per-tile
        // O are never live at once.
        float o_tile[G::kORegs];
        fence_registers(pa);
        cute::warpgroup_arrive();
        G::issue_pv(o_tile, pa, desc_v0, prev.index, false);
        cute::warpgroup_commit_batch();
        cute::warpgroup_wait<0>();
        fence_registers(o_tile);
        Barrier::arrive(v_empty);
        fold_tile(o_tile);
      }
      fence_registers(o);
      fence_registers(pa);
      cute::warpgroup_arrive();
      if constexpr (kHasPV && !kTwoLevel) G::issue_pv(o, pa, desc_v0, prev.index, true);
      if constexpr (kHasQK) G::issue_qk(s, desc_q, desc_k0, st.index);
      cute::warpgroup_commit_batch();
      if constexpr (Traits::kPingPong) pingpong_arrive_next<Traits::kConsumerWarpgroups>(warpgroup);
      cute::warpgroup_wait<0>();
      fence_registers(o);
      if constexpr (kHasPV && !kTwoLevel) Barrier::arrive(v_empty);
      if constexpr (!kHasQK) return;
      fence_registers(s);
      moved = scores_to_p(may_mask_tag, s, iter, st, alpha, tile_v_scale);
      if constexpr (kConditional) {
        // BF16 packs P before the rescale branch (H100, 2026-11-24, an earlier form of the
        // conditional softmax: 16k 1.5-2.9% faster than with the branch between the exponentials
        // and the packing).
        G::make_p_fragments(s, pa);
        after_softmax(iter, alpha, tile_v_scale, moved);
        return;
      }
      after_softmax(iter, alpha, tile_v_scale, moved);
    }
    G::make_p_fragments(s, pa);
  };

  // The serial turn (Traits::kSerialTurn: 256-key tiles, and 192 x 128 at head dim 128): P.V of
  // the previous tile completes (and, two-level, is folded into O) before Q.K^T of this one is
  // issued. Two-level, the tile's P.V product is accumulated in the first 64 of S's registers (S is
  // not live yet). With 256-key tiles, as an array of its own, ptxas (CUDA 13.0) placed it beside S
  // and spilled O (624 bytes); in S's last 64 it serialised every wgmma of the kernel. This way a
  // turn needs S + O = 192 registers (ptxas keeps P in S's registers 64-95 between turns); at
  // 192 x 128, S + O = 128 of the 160.
  auto serial_turn = [&](auto has_pv_tag, auto has_qk_tag, auto may_mask_tag, int iter, const Stage& st,
                       const Stage& prev) {
    if constexpr (Traits::kSerialTurn) {
      constexpr bool kHasPV = decltype(has_pv_tag)::value;
      constexpr bool kHasQK = decltype(has_qk_tag)::value;
      if constexpr (kHasQK) Barrier::wait(sm.k_full(st.index), st.phase);
      if constexpr (kHasPV) Barrier::wait(sm.vt_full(prev.index), prev.phase);
      float s[G::kSRegs];
      pingpong_sync(warpgroup);
      if constexpr (kHasPV) {
        if constexpr (kTwoLevel) fence_registers(s);
        fence_registers(pa);
        fence_registers(o);
        cute::warpgroup_arrive();
        if constexpr (kTwoLevel) {
          G::issue_pv(s, pa, desc_v0, prev.index, false);
        } else {
          G::issue_pv(o, pa, desc_v0, prev.index, true);
        }
        cute::warpgroup_commit_batch();
        cute::warpgroup_wait<0>();
        fence_registers(o);
        Barrier::arrive(sm.vt_empty(prev.index));
        if constexpr (kTwoLevel) {
          fence_registers(s);
          fold_tile(s);
        }
      }
      if constexpr (!kHasQK) {
        pingpong_arrive_next<Traits::kConsumerWarpgroups>(warpgroup);
        return;
      }
      fence_registers(s);
      cute::warpgroup_arrive();
      G::issue_qk(s, desc_q, desc_k0, st.index);
      cute::warpgroup_commit_batch();
      pingpong_arrive_next<Traits::kConsumerWarpgroups>(warpgroup);
      cute::warpgroup_wait<0>();
      fence_registers(s);
      float alpha[2], tile_v_scale[2];
      const bool moved = scores_to_p(may_mask_tag, s, iter, st, alpha, tile_v_scale);
      G::make_p_fragments(s, pa);
      after_softmax(iter, alpha, tile_v_scale, moved);
    }
  };
  auto any_turn = [&](auto... args) {
    if constexpr (Traits::kSerialTurn) {
      serial_turn(args...);
    } else {
      turn(args...);
    }
  };

  Stage st = stage_of<Traits>(kv_done);
  any_turn(std::false_type{}, std::true_type{}, std::true_type{}, 0, st, st);
  int iter = 1;
  if constexpr (kMaskFreeTurns) {
    // Tiles before first_masked end at or before every row's visible_end (the row bound of the
    // mask, at this warpgroup's first row, which has the smallest).
    const int visible_end = p.causal ? min(t.len_k, wg_row0 + causal_offset + 1) : t.len_k;
    const int first_masked = warp_uniform(min(own_tiles, visible_end > 0 ? visible_end / Traits::kBlockN : 0));
    for (; iter < first_masked; ++iter) {
      const Stage prev = st;
      st = next_stage<Traits>(st);
      any_turn(std::true_type{}, std::true_type{}, std::false_type{}, iter, st, prev);
    }
  }
  for (; iter < own_tiles; ++iter) {
    const Stage prev = st;
    st = next_stage<Traits>(st);
    any_turn(std::true_type{}, std::true_type{}, std::true_type{}, iter, st, prev);
  }
  any_turn(std::true_type{}, std::false_type{}, std::true_type{}, own_tiles, st, st);

  float factor[2];
  softmax.finalize(factor);
  factor[0] *= v_descale;
  factor[1] *= v_descale;
  scale_rows(o, factor);
  // The tile is read again from shared memory rather than kept in registers through the loop.
  store_output<Traits>(p, load_work_tile(sm.work(q_buffer)), o, warpgroup, thread);
  // Q and the work slot are no longer needed: the producer may load a later tile's Q here.
  Barrier::arrive(sm.q_empty(q_buffer));
  if constexpr (Traits::kPassesTurns) {
    if (own_tiles < n_tiles) pass_turns<Traits>(sm, warpgroup, own_tiles + 1, n_tiles, next_stage<Traits>(st));
  }
}

// A consumer warpgroup's whole job: the work tiles the producer publishes, in order, until it
// says there are no more. Measured and not kept (H100, 2026-11-24): one copy of this code per
// warpgroup, with the warpgroup a constant (immediate barrier ids; the two-level turn 12 SASS
// instructions shorter, the one-level one 9 longer), was 1-10% slower at the d128 bench points
// (Qwen3-8B 1 x 512 14.3 -> 15.6 us, 16k 1-3%) and within +-3% at head dim 64: twice the code.
template <class Traits>
__device__ void consumer(const PrefillParams& p, const SmemView<Traits>& sm, int warpgroup) {
  // Per-token V scales multiply P column-wise before P is quantised, so every tile's product must
  // be accumulated on its own (scaled back by the tile's largest V scale): always two-level then.
  // Otherwise two-level is for tiles whose chain of K/V tiles is longer than p.one_level_max_keys.
  const bool token_scales = Traits::kPaged && p.k_token_scale != nullptr;
  int kv_done = 0;
  // Ping-pong across work tiles: the last warpgroup also lets warpgroup 0 go after issuing a
  // tile's last P.V, so that warpgroup 0's first Q.K^T of the next tile runs under that P.V and the
  // last warpgroup's output store. That is one arrival per turn for every warpgroup, plus the last
  // warpgroup's first one here (warpgroup 0 goes first), which warpgroup 0 matches with one more
  // wait at the end.
  if (Traits::kPingPong && warpgroup == Traits::kConsumerWarpgroups - 1) {
    pingpong_arrive_next<Traits::kConsumerWarpgroups>(warpgroup);
  }
  for (int work = 0;; ++work) {
    const int buffer = work & 1;
    Barrier::wait(sm.q_full(buffer), (work >> 1) & 1);
    const WorkTile t = load_work_tile(sm.work(buffer));
    if (!warp_uniform(t.valid)) {
      if (Traits::kPingPong && warpgroup == 0) pingpong_sync(warpgroup);
      return;
    }
    const int n_tiles = warp_uniform(num_kv_tiles<Traits>(t, p.causal));
    const int own_tiles =
        Traits::kPassesTurns ? warp_uniform(warpgroup_kv_tiles<Traits>(t, p.causal, warpgroup)) : n_tiles;
    if (own_tiles == 0) {
      // No row of this warpgroup sees a key (n_tiles == 0: no row of the tile does, and no
      // warpgroup takes a turn).
      float zero[Gemms<Traits>::kORegs] = {};
      store_output<Traits>(p, t, zero, warpgroup, static_cast<int>(threadIdx.x) % 128);
      Barrier::arrive(sm.q_empty(buffer));
      if constexpr (Traits::kPassesTurns) {
        if (n_tiles > 0) pass_turns<Traits>(sm, warpgroup, 0, n_tiles, stage_of<Traits>(kv_done));
        kv_done += n_tiles;
      }
      continue;
    }
    if constexpr (Traits::kFp8) {
      const bool long_chain = n_tiles * Traits::kBlockN > p.one_level_max_keys;
      if ((p.two_level && long_chain) || token_scales) {
        consumer_loop<Traits, true>(p, t, sm, n_tiles, own_tiles, warpgroup, buffer, kv_done);
        kv_done += n_tiles;
        continue;
      }
    }
    consumer_loop<Traits, false>(p, t, sm, n_tiles, own_tiles, warpgroup, buffer, kv_done);
    kv_done += n_tiles;
  }
}

template <class Traits>
__global__ void __launch_bounds__(Traits::kThreads, 1) prefill_kernel(const __grid_constant__ PrefillParams p) {
  extern __shared__ uint8_t smem_raw[];
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t{1023});
  const SmemView<Traits> sm{base};
  if (threadIdx.x == 0) init_barriers<Traits>(sm);
  __syncthreads();
  // Broadcast from lane 0 so that ptxas knows it is warp-uniform: the ping-pong barrier ids and
  // the warpgroup's row offset then live in uniform registers, not in the consumers' 232.
  const int warpgroup = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / 128, 0);
  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegisters>();
    producer<Traits>(p, sm);
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegisters>();
    consumer<Traits>(p, sm, warpgroup - 1);
  }
}

}  // namespace fp8kv::cuda::sm90

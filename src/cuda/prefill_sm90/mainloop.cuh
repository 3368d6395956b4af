// The two halves of the prefill main loop, FlashAttention-3 style:
//   * the producer warpgroup: one thread issues TMA loads of Q once and of K/V tiles into a
//     kStages-deep ring of shared-memory buffers; for FP8 all 128 threads then transpose each
//     V tile into V^T (FP8 wgmma reads B K-major only, and for P.V the K dimension is the key);
//   * the consumer warpgroups' matrix products: S = Q K^T (wgmma SS) and O += P V (wgmma RS, P
//     from registers).
// Full/empty mbarriers hand each stage from producer to consumers and back.
#pragma once

#include <cstdint>

#include "cuda/prefill_sm90/tile_scheduler.cuh"
#include "cuda/prefill_sm90/traits.cuh"
#include "fp8kv/paged_cache.h"

namespace fp8kv::cuda::sm90 {

constexpr uint64_t kTmaCacheHint = static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_NORMAL);
constexpr int kProducerBarrierId = 1;  // named barrier of the producer warpgroup (0 is __syncthreads)

template <class Traits>
struct SmemView {
  uint8_t* base;
  __device__ uint8_t* q(int b) const { return base + Traits::kQOffset + b * Traits::kQBytes; }
  __device__ uint8_t* k(int s) const { return base + Traits::kKOffset + s * Traits::kKBytes; }
  __device__ uint8_t* v(int s) const { return base + Traits::kVOffset + s * Traits::kVBytes; }
  __device__ uint8_t* vt(int s) const { return base + Traits::kVtOffset + s * Traits::kVtBytes; }
  __device__ float* k_scale(int s) const {
    return reinterpret_cast<float*>(base + Traits::kKScaleOffset + s * Traits::kScaleBytes);
  }
  __device__ float* v_scale(int s) const {
    return reinterpret_cast<float*>(base + Traits::kVScaleOffset + s * Traits::kScaleBytes);
  }
  __device__ uint64_t* barrier(int i) const {
    return reinterpret_cast<uint64_t*>(base + Traits::kBarrierOffset) + i;
  }
  __device__ uint64_t* q_full(int b) const { return barrier(b); }
  __device__ uint64_t* q_empty(int b) const { return barrier(Traits::kQBuffers + b); }
  static constexpr int kStageBarriers = 2 * Traits::kQBuffers;
  __device__ uint64_t* k_full(int s) const { return barrier(kStageBarriers + s); }
  __device__ uint64_t* k_empty(int s) const { return barrier(kStageBarriers + Traits::kStages + s); }
  __device__ uint64_t* v_full(int s) const { return barrier(kStageBarriers + 2 * Traits::kStages + s); }
  __device__ uint64_t* v_empty(int s) const { return barrier(kStageBarriers + 3 * Traits::kStages + s); }
  __device__ uint64_t* vt_full(int s) const { return barrier(kStageBarriers + 4 * Traits::kStages + s); }
  __device__ uint64_t* vt_empty(int s) const { return barrier(kStageBarriers + 5 * Traits::kStages + s); }
  // Shared-memory addresses of the work tile whose Q buffer b holds (valid = 0: no more work) and
  // of the producer's flags; read and written with the volatile accessors below.
  __device__ uint32_t work(int b) const {
    return static_cast<uint32_t>(__cvta_generic_to_shared(base + Traits::kWorkOffset + b * Traits::kWorkSlotBytes));
  }
  __device__ uint32_t more_flag(int i) const {
    return static_cast<uint32_t>(__cvta_generic_to_shared(base + Traits::kFlagOffset + 4 * i));
  }
};
static_assert(sizeof(WorkTile) == 32, "a work slot holds one WorkTile, as two 16-byte words");

// Shared-memory accesses that the compiler keeps in program order with the barrier operations
// around them (those are volatile asm without a memory clobber, so plain loads and stores could
// move across them).
__device__ __forceinline__ void store_work_tile(uint32_t addr, const WorkTile& t) {
  asm volatile("st.volatile.shared.v4.s32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(t.valid), "r"(t.batch),
               "r"(t.q_head), "r"(t.m_block)
               : "memory");
  asm volatile("st.volatile.shared.v4.s32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr + 16), "r"(t.q_start), "r"(t.len_q),
               "r"(t.len_k), "r"(t.k_start)
               : "memory");
}
__device__ __forceinline__ WorkTile load_work_tile(uint32_t addr) {
  WorkTile t;
  asm volatile("ld.volatile.shared.v4.s32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(t.valid), "=r"(t.batch), "=r"(t.q_head), "=r"(t.m_block)
               : "r"(addr)
               : "memory");
  asm volatile("ld.volatile.shared.v4.s32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(t.q_start), "=r"(t.len_q), "=r"(t.len_k), "=r"(t.k_start)
               : "r"(addr + 16)
               : "memory");
  return t;
}
__device__ __forceinline__ void store_flag(uint32_t addr, int value) {
  asm volatile("st.volatile.shared.s32 [%0], %1;\n" ::"r"(addr), "r"(value) : "memory");
}
__device__ __forceinline__ int load_flag(uint32_t addr) {
  int value;
  asm volatile("ld.volatile.shared.s32 %0, [%1];\n" : "=r"(value) : "r"(addr) : "memory");
  return value;
}

// Arrival counts: the consumers release a stage or a Q buffer with one arrival per consumer
// thread; the FP8 transposer publishes V^T with one arrival per producer thread.
template <class Traits>
__device__ void init_barriers(const SmemView<Traits>& sm) {
  constexpr int kConsumerThreads = 128 * Traits::kConsumerWarpgroups;
  for (int b = 0; b < Traits::kQBuffers; ++b) {
    Barrier::init(sm.q_full(b), 1);
    Barrier::init(sm.q_empty(b), kConsumerThreads);
  }
  for (int s = 0; s < Traits::kStages; ++s) {
    Barrier::init(sm.k_full(s), 1);
    Barrier::init(sm.k_empty(s), kConsumerThreads);
    Barrier::init(sm.v_full(s), 1);
    Barrier::init(sm.v_empty(s), kConsumerThreads);
    Barrier::init(sm.vt_full(s), 128);
    Barrier::init(sm.vt_empty(s), kConsumerThreads);
  }
  cutlass::arch::fence_barrier_init();
}

// Stage and parity of KV tile `iter` (the iter-th tile this CTA processes).
struct Stage {
  int index;
  uint32_t phase;
};
template <class Traits>
__device__ __forceinline__ Stage stage_of(int iter) {
  return Stage{iter % Traits::kStages, static_cast<uint32_t>((iter / Traits::kStages) & 1)};
}
// The stage of the tile after `st`, without stage_of's division.
template <class Traits>
__device__ __forceinline__ Stage next_stage(const Stage& st) {
  const bool wrap = st.index == Traits::kStages - 1;
  return Stage{wrap ? 0 : st.index + 1, wrap ? st.phase ^ 1u : st.phase};
}

// ---- producer -----------------------------------------------------------------------------------

// Rows outside the sequence come along (another sequence's, or zeros where the box leaves the
// tensor, including negative rows); their results are not stored.
template <class Traits>
__device__ void load_q(const PrefillParams& p, const WorkTile& t, const SmemView<Traits>& sm, int buffer) {
  Barrier::arrive_and_expect_tx(sm.q_full(buffer), Traits::kQBytes);
#pragma unroll
  for (int cb = 0; cb < Traits::kColBlocks; ++cb) {
    cute::SM90_TMA_LOAD_3D::copy(&p.tma_q, sm.q_full(buffer), kTmaCacheHint,
                                 sm.q(buffer) + cb * Traits::kBlockM * Traits::kSwizzleBytes, cb * Traits::kBoxElems,
                                 t.q_head, t.q_start + block_row0<Traits>(t));
  }
}

// Loads rows [tile * kBlockN, +kBlockN) of K or V into `dst`. With `scales` (paged per-token K
// load only) the tile's K and V token scales come along on the same barrier: the consumers read
// both while they still hold the K stage, so the V scales need no barrier of their own.
// Paged: one TMA box per sub-block (per page for 16-bit storage; per 128-row half of a 256-row
// sub-block). Pages past the sequence's
// last one are read from its first page instead: those keys are masked, and loading real, finite
// cache data keeps NaN-free operands in the tensor cores (0 * NaN would poison the row).
template <class Traits>
__device__ void load_kv_tile(const PrefillParams& p, const WorkTile& t, const CUtensorMap* map, int tile,
                             uint8_t* dst, bool scales, float* k_scale_dst, float* v_scale_dst, uint64_t* bar) {
  const int kv_head = t.q_head / p.head_group;
  if constexpr (!Traits::kPaged) {
    Barrier::arrive_and_expect_tx(bar, Traits::kKBytes);
#pragma unroll
    for (int cb = 0; cb < Traits::kColBlocks; ++cb) {
      cute::SM90_TMA_LOAD_3D::copy(map, bar, kTmaCacheHint, dst + cb * Traits::kBlockN * Traits::kSwizzleBytes,
                                   cb * Traits::kBoxElems, kv_head, t.k_start + tile * Traits::kBlockN);
    }
  } else {
    const PagedLayout& layout = p.layout;
    const int rows_per_box = min(static_cast<int>(layout.sub_block_size), Traits::kBlockN);
    const int boxes = Traits::kBlockN / rows_per_box;
    const int pages = (t.len_k + layout.block_size - 1) / layout.block_size;
    const int32_t* table = p.block_tables + static_cast<int64_t>(t.batch) * p.max_blocks_per_seq;
    Barrier::arrive_and_expect_tx(bar, Traits::kKBytes + (scales ? 2 * Traits::kBlockN * 4 : 0));
    for (int i = 0; i < boxes; ++i) {
      const int key = tile * Traits::kBlockN + i * rows_per_box;
      const int page = key / layout.block_size;
      const int in_page = key % layout.block_size;
      const int block = table[page < pages ? page : 0];
#pragma unroll
      for (int cb = 0; cb < Traits::kColBlocks; ++cb) {
        cute::SM90_TMA_LOAD_5D::copy(
            map, bar, kTmaCacheHint,
            dst + cb * Traits::kBlockN * Traits::kSwizzleBytes + i * rows_per_box * Traits::kSwizzleBytes,
            cb * Traits::kBoxElems, in_page % layout.sub_block_size, kv_head, in_page / layout.sub_block_size, block);
      }
      if (scales) {
        const int64_t offset = layout.token_scale_offset(block, kv_head, in_page);
        cute::SM90_BULK_COPY_G2S::copy(p.k_token_scale + offset, bar, k_scale_dst + i * rows_per_box, rows_per_box * 4);
        cute::SM90_BULK_COPY_G2S::copy(p.v_token_scale + offset, bar, v_scale_dst + i * rows_per_box, rows_per_box * 4);
      }
    }
  }
}

// V [kBlockN keys][kHeadDim] (row-swizzled like K) -> V^T [kHeadDim][kBlockN] (128B swizzle).
// The key order inside every 16-key group is permuted so that the P registers of the S
// accumulator can be fed to the P.V wgmma without shuffles: the FP8 A fragment holds logical keys
// 4q..4q+3 of a 16-key group in thread q of a quad, while the accumulator holds physical columns
// 2q, 2q+1, 2q+8, 2q+9. Logical key 16h + 4q + i therefore lives at physical key
// 16h + 2q + 8(i/2) + i%2.
// That is exactly the order a 16-bit transposing ldmatrix produces: for an 8-key x 16-byte
// matrix, ldmatrix.trans gives thread 4c + q the bytes (key 2q, channels 2c, 2c+1) and (key
// 2q+1, same channels); with the matrix of keys +8 beside it, one byte permute yields channel 2c
// at keys 2q, 2q+1, 2q+8, 2q+9 and another channel 2c+1: four V^T bytes in logical order, which
// stmatrix writes as row c of an 8 x 16-byte matrix whose eight row addresses are free. So one
// warp moves 16 keys x 32 channels with one ldmatrix.x4, four byte permutes and one stmatrix.x4:
// 16-byte rows, 8 shared-memory wavefronts per 512 bytes. Bank conflicts: the 8 rows of a loaded
// matrix are 8 consecutive keys (distinct 16-byte chunks under either row swizzle); for a stored
// matrix, rows 0-3 of the quad take the even channel and rows 4-7 the odd one (channels 0, 2, 4,
// 6, 9, 11, 13, 15 and the complement), so the 8 V^T rows cover all residues mod 8, i.e. all 8
// chunks of the 128B swizzle.
// The per-lane addresses are computed once per producer thread, as offsets that the tile loop
// adds to the stage's base: warp w moves key groups w and w + 4 of every 32-channel group. Key
// group w + 4 is 64 rows further in V (the row swizzle repeats every 8 rows, so +64 rows is a
// plain offset) and, in V^T, channel group c is 32 rows further (a plain offset too); so a lane
// holds one V offset per channel group and two V^T offsets (held as 16 hoisted addresses, they
// were spilled beside the producer leader's work-tile code).
// What the transpose costs (H100, 2026-11-24, a timing-only build that skipped it, wrong results,
// against this kernel in the same call): 4-6% at 512 and 4096 keys (Qwen3-8B), 8% at Qwen3-0.6B
// 8 x 4096, 7-9% at 16k (791 against 720-734 TFLOP/s, causal), 8-12% at head dim 64.
template <class Traits>
struct VTransposer {
  static constexpr int kChannelGroups = Traits::kHeadDim / 32;
  // Key groups of 16 per 64 keys: warp w takes key groups w, w + 4, ... (one per 64 keys).
  static constexpr int kKeyQuarters = Traits::kBlockN / 64;
  static_assert(Traits::kBlockN % 128 == 0, "V^T key blocks of 128");
  uint32_t src[kChannelGroups];  // V: this lane's ldmatrix row, key group `warp`, per channel group
  uint32_t dst[2];               // V^T: its stmatrix row, key group `warp` / `warp + 4`, channel group 0
  uint32_t sel_first, sel_second;

  __device__ explicit VTransposer(int thread) {
    const int warp = thread / 32, lane = thread % 32;
    const int mat = lane / 8, j = lane % 8;  // the matrix and row whose address this lane supplies
    const bool high_row = j >= 4;
    // ldmatrix: matrix `mat` = keys 8 (mat & 1).., channel bytes 16 (mat >> 1)..
    const uint32_t ld_key = 8 * (mat & 1) + j, ld_byte = 16 * (mat >> 1);
    // stmatrix: matrix `mat` = V^T rows 16 (mat >> 1) + 2j + ((mat & 1) ^ high_row).
    const uint32_t st_channel = 16 * (mat >> 1) + 2 * j + ((mat & 1) ^ (high_row ? 1 : 0));
    // The data thread 4c + q holds: its first permute gives channel 2c, its second 2c + 1; matrix 0
    // (even `mat`) wants the even channel in rows c < 4 and the odd one in rows c >= 4.
    const bool swap = lane / 4 >= 4;
    sel_first = swap ? 0x7531u : 0x6420u;
    sel_second = swap ? 0x6420u : 0x7531u;
#pragma unroll
    for (int cg = 0; cg < kChannelGroups; ++cg) {
      src[cg] = swizzled_offset<Traits::kRowSwizzle>(16 * warp + ld_key, 32 * cg + ld_byte);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) dst[h] = swizzled_offset<Swizzle::k128B>(st_channel, 16 * (warp + 4 * h));
  }

  __device__ void run(const uint8_t* v, uint8_t* vt) const {
    const uint32_t v_base = static_cast<uint32_t>(__cvta_generic_to_shared(v));
    const uint32_t vt_base = static_cast<uint32_t>(__cvta_generic_to_shared(vt));
#pragma unroll
    for (int cg = 0; cg < kChannelGroups; ++cg) {
#pragma unroll
      for (int h = 0; h < kKeyQuarters; ++h) {
        // Keys 64h..: +64 rows of V; in V^T, key block h / 2 (a plain offset, like the channels').
        const uint32_t src_addr = v_base + src[cg] + h * 64 * Traits::kSwizzleBytes;
        const uint32_t dst_addr = vt_base + dst[h % 2] + (h / 2) * Traits::kVtKeyBlockBytes + cg * 32 * 128;
        uint32_t r0, r1, r2, r3;
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                     : "r"(src_addr));
        const uint32_t w0 = __byte_perm(r0, r1, sel_first), w1 = __byte_perm(r0, r1, sel_second);
        const uint32_t w2 = __byte_perm(r2, r3, sel_first), w3 = __byte_perm(r2, r3, sel_second);
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(dst_addr), "r"(w0),
                     "r"(w1), "r"(w2), "r"(w3)
                     : "memory");
      }
    }
  }
};

// The producer leader's walk over the CTA's work tiles and their K/V tiles, one load at a time.
// Work tile w (the w-th this CTA takes) uses Q buffer w % 2: before the leader publishes it there
// (the WorkTile, then Q's TMA load on q_full), the consumers must have released that buffer from
// tile w - 2 (q_empty, after that tile's output store). K/V tiles continue the stage ring across work
// tiles, so the next tile's first K/V loads are issued as soon as its stages free up, while the
// consumers still run the current tile's last turns.
// The current work tile itself is read back from its shared-memory slot at each load rather than
// held in the producer's 40 registers (which spilled).
template <class Traits>
struct LoadCursor {
  WorkCounter counter;
  int n_tiles = 0;  // K/V tiles of the current work tile
  int kv = 0;       // the next K/V tile of the current work tile to load
  int work = 0;     // work tiles published so far
  int loads = 0;    // K/V tiles loaded so far (all work tiles): the stage ring's position

  // Issues the next K/V tile load (publishing work tiles as needed); false once there is no more
  // work, after the consumers have been told so.
  __device__ bool issue_next(const PrefillParams& p, const SmemView<Traits>& sm) {
    while (kv == n_tiles) {
      const int buffer = work & 1;
      if (work >= Traits::kQBuffers) Barrier::wait(sm.q_empty(buffer), ((work >> 1) & 1) ^ 1);
      const WorkTile t = counter.template next<Traits>(p);
      store_work_tile(sm.work(buffer), t);
      ++work;
      if (!t.valid) {
        Barrier::arrive(sm.q_full(buffer));  // publishes "no more work"
        counter.finish(p);
        return false;
      }
      n_tiles = num_kv_tiles<Traits>(t, p.causal);
      kv = 0;
      if (n_tiles > 0) {
        load_q<Traits>(p, t, sm, buffer);
      } else {
        Barrier::arrive(sm.q_full(buffer));  // a block without visible keys: the consumers write zeros
        counter.draw(p);
      }
    }
    const WorkTile t = load_work_tile(sm.work((work - 1) & 1));
    const Stage st = stage_of<Traits>(loads);
    if (loads >= Traits::kStages) Barrier::wait(sm.k_empty(st.index), st.phase ^ 1);
    load_kv_tile<Traits>(p, t, &p.tma_k, kv, sm.k(st.index), p.k_token_scale != nullptr, sm.k_scale(st.index),
                         sm.v_scale(st.index), sm.k_full(st.index));
    // BF16: consumers read V directly, so its buffer is free once they release it. FP8: only the
    // transposer reads it, and it has finished with this buffer (producer named barrier below).
    if (!Traits::kFp8 && loads >= Traits::kStages) Barrier::wait(sm.v_empty(st.index), st.phase ^ 1);
    load_kv_tile<Traits>(p, t, &p.tma_v, kv, sm.v(st.index), false, nullptr, nullptr, sm.v_full(st.index));
    ++loads;
    if (++kv == n_tiles) counter.draw(p);  // the tile's last load: draw the CTA's next work tile
    return true;
  }
};

__device__ __forceinline__ void producer_sync() { cutlass::arch::NamedBarrier::sync(128, kProducerBarrierId); }

// The producer warpgroup's whole job: one thread issues the loads; for FP8 all 128 threads
// transpose V tile after tile, one load behind the issue, until the leader runs out of work
// (it tells the others through a flag per parity of the turn, read after the warpgroup's named
// barrier and not rewritten before the next one).
template <class Traits>
__device__ void producer(const PrefillParams& p, const SmemView<Traits>& sm) {
  const int thread = static_cast<int>(threadIdx.x) % 128;
  const bool leader = thread == 0;
  LoadCursor<Traits> cursor;
  if (leader) cursor.counter.start();
  if constexpr (!Traits::kFp8) {
    if (leader) {
      while (cursor.issue_next(p, sm)) {
      }
    }
  } else {
    // Turn `iter`: the leader loads K/V tile iter, everybody transposes tile iter - 1. The leader
    // code is written once (it is long: work-tile publishing, paged loads).
    const VTransposer<Traits> transposer(thread);
    Stage st{0, 0};
    for (int iter = 0;; ++iter) {
      if (leader) store_flag(sm.more_flag(iter & 1), cursor.issue_next(p, sm) ? 1 : 0);
      if (iter > 0) {
        Barrier::wait(sm.v_full(st.index), st.phase);
        if (iter - 1 >= Traits::kStages) Barrier::wait(sm.vt_empty(st.index), st.phase ^ 1);
        transposer.run(sm.v(st.index), sm.vt(st.index));
        fence_view_async_shared();  // V^T is read by wgmma (async proxy); V is rewritten by TMA next
        Barrier::arrive(sm.vt_full(st.index));
        st = next_stage<Traits>(st);
      }
      producer_sync();
      if (load_flag(sm.more_flag(iter & 1)) == 0) break;
    }
  }
}

// ---- consumer matrix products -------------------------------------------------------------------

template <class Traits>
struct Gemms {
  using QKAtom = std::conditional_t<
      Traits::kFp8,
      std::conditional_t<Traits::kWide, cute::SM90::GMMA::MMA_64x256x32_F32E4M3E4M3_SS_TN<>,
                         cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_SS_TN<>>,
      cute::SM90::GMMA::MMA_64x128x16_F32BF16BF16_SS<cute::SM90::GMMA::Major::K, cute::SM90::GMMA::Major::K>>;
  using PVAtom = std::conditional_t<
      Traits::kFp8,
      std::conditional_t<Traits::kHeadDim == 128, cute::SM90::GMMA::MMA_64x128x32_F32E4M3E4M3_RS_TN<>,
                         cute::SM90::GMMA::MMA_64x64x32_F32E4M3E4M3_RS_TN<>>,
      std::conditional_t<Traits::kHeadDim == 128,
                         cute::SM90::GMMA::MMA_64x128x16_F32BF16BF16_RS<cute::SM90::GMMA::Major::K,
                                                                         cute::SM90::GMMA::Major::MN>,
                         cute::SM90::GMMA::MMA_64x64x16_F32BF16BF16_RS<cute::SM90::GMMA::Major::K,
                                                                        cute::SM90::GMMA::Major::MN>>>;
  static constexpr int kSRegs = Traits::kBlockN / 2;   // 64 x kBlockN fp32 over 128 threads
  static constexpr int kORegs = Traits::kHeadDim / 2;  // 64 x kHeadDim fp32 over 128 threads
  static constexpr int kPVSteps = Traits::kBlockN / Traits::kKStep;
  static constexpr int kPRegs = kPVSteps * 4;          // A fragments: 4 registers per k-step

  // Descriptors of the operands' first k-step, built once per CTA; issue_qk/issue_pv advance them
  // to the stage and k-step (desc_advance). Q: this warpgroup's 64 rows. K and V^T/V: stage 0.
  static __device__ uint64_t q_desc(const uint8_t* q, int warpgroup) {
    return make_smem_desc(q + warpgroup * 64 * Traits::kSwizzleBytes, Traits::kRowSwizzle, 16,
                          8 * Traits::kSwizzleBytes);
  }
  static __device__ uint64_t k_desc(const uint8_t* k_stage0) {
    return make_smem_desc(k_stage0, Traits::kRowSwizzle, 16, 8 * Traits::kSwizzleBytes);
  }
  // FP8: B = V^T (K-major, 128B swizzle). BF16: B = V itself, read MN-major: column blocks of 64
  // channels are kBlockN * 128 bytes apart (LBO), groups of 8 keys 1024 bytes (SBO).
  static __device__ uint64_t v_desc(const uint8_t* vt_or_v_stage0) {
    return Traits::kFp8 ? make_smem_desc(vt_or_v_stage0, Swizzle::k128B, 16, 1024)
                        : make_smem_desc(vt_or_v_stage0, Swizzle::k128B, Traits::kBlockN * 128, 1024);
  }
  static constexpr uint32_t kVStageBytes = Traits::kFp8 ? Traits::kVtBytes : Traits::kVBytes;

  // S = Q K^T for this warpgroup's 64 rows, K from `stage`. Issued and committed; the caller waits.
  static __device__ void issue_qk(float (&s)[kSRegs], uint64_t desc_q, uint64_t desc_k0, int stage) {
    const uint64_t desc_k = desc_advance(desc_k0, stage * Traits::kKBytes);
#pragma unroll
    for (int kk = 0; kk < Traits::kHeadDim / Traits::kKStep; ++kk) {
      const int byte = kk * 32;
      const int cb = byte / Traits::kSwizzleBytes, in_row = byte % Traits::kSwizzleBytes;
      gmma<QKAtom>(s, kk > 0, desc_advance(desc_q, cb * Traits::kBlockM * Traits::kSwizzleBytes + in_row),
                   desc_advance(desc_k, cb * Traits::kBlockN * Traits::kSwizzleBytes + in_row));
    }
  }

  // O (+)= P V with V^T (FP8) or V (BF16) from `stage`, into the first kORegs registers of `o`
  // (O, or with 256-key tiles the first half of S's registers).
  template <int N>
  static __device__ void issue_pv(float (&o)[N], const uint32_t (&pa)[kPRegs], uint64_t desc_v0, int stage,
                                  bool accumulate) {
    const uint64_t desc_v = desc_advance(desc_v0, stage * kVStageBytes);
#pragma unroll
    for (int kk = 0; kk < kPVSteps; ++kk) {
      // FP8: 32 keys per k-step, 4 per 128-key block of V^T.
      const uint32_t offset =
          Traits::kFp8 ? (kk / 4) * Traits::kVtKeyBlockBytes + (kk % 4) * 32 : kk * Traits::kKStep * 128;
      gmma<PVAtom>(o, accumulate || kk > 0, pa[4 * kk], pa[4 * kk + 1], pa[4 * kk + 2], pa[4 * kk + 3],
                   desc_advance(desc_v, offset));
    }
  }

  // S accumulator (fp32 probabilities) -> A fragments of the P.V product. Accumulator register
  // 4j+e holds row r (e < 2) or r+8 (e >= 2), column 8j + 2q + e%2.
  static __device__ void make_p_fragments(const float (&p)[kSRegs], uint32_t (&pa)[kPRegs]) {
#pragma unroll
    for (int c = 0; c < kPVSteps; ++c) {
      if constexpr (Traits::kFp8) {
        // Keys 32c..32c+31: accumulator columns j = 4c..4c+3; see transpose_v for the key order.
        const float* x = p + 16 * c;
        pa[4 * c + 0] = pack_e4m3x4(x[0], x[1], x[4], x[5]);
        pa[4 * c + 1] = pack_e4m3x4(x[2], x[3], x[6], x[7]);
        pa[4 * c + 2] = pack_e4m3x4(x[8], x[9], x[12], x[13]);
        pa[4 * c + 3] = pack_e4m3x4(x[10], x[11], x[14], x[15]);
      } else {
        // Keys 16c..16c+15: columns j = 2c, 2c+1, already the BF16 A-fragment order.
        const float* x = p + 8 * c;
        pa[4 * c + 0] = pack_bf16x2(x[0], x[1]);
        pa[4 * c + 1] = pack_bf16x2(x[2], x[3]);
        pa[4 * c + 2] = pack_bf16x2(x[4], x[5]);
        pa[4 * c + 3] = pack_bf16x2(x[6], x[7]);
      }
    }
  }
};

}  // namespace fp8kv::cuda::sm90

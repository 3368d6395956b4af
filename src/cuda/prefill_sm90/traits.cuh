// Compile-time shape of one prefill kernel instantiation and the runtime parameters it reads.
//
// Templated only on what changes code generation: element type (FP8 E4M3 or BF16), head dim, and
// whether K/V come from dense varlen tensors or from the paged cache. Causality, lengths and
// scales are runtime values.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "cuda/prefill_sm90/sm90_primitives.cuh"
#include "fp8kv/paged_cache.h"

namespace fp8kv::cuda::sm90 {

struct ElementE4M3 {
  static constexpr int kBytes = 1;
  static constexpr bool kFp8 = true;
};
struct ElementBf16 {
  static constexpr int kBytes = 2;
  static constexpr bool kFp8 = false;
};

// Tile sizes. kBlockM = 128 query rows: two consumer warpgroups of 64 rows (the wgmma M). kBlockN
// = 128 keys: the widest S tile whose accumulator (64 fp32 registers per thread) leaves room for
// O, the per-tile O of two-level accumulation and P under the consumer register budget while the
// next tile's Q.K^T and this one's P.V are in flight together. kBlockN = 256 (FP8, head dim 128,
// dense; prefill_tiles in src/cuda/prefill.cu picks it when the options ask for 128-row query
// tiles): S takes 128 registers, so the schedule is serial (kernel.cuh) and the per-key costs of a
// turn (barriers, wgmma issue, the fold, the row-max shuffles) are spread over twice the keys.
// kConsumerWarpgroups = 3 (FP8, head dim 64 or 128, dense, 128-key tiles): kBlockM = 192 rows, so
// that each SM sub-partition runs three softmax warps instead of two; the consumers' turns are
// bound by their softmax's latency, and a third warp hides more of it (H100, 2026-11-25, README
// "Fourteenth session": at 16k 1-6% faster than the 256-key kernel; at head dim 64 14-31% faster
// than two warpgroups). At head dim 128 its 160 registers per consumer thread hold S and O (64
// each) and little else, so its turn is the serial one as well; at head dim 64 the overlapped turn
// fits.
// Shared memory at d = 128: FP8 2 x 16 KiB of Q + 3 stages x 48 KiB (K, V, V^T) = 176 KiB (256-key
// tiles: 2 stages x 96 KiB = 224 KiB; three consumer warpgroups: 2 x 24 KiB + 3 x 48 KiB = 192
// KiB); BF16 2 x 32 KiB of Q + 2 stages x 64 KiB = 192 KiB. Q has two buffers because the CTAs are
// persistent (tile_scheduler.cuh): the next work tile's Q loads while the current one runs.
template <class Element_, int kHeadDim_, bool kPaged_, int kBlockN_ = 128, int kConsumerWarpgroups_ = 2>
struct PrefillTraits {
  using Element = Element_;
  static constexpr bool kFp8 = Element::kFp8;
  static constexpr bool kPaged = kPaged_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kConsumerWarpgroups = kConsumerWarpgroups_;
  static constexpr int kBlockM = 64 * kConsumerWarpgroups;
  static constexpr int kBlockN = kBlockN_;
  static constexpr bool kWide = kBlockN > 128;
  static_assert(!kWide || (Element::kFp8 && kHeadDim_ == 128 && !kPaged_ && kBlockN == 256), "wide: FP8 d128 dense");
  static_assert(kConsumerWarpgroups == 2 || (kConsumerWarpgroups == 3 && Element::kFp8 && !kPaged_ && kBlockN == 128),
                "three consumer warpgroups: FP8 dense, 128-key tiles");
  // The serial turn (kernel.cuh, serial_turn): P.V of the previous tile completes, and two-level
  // folds it, before Q.K^T of this one is issued, with the tile's P.V product accumulated in S's
  // registers. The 256-key kernel needs it (S takes 128 registers), and so does the one with three
  // consumer warpgroups at head dim 128 (160 registers each: S and O are 64 each). At head dim 64
  // (O 32) the three-warpgroup kernel keeps the overlapped turn.
  static constexpr bool kSerialTurn = kWide || (kConsumerWarpgroups == 3 && kHeadDim == 128);
  // Pipeline depth and schedule, from bench prefill on the H100 (seq 4096-16384). A third
  // K/V/V^T stage saves FP8 2-15%; BF16 has no room for it (160 KiB with two). Ping-pong (the two
  // consumer warpgroups take turns on the tensor cores, see kernel.cuh): BF16 450-600 TFLOP/s
  // against 410-540 serial. FP8 (2026-11-24, second session, one-run medians, +-5% run to run):
  // the ldmatrix/stmatrix V transpose is 9-14% faster than the old 4-byte one at d128; ping-pong
  // alone changed FP8 by less than the noise, ping-pong plus the intra-warpgroup overlap (Q.K^T of
  // a tile and P.V of the previous one issued together, see kernel.cuh) gained 3-12% with
  // two-level accumulation (16k: 608-655 against 575-619 TFLOP/s). The paged kernel keeps the
  // serial schedule: with per-token scales its overlapped loop spills 92 bytes.
  static constexpr int kStages = kFp8 && !kWide ? 3 : 2;
  // Whether a consumer warpgroup passes its turns on the K/V tiles that none of its rows sees
  // (kernel.cuh, pass_turns) instead of computing them. With 192-row blocks over 128-key tiles
  // under a causal mask, the first warpgroup of every other block has one such tile: 8% of the
  // turns at 4096 and 2% at 16k. Measured (H100, 2026-11-25, 2 interleaved rounds, FP8 default):
  // Qwen3-0.6B 8 x 4096 690-693 us against 718-738, Qwen3-8B 4 x 4096 697-699 against 733-736,
  // Qwen3-8B 16k causal 2481-2483 against 2517-2534, head dim 64 8 x 4096 520-527 against 530-539.
  // The two-warpgroup kernels have such tiles only past the sequence end or in a causal chunk
  // whose cached prefix is not a whole number of tiles; given the same code, the 128 x 128 kernel
  // ran 2% slower at Qwen3-8B 8 x 512 (56.2 us against 54.8-55.1) and the 256-key one had its
  // wgmmas serialised (C7511), so they compute every tile.
  static constexpr bool kPassesTurns = kConsumerWarpgroups == 3;
  static constexpr bool kPingPong = true;
  static constexpr bool kOverlap = kFp8 && !kPaged && !kSerialTurn;
  // Two-level accumulation promotes the tensor cores' partial P.V product into the FP32 O once
  // every kPromoteTiles K/V tiles (512 keys: one-level is already accepted for chains of
  // PrefillOptions::one_level_max_keys = 512), where kernel.cuh groups tiles (the overlapped FP8
  // schedule at d 128). Measured (H100, 2026-11-24, one call, 2 runs each): 2 tiles within
  // +-1.5% of 4 at every bench point.
  static constexpr int kPromoteTiles = 4;
  static_assert((kPromoteTiles & (kPromoteTiles - 1)) == 0, "group ends are found with a mask");
  // One group of 4 exponentials in kPolyExpPeriod on the FMA pipes instead of the MUFU unit
  // (softmax.cuh). Measured (H100, 2026-11-25, interleaved rounds, two calls): the 256-key kernel
  // 1.8-3.6% faster at 16k with 1 in 8 (Qwen3-8B causal 2699-2723 us against 2762-2781,
  // non-causal 5352-5357 against 5475-5521), 1 in 6 no better; 1 in 5 and 1 in 4 make ptxas
  // serialise its wgmmas (C7511). The 128-key kernel got slower (Qwen3-8B 1 x 4096 196 us ->
  // 206 us with 1 in 4, 224 us with 1 in 2: it is not waiting on the MUFU unit), so it keeps 0.
  static constexpr int kPolyExpPeriod = kWide ? 8 : 0;
  static constexpr int kThreads = 128 * (1 + kConsumerWarpgroups);
  // setmaxnreg budgets. The CTA owns what it was launched with, 384 x 168 = 64512 registers
  // (__launch_bounds__(384, 1)), and an increase blocks until the pool has the registers, so the
  // budgets must sum to at most that: BF16 128 x 24 + 256 x 240; FP8 gives the producer 40 for the
  // V transpose and the leader's work-tile code (at 24 ptxas spills): 128 x 40 + 256 x 232 = 64512.
  // The dense kernels' producer fits without spills; the paged FP8 ones spill 80-100 bytes (the
  // leader's page walk beside the transposer's per-lane offsets, reloaded once per K/V tile).
  // Three consumer warpgroups (512 threads, launched with 128 registers each): 128 x 32 + 384 x
  // 160 = 65536; ptxas spills 24 bytes in the consumers at head dim 128 (the register that carries
  // the ping-pong barrier id, stored and reloaded once per two-level turn) and 8 at head dim 64.
  static constexpr int kProducerRegisters = kConsumerWarpgroups == 3 ? 32 : kFp8 ? 40 : 24;
  static constexpr int kConsumerRegisters = kConsumerWarpgroups == 3 ? 160 : kFp8 ? 232 : 240;
  static constexpr int kLaunchRegisters = 65536 / kThreads / 8 * 8;  // what ptxas gives each thread
  static_assert(128 * kProducerRegisters + 128 * kConsumerWarpgroups * kConsumerRegisters <= kThreads * kLaunchRegisters,
                "setmaxnreg budgets exceed the registers the CTA is launched with");

  static constexpr int kElemBytes = Element::kBytes;
  static constexpr int kRowBytes = kHeadDim * kElemBytes;  // one Q/K/V row
  // Q and K rows are split into column blocks of one swizzle width (TMA boxes are at most 128 B
  // wide when swizzled): FP8 d=64 rows are 64 B (64B swizzle), every other case uses 128B blocks.
  static constexpr Swizzle kRowSwizzle = kRowBytes >= 128 ? Swizzle::k128B : Swizzle::k64B;
  static constexpr int kSwizzleBytes = static_cast<int>(kRowSwizzle);
  static constexpr int kColBlocks = kRowBytes / kSwizzleBytes;
  static constexpr int kBoxElems = kSwizzleBytes / kElemBytes;  // TMA box inner extent
  static constexpr int kKStep = 32 / kElemBytes;                 // wgmma K: 32 bytes per step
  static_assert(kHeadDim == 64 || kHeadDim == 128, "head dims 64 and 128");
  static_assert(kRowBytes % kSwizzleBytes == 0, "rows are whole swizzle blocks");

  static constexpr int kQBytes = kBlockM * kRowBytes;
  static constexpr int kQBuffers = 2;
  static constexpr int kKBytes = kBlockN * kRowBytes;
  static constexpr int kVBytes = kBlockN * kRowBytes;
  // FP8: V^T tile, [kHeadDim rows][kBlockN keys], K-major for the P.V product, 128B swizzle.
  // Wide tiles hold V^T as key blocks of 128 (one 128-byte swizzle block per row each).
  static constexpr int kVtBytes = kFp8 ? kHeadDim * kBlockN : 0;
  static constexpr int kVtKeyBlockBytes = kHeadDim * 128;
  static_assert(!kFp8 || kBlockN % 128 == 0, "V^T rows are whole 128-byte swizzle blocks");
  static constexpr int kScaleBytes = kPaged ? kBlockN * 4 : 0;  // per-token scales of one tile

  // Shared memory carve-up; every tile starts on a 1024-byte boundary (the 128B swizzle atom).
  static constexpr int kQOffset = 0;
  static constexpr int kKOffset = kQOffset + kQBuffers * kQBytes;
  static constexpr int kVOffset = kKOffset + kStages * kKBytes;
  static constexpr int kVtOffset = kVOffset + kStages * kVBytes;
  static constexpr int kKScaleOffset = kVtOffset + kStages * kVtBytes;
  static constexpr int kVScaleOffset = kKScaleOffset + kStages * kScaleBytes;
  static constexpr int kBarrierOffset = kVScaleOffset + kStages * kScaleBytes;
  // Per Q buffer q_full, q_empty, then per stage k_full, k_empty, v_full, v_empty, vt_full,
  // vt_empty (the last two FP8 only).
  static constexpr int kNumBarriers = 2 * kQBuffers + 6 * kStages;
  // Per Q buffer the work tile it holds (WorkTile, written by the producer before q_full), then
  // the producer warpgroup's two "more K/V tiles" flags.
  static constexpr int kWorkOffset = kBarrierOffset + kNumBarriers * 8;
  static constexpr int kWorkSlotBytes = 64;
  static constexpr int kFlagOffset = kWorkOffset + kQBuffers * kWorkSlotBytes;
  static constexpr int kSmemBytes = kFlagOffset + 2 * 4 + 1024;  // +1024: alignment slack
  static_assert(kQBytes % 1024 == 0 && kKBytes % 1024 == 0 && kVtBytes % 1024 == 0, "1024-byte aligned tiles");
  static_assert(kSmemBytes <= 227 * 1024, "fits the 227 KiB an H100 block may use");
};

// What the host fills (launch.cuh) and the kernel reads. TMA descriptors travel inside the
// __grid_constant__ parameter block.
struct PrefillParams {
  CUtensorMap tma_q;  // Q [total_q, num_q_heads, head_dim]
  CUtensorMap tma_k;  // dense: K [total_k, num_kv_heads, head_dim]; paged: pool [num_blocks, sub-blocks, num_kv_heads, sub_block_size, head_dim]
  CUtensorMap tma_v;  // same shape as tma_k
  const int32_t* cu_seqlens_q;  // [batch + 1]
  const int32_t* cu_seqlens_k;  // [batch + 1]   (dense)
  const int32_t* seq_lens;      // [batch]       (paged)
  const int32_t* block_tables;  // [batch, max_blocks_per_seq] (paged)
  const float* k_token_scale;   // [num_blocks, sub-blocks, num_kv_heads, sub_block_size] (paged per-token) or null
  const float* v_token_scale;   // same
  __nv_bfloat16* out;           // [total_q, num_q_heads, head_dim]
  // Descales: pointer + stride (0 = per tensor, 1 = per KV head); null = 1.0.
  const float* q_descale;
  const float* k_descale;
  const float* v_descale;
  int q_descale_stride, k_descale_stride, v_descale_stride;
  int batch, num_q_heads, num_kv_heads, head_group;  // head_group = num_q_heads / num_kv_heads
  int heads_per_section;  // query heads per grid section (tile_scheduler.cuh); divides num_q_heads
  int blocks_per_head;    // work tiles per query head (an upper bound on the query blocks)
  int num_work;           // num_q_heads * blocks_per_head: the work tile indices
  int work_slot;          // which work-tile counter pair this launch uses (tile_scheduler.cuh)
  int max_blocks_per_seq;  // paged: block_tables' row length
  PagedLayout layout;      // paged: the pools' layout (paged_cache.h)
  float softmax_scale_log2;  // softmax_scale * log2(e): the softmax runs on exp2
  bool causal;
  bool two_level;
  int one_level_max_keys;  // two-level only in CTAs that read more keys than this (whole tiles)
};

}  // namespace fp8kv::cuda::sm90

#include <cuda_runtime.h>

namespace fp8kv::cuda::sm90 {
// Defined in launch.cuh; instantiated by src/cuda/prefill_{fp8,bf16}_hd{64,128}.cu for exactly the
// combinations that select_kernel() in src/cuda/prefill.cu can return.
template <class Traits>
void launch_prefill(const PrefillParams& params, int grid_x, cudaStream_t stream);
}  // namespace fp8kv::cuda::sm90

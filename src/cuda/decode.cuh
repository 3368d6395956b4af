// Device code of paged decode attention (flash-decoding over the HND paged cache).
//
// Grid: x = (KV head, head chunk), y = work item: a (sequence, split), or in the balanced plan a
// row of equal key counts over the sequences laid end to end (one or two segments, see
// paged_decode_kernel). A thread block of kDecodeWarps warps covers one key range for kGroup query
// heads that share one KV head, so each K/V byte is read from memory once for all of them and
// reused from registers (GQA).
//
// Inside a warp, q.K runs on the tensor cores (mma m16n8k16, FP32 accumulation). Each lane loads
// its share of 8-token steps' K rows with 16-byte vectors that are widened to fp16 (FP8 -> fp16 is
// exact) straight into mma fragments; which channels a lane holds only has to agree between Q and
// K, so both use the channel order the 16-byte loads give.
//   FP8 storage: scores come out transposed, S^T = K Q^T, 16 tokens (two steps) the rows of A and
//   the query heads the columns of B; P.V runs on the tensor cores too (O^T = V^T P^T), P^T's
//   fragments made from S^T's by one movmatrix transpose per 8 x 8 block. Every row of each mma
//   carries work: against query heads as the rows of the q.K tile (8 of 16 rows zero) this halves
//   the q.K mmas and frees the 16 registers the zero rows held, which brought the head-dim-128
//   kernels from 128-142 registers to 121-126 (4 blocks per SM: H100 batch 128 x 4k 384.5 -> 374.4
//   us, 1 x 64k 58.1 -> 57.6).
//   16-bit storage: the query heads are the rows of A and 8 tokens the columns of B; P.V runs on the
//   CUDA cores in a row layout.
// K/V vectors, per-token scales and the block ids of a later iteration stream through a per-warp
// ring of shared-memory stages filled by cp.async, several iterations ahead of the compute. Lanes
// keep the online-softmax state of their heads (m, l) and their part of the output; states are
// merged across lanes (shuffles) and warps (shared memory) once at the end.
//
// Scales: per_tensor / per_head K scales fold into the per-head score scale (softmax_scale *
// log2(e) * k_scale, so scores come out in log2 units for exp2), V scales multiply the output once.
// per_token scales multiply each score (K) and each probability (V) as the token is consumed. The
// kernels are compiled for one or the other (kPerToken). With the per-token code in the static
// kernels as a runtime branch, FP8 per-tensor took 2-4% longer on the H100 wherever a block
// streams many keys (llama 128 x 64k 5974 against 5820 us, 1 x 16k 19.1 against 18.3).
//
// Splits: the blocks sharing a sequence (splits, or balanced segments) write an FP32 partial output
// normalised by its own softmax sum plus its log2-sum-exp; the last of them to finish (an atomic
// counter per sequence and block column) combines them in the same launch. A sequence covered by
// one block writes the final output directly.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "cuda/cache_write.cuh"
#include "cuda/cuda_check.h"
#include "cuda/cache_scales.cuh"
#include "cuda/fp8_convert.cuh"
#include "fp8kv/paged_cache.h"

namespace fp8kv::cuda_detail {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;

// Largest number of query heads one thread block handles (the rows of the q.K tile hold up to 8).
// FP8 storage accumulates P.V on the tensor cores, whose accumulator does not grow with the head
// count. 16-bit storage accumulates on the CUDA cores, kGroup * 8 registers per lane, kept <= 64;
// at head_dim 256 it also holds 16 K+V vectors and a split q, so it stops at 4 heads to stay under
// 255 registers without spilling.
constexpr int max_decode_group(bool fp8, int head_dim) {
  return fp8 ? 8 : (head_dim == 256 ? 4 : 8);
}

struct DecodeParams {
  const void* q;                 // [batch, num_q_heads, head_dim] bf16/fp16
  void* out;                     // [batch, num_q_heads, head_dim] bf16/fp16
  bool q_fp16;                   // dtype of q: fp16 (true) or bf16
  bool out_fp16;                 // dtype of out
  const void* k_cache;           // the K pool (layout: paged_cache.h, addressed through `layout`)
  const void* v_cache;           // the V pool
  CacheScales scales;            // the cache's per-token or static scales (none for 16-bit storage)
  const int32_t* block_tables;   // [batch, max_blocks_per_seq]
  int32_t max_blocks_per_seq;
  const int32_t* seq_lens;       // [batch]
  int64_t num_blocks;
  PagedLayout layout;
  int32_t log2_block_size;       // block_size is a power of two (KvCacheSpec::validate)
  int32_t num_q_heads;
  int32_t group;                 // query heads per KV head
  int32_t head_chunks;           // group / kGroup thread blocks per KV head
  float score_scale;             // softmax_scale * log2(e)
  const int4* work;              // [num_work]: (sequence, split, splits of the sequence, first work item)
  int32_t uniform_splits;        // > 0: every sequence has this many splits, and work item y is
                                 // (y / n, y % n, n, y - y % n), computed instead of loaded from `work`
  int32_t balance_tokens;        // > 0: balanced plan, block row y takes keys [y * W, (y + 1) * W) of the
                                 // sequences laid end to end, each balance_len long (see DecodeSegment)
  int32_t balance_len;
  int32_t batch;
  int32_t chunk_tokens;          // keys per split
  float* partial_o;              // [rows, num_q_heads, head_dim] fp32, split results (normalised); rows =
                                 // num_work, or 2 x num_work in the balanced plan (two segments a row)
  float* partial_lse;            // [rows, num_q_heads] fp32, log2-sum-exp2 of each split's scores
  int32_t* split_counters;       // [batch, gridDim.x]: splits finished per (sequence, block column);
                                 // zero between runs (the last split resets its counter)
  uint32_t* error_flags;
};

// Asynchronous global -> shared copies (cp.async, sm_80+): the loads of the next stages stay in
// flight while the warp computes on the current one, without holding registers. `valid` = false
// writes zeros instead of reading (src-size 0), so a masked token never holds stale NaN bits.
// K/V bytes are read once: .cg caches them in L2 only. L2::128B has the L2 fetch each 128-byte line
// whole: a warp's K copy takes half of each of 8 token rows and the other half comes one
// instruction later. Whole-line fetches raised FP8 decode from 83-89% to 86-92% of the read
// bandwidth on the H100 for batch x context >= 256k tokens (L2::256B measured 0-1% lower).
__device__ __forceinline__ void cp_async_16(void* smem, const void* global, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;" ::"r"(dst), "l"(global),
               "r"(valid ? 16 : 0)
               : "memory");
}

// Per-token scales: a page's scale row of one head is 64 bytes at block size 16, and the 128-byte
// line also holds the neighbouring head's row, which another block column reads at about the same
// time: L2::128B fetches the line in one request (measured 0.4-1.3% off per-token decode at batch
// >= 8 on the H100, per-tensor unchanged). kBytes (4 or 8) are copied, of which the first
// `src_bytes` are read and the rest zero-filled.
template <int kBytes>
__device__ __forceinline__ void cp_async_scales(void* smem, const void* global, int src_bytes) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global.L2::128B [%0], [%1], %2, %3;" ::"r"(dst), "l"(global), "n"(kBytes),
               "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_4(void* smem, const void* global, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(global), "r"(valid ? 4 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ void store_activation(void* base, int64_t index, float x, bool fp16) {
  if (fp16) {
    static_cast<__half*>(base)[index] = __float2half_rn(x);
  } else {
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(x);
  }
}

// ---- tensor-core helpers ----------------------------------------------------------------------

// D += A * B for one m16n8k16 tile, FP32 accumulation (16-bit storage's q.K). A rows are query
// heads (rows 8..15 are zero here: a1 = a3 = 0), B columns are 8 tokens, k is 16 head-dim channels.
template <bool kBf16>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  if constexpr (kBf16) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1));
  }
}

// D += A * B for one m16n8k16 f16 tile with all four A registers (FP8 storage's q.K, rows are
// tokens, and P.V, rows are channels).
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                                 uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Word `w` (0-3) of a 16-byte vector.
__device__ __forceinline__ uint32_t vector_word(const uint4& vec, int w) {
  return w == 0 ? vec.x : w == 1 ? vec.y : w == 2 ? vec.z : vec.w;
}

// The transpose of an 8 x 8 matrix of 16-bit values held one row per lane quad (lane 4i + j: row i,
// columns 2j and 2j + 1), returned in the same layout (movmatrix, sm_75+).
__device__ __forceinline__ uint32_t transpose_8x8_b16(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(y) : "r"(x));
  return y;
}

// One online-softmax step for one head whose kN new scores (log2 units, -inf where masked) this
// lane holds in x, the head's other scores sitting in the lanes that differ from this one in the
// lane-index bits kFirstBit .. kLastBit. Raises the running max m, turns x into probabilities
// relative to it, adds them to this lane's share l of the sum and returns the factor that rescales
// what was accumulated before.
template <int kN, int kFirstBit, int kLastBit>
__device__ __forceinline__ float online_softmax_step(float* x, float& m, float& l) {
  float m_new = m;
#pragma unroll
  for (int i = 0; i < kN; ++i) m_new = fmaxf(m_new, x[i]);
#pragma unroll
  for (int bit = kFirstBit; bit <= kLastBit; bit *= 2) m_new = fmaxf(m_new, __shfl_xor_sync(0xffffffffu, m_new, bit));
  // All keys so far masked: keep exp2 arguments finite (-inf - -inf would be NaN).
  const float m_ref = m_new == -INFINITY ? 0.0f : m_new;
  const float correction = exp2f(m - m_ref);
  l *= correction;
#pragma unroll
  for (int i = 0; i < kN; ++i) {
    x[i] = exp2f(x[i] - m_ref);
    l += x[i];
  }
  m = m_new;
  return correction;
}

// Bytes of K/V stages kept in flight per thread block (all warps): 3 CTAs of the main kernel fit one
// SM's 228 KB of shared memory with it (the warps' merge buffers reuse the ring). 72 KB, which gives
// FP8 at head_dim 128 four stages instead of three, measured 0.4-4% slower on the H100 (batch 1 to
// 128, per-tensor and per-token scales).
constexpr int kRingBytesPerBlock = 64 * 1024;

// Work geometry of the decode kernel for one storage type and head dim.
template <typename Storage, int kHeadDim>
struct DecodeTile {
  static constexpr int kE = StorageTraits<Storage>::kPerVector;  // elements per 16-byte vector
  static constexpr int kRowVectors = kHeadDim / kE;              // vectors per token row
  // K, tensor-core layout: lane = (token n = lane / 4, quad lane c = lane % 4); lane c takes the
  // row's vectors c, c + 4, ... Each vector is kE / 4 k-steps of 4 channels per lane.
  static constexpr int kKVectors = kRowVectors / 4;
  static constexpr int kStepsPerVector = kE / 4;
  static constexpr int kKSteps = kHeadDim / 16;
  // V, row layout: kRowVectors lanes per token row, kVRows rows per vector load.
  static constexpr int kVRows = 32 / kRowVectors;
  static constexpr int kVLoads = 8 / kVRows;  // V vectors per lane per 8 tokens
  // P.V on the tensor cores (FP8 storage, see the kernel) consumes 16 tokens, two steps, per mma.
  static constexpr bool kPvMma = StorageTraits<Storage>::kIsFp8;
  // 8-token steps per iteration: about 8 K+V vectors (128 bytes) per lane.
  static constexpr int kSteps = kKVectors >= 4 ? (kPvMma ? 2 : 1) : 4 / kKVectors;
  static constexpr int kWarpTile = 8 * kSteps;
  // Block ids a warp tile needs: a tile of at most 16 tokens starts at a multiple of its size (see
  // the kernel), so it lies in one page (block sizes are >= 16); longer tiles take one per step.
  // One page offset per tile also saves registers (the FP8 head_dim 128 kernels went from 134-141
  // to 128 when their q.K still had zero rows).
  static constexpr int kTileIds = kWarpTile <= 16 ? 1 : kSteps;
  static constexpr int kBlockTile = kWarpTile * kDecodeWarps;
  // One stage of a warp's ring: its K vectors as [vector][lane]; then V, either as [vector][lane]
  // (CUDA-core P.V) or as token rows padded by 16 bytes (tensor-core P.V reads 4-byte words of 4
  // tokens per lane: the padding spreads the 4 tokens of a load over distinct banks); then the
  // per-token scales, a float4 {K(t), K(t + 8), V(t), V(t + 8)} per token t = 16 u2 + r (the two
  // tokens of lane row r in the 16-token score tile u2: one 16-byte load per tile), which all 32
  // lanes fill, kScalesPerLane tokens of K (lanes 0-15) or V (lanes 16-31) each; then the block
  // ids of the iteration kStages - 1 later ([kSteps] int32 in 16 bytes).
  static constexpr int kKStageVectors = kSteps * kKVectors;
  static constexpr int kVPitch = kHeadDim * static_cast<int>(sizeof(Storage)) + 16;
  static constexpr int kVRegionBytes = kPvMma ? kSteps * 8 * kVPitch : kSteps * kVLoads * 32 * 16;
  static constexpr int kScaleOffset = kKStageVectors * 32 * 16 + kVRegionBytes;
  static constexpr int kScalesPerLane = kWarpTile / 16;
  static constexpr int kIdOffset = kScaleOffset + kSteps * 2 * 8 * static_cast<int>(sizeof(float));
  static constexpr int kStageBytes = kIdOffset + 16;
  static constexpr int kStages = kRingBytesPerBlock / (kDecodeWarps * kStageBytes) > 4   ? 4
                                 : kRingBytesPerBlock / (kDecodeWarps * kStageBytes) < 2 ? 2
                                                                                         : kRingBytesPerBlock / (kDecodeWarps * kStageBytes);
  static constexpr int kSmemBytes = kDecodeWarps * kStages * kStageBytes;
  static_assert(kRowVectors % 4 == 0 && kRowVectors <= 32, "head_dim of 64, 128 or 256");
  static_assert(kStageBytes % 16 == 0 && kVPitch % 16 == 0 && kScaleOffset % 16 == 0,
                "stages, V rows and the scales' float4s stay 16-byte aligned");
  static_assert(!kPvMma || kSteps % 2 == 0, "tensor-core P.V takes steps in pairs");
  static_assert(kSteps <= 4, "a stage's block ids fit its 16 bytes");
};

// One thread block's share of one sequence for its block column: keys [t_begin, t_stop) (t_stop
// is the planned end; the device length may end it sooner). `parts` blocks share the sequence
// (1: this one writes the output); their FP32 partial results sit in rows first_row, next_row,
// next_row + row_step, ... of partial_o / partial_lse, this one's in `row`.
struct DecodeSegment {
  int seq;
  int t_begin;
  int t_stop;
  int64_t limit;  // the longest device length the plan covers for the sequence (longer is flagged)
  int parts;
  int row;
  int first_row;
  int next_row;
  int row_step;
};

// Processes one segment with the whole thread block (all threads call it; it ends with every
// thread past its last use of shared memory except where the next call's barrier orders it).
template <typename Storage, int kHeadDim, int kGroup, bool kPerToken>
__device__ __forceinline__ void decode_segment(const DecodeParams& p, const DecodeSegment& seg) {
  using Traits = StorageTraits<Storage>;
  using Tile = DecodeTile<Storage, kHeadDim>;
  // BF16 storage multiplies in bf16 (K as stored); FP16 and FP8 storage in fp16 (FP8 widens to
  // fp16 exactly).
  constexpr bool kBf16Mma = std::is_same_v<Storage, Bf16>;
  constexpr int kE = Tile::kE;
  constexpr int kRowVectors = Tile::kRowVectors;
  constexpr int kKVectors = Tile::kKVectors;
  constexpr int kStepsPerVector = Tile::kStepsPerVector;
  constexpr int kKSteps = Tile::kKSteps;
  constexpr int kVRows = Tile::kVRows;
  constexpr int kVLoads = Tile::kVLoads;
  constexpr int kSteps = Tile::kSteps;
  constexpr int kWarpTile = Tile::kWarpTile;
  constexpr int kBlockTile = Tile::kBlockTile;
  constexpr int kStages = Tile::kStages;
  static_assert(kGroup <= 8, "query heads fill at most the first 8 rows of the m16 tile");
  static_assert(kGroup <= max_decode_group(Traits::kIsFp8, kHeadDim), "register budget: see max_decode_group()");
  static_assert(!kPerToken || (Tile::kPvMma && (Tile::kScalesPerLane == 1 || Tile::kScalesPerLane == 2)),
                "per-token scales are FP8 storage's, 16 or 32 tokens a warp tile");

  static_assert(kGroup * kHeadDim * static_cast<int>(sizeof(float)) <= kStages * Tile::kStageBytes,
                "a warp's merge buffer fits in its ring");
  __shared__ float smem_m[kDecodeWarps][kGroup];
  __shared__ float smem_l[kDecodeWarps][kGroup];

  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int quad_row = lane / 4;   // K token / score row (query head)
  const int quad_col = lane % 4;
  const int v_row = lane / kRowVectors;
  const int v_c0 = (lane % kRowVectors) * kE;
  const int kv_head = static_cast<int>(blockIdx.x) / p.head_chunks;
  const int q_head0 = kv_head * p.group + (static_cast<int>(blockIdx.x) % p.head_chunks) * kGroup;
  const int seq = seg.seq;
  const int t_begin = seg.t_begin;

  // The length, q, the scales and the first block ids are loaded before any of them is used:
  // their latencies overlap at the start of the segment instead of adding up.
  int seq_len = p.seq_lens[seq];
  const int32_t* table = p.block_tables + static_cast<int64_t>(seq) * p.max_blocks_per_seq;
  // Segments start at multiples of 16 and warp tiles at multiples of 8: the 8 tokens of a step
  // share one page (block sizes are powers of two >= 16). The block ids of the first kStages - 1
  // iterations are loaded here; those of iteration it + kStages - 1 are copied into the ring with
  // iteration it's pages (issue()), so they have landed when the warp is about to issue that
  // iteration's copies: the table's latency is hidden as deep as the pages'. (Loaded into registers
  // one iteration ahead instead, the warps waited on them more than on the pages: 17% of the stall
  // samples at batch 128 x 4k.) They are read up to the segment's planned end (inside the table row
  // whatever the device length says); issue() only uses those of tokens below the length.
  const int64_t table_capacity = static_cast<int64_t>(p.max_blocks_per_seq) << p.log2_block_size;
  const int64_t lookup_end = min(table_capacity, static_cast<int64_t>(seg.t_stop));
  const int warp_begin = t_begin + warp * kWarpTile;
  constexpr int kTileIds = Tile::kTileIds;
  int32_t first_ids[kStages - 1][kTileIds];
#pragma unroll
  for (int it = 0; it < kStages - 1; ++it) {
#pragma unroll
    for (int u = 0; u < kTileIds; ++u) {
      const int step = warp_begin + it * kBlockTile + 8 * u;
      first_ids[it][u] = step < lookup_end ? __ldg(table + (step >> p.log2_block_size)) : 0;
    }
  }

  const float k_static = p.scales.k_of_head(kv_head);
  const float v_static = p.scales.v_of_head(kv_head);

  // Q fragments: lane (r, c) holds head q_head0 + r at the physical channels that k-step ks maps to
  // k = 2c, 2c+1 (qa[ks][0]) and 2c+8, 2c+9 (qa[ks][1]); the same map is used for K, so the dot
  // product is over the same channel pairs. These are the rows r of A (query heads as rows, 16-bit
  // storage) and equally the columns n = r of B (FP8 storage's transposed scores): one layout.
  //   fp16 multiply: q is scaled by a power of two per head (exact) so that its largest value is
  //   2^14, inside fp16's range whatever the bf16 input; the score undoes it in fp32.
  //   bf16 multiply: q is split into hi + lo bf16 parts (exact for fp16 q; lo = 0 for bf16 q).
  uint32_t qa[kKSteps][2];
  uint32_t qa_lo[kKSteps][2];
  float row_scale;  // this lane's head: softmax_scale * log2(e) * k_scale / (q's power of two)
  {
    const bool active = quad_row < kGroup;
    const int64_t q_row = (static_cast<int64_t>(seq) * p.num_q_heads + q_head0 + (active ? quad_row : 0)) * kHeadDim;
    float q[kKSteps][4];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < kKVectors; ++i) {
#pragma unroll
      for (int jj = 0; jj < kStepsPerVector; ++jj) {
        // 4 consecutive channels: one 8-byte load.
        const int base = (quad_col + 4 * i) * kE + 4 * jj;
        uint2 raw = make_uint2(0, 0);
        if (active) raw = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p.q) + q_row + base);
        const float2 lo = p.q_fp16 ? half2_to_float2(raw.x) : bf16x2_to_float2(raw.x);
        const float2 hi = p.q_fp16 ? half2_to_float2(raw.y) : bf16x2_to_float2(raw.y);
        float* x = q[i * kStepsPerVector + jj];
        x[0] = lo.x;
        x[1] = lo.y;
        x[2] = hi.x;
        x[3] = hi.y;
#pragma unroll
        for (int e = 0; e < 4; ++e) amax = fmaxf(amax, fabsf(x[e]));
      }
    }
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    float q_mul = 1.0f;
    float q_unmul = 1.0f;
    if constexpr (!kBf16Mma) {
      // Largest |q| lands in [2^14, 2^15): fp16 keeps 2^29 of dynamic range below it. The clamp keeps
      // both powers of two normal floats (an all-zero head or a subnormal amax needs no care).
      constexpr int kFp16TopExponent = 14;
      constexpr int kMaxShift = 100;
      const int amax_exponent = static_cast<int>((__float_as_uint(amax) >> 23) & 0xffu) - 127;
      const int exponent = max(-kMaxShift, min(kMaxShift, kFp16TopExponent - amax_exponent));
      q_mul = __uint_as_float(static_cast<uint32_t>(127 + exponent) << 23);
      q_unmul = __uint_as_float(static_cast<uint32_t>(127 - exponent) << 23);
    }
    row_scale = p.score_scale * k_static * q_unmul;
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float x0 = q[ks][2 * h] * q_mul;
        const float x1 = q[ks][2 * h + 1] * q_mul;
        if constexpr (kBf16Mma) {
          qa[ks][h] = float2_to_bf16x2(x0, x1);
          const float2 hi = bf16x2_to_float2(qa[ks][h]);
          qa_lo[ks][h] = float2_to_bf16x2(x0 - hi.x, x1 - hi.y);
        } else {
          qa[ks][h] = float2_to_half2(x0, x1);
          qa_lo[ks][h] = 0u;
        }
      }
    }
  }
  const bool q_split = kBf16Mma && p.q_fp16;

  // Online-softmax state of this lane's heads: FP8 storage (transposed scores, see the loop) heads
  // 2c and 2c + 1, identical across the 8 lanes of column c; 16-bit storage head r, identical
  // across its quad. l is this lane's share of the sum (summed over those lanes at the end).
  constexpr int kLaneHeads = Tile::kPvMma ? 2 : 1;
  // The lanes that share a head (and hold its scores of different tokens) differ from each other in
  // the lane-index bits kShareFirstBit .. kShareLastBit: a column's 8 lanes, or a quad's 4.
  constexpr int kShareFirstBit = Tile::kPvMma ? 4 : 1;
  constexpr int kShareLastBit = Tile::kPvMma ? 16 : 2;
  float m[kLaneHeads];
  float l[kLaneHeads];
  float head_scale[kLaneHeads];  // row_scale of those heads
#pragma unroll
  for (int h = 0; h < kLaneHeads; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
    head_scale[h] = Tile::kPvMma ? __shfl_sync(0xffffffffu, row_scale, 8 * quad_col + 4 * h) : row_scale;
  }
  // The output accumulator. Tensor-core P.V: kHeadDim / 16 tiles of O^T (16 channels x 8 heads);
  // tile 2 * g4 + h holds, in its C fragment, channels 32 * g4 + 4r + 2h (rows r) and that + 1
  // (rows r + 8) for heads 2c and 2c + 1. CUDA-core P.V: kE channels of this lane's V row per head.
  constexpr int kAccRows = Tile::kPvMma ? kHeadDim / 16 : kGroup;
  constexpr int kAccCols = Tile::kPvMma ? 4 : kE;
  float acc[kAccRows][kAccCols];
#pragma unroll
  for (int a = 0; a < kAccRows; ++a) {
#pragma unroll
    for (int e = 0; e < kAccCols; ++e) acc[a][e] = 0.0f;
  }
  // Per-token V scales with tensor-core P.V: the accumulator is in units of v_ref, at least
  // 1 / kVRefHeadroom of the largest V scale of the tokens consumed so far (warp-uniform; 0 until a
  // scale > 0 is seen).
  constexpr float kVRefHeadroom = 1024.0f;
  [[maybe_unused]] float v_ref = 0.0f;
  [[maybe_unused]] float v_ref_inv = 0.0f;

  const Storage* k_cache = static_cast<const Storage*>(p.k_cache);
  const Storage* v_cache = static_cast<const Storage*>(p.v_cache);
  const int position_mask = (1 << p.log2_block_size) - 1;

  // Lengths come from the device: clamp what the block table and the plan can serve, and flag it.
  const int64_t planned = seg.limit;
  if (seq_len < 0 || seq_len > table_capacity || seq_len > planned) {
    if (threadIdx.x == 0 && blockIdx.x == 0) atomicOr(p.error_flags, kErrorSeqLenOutOfRange);
    seq_len = seq_len < 0 ? 0 : static_cast<int>(min(static_cast<int64_t>(seq_len), min(table_capacity, planned)));
  }
  const int t_end = min(seq_len, seg.t_stop);

  // Each warp streams its own tiles (every kDecodeWarps-th one) through a private ring of kStages
  // stages: kStages - 1 iterations of copies stay in flight while it computes on the oldest. The
  // tensor-core P.V reads V words that other lanes of the warp copied. One warp barrier per
  // iteration serves both orders: it follows the wait (those copies become visible) and precedes
  // the refill of the stage consumed in the previous iteration (no lane still reads it).
  extern __shared__ uint4 decode_ring[];
  uint4* ring = decode_ring + static_cast<size_t>(warp) * kStages * (Tile::kStageBytes / 16);
  const int iterations = warp_begin < t_end ? (t_end - warp_begin + kBlockTile - 1) / kBlockTile : 0;

  // Per-token scale copies (see DecodeTile): this lane's first token of the warp tile, the step
  // whose scale row its copy starts from (its own 8-token step, or the first where the tile lies
  // in one page), its offset from that row and where its kScalesPerLane scales go in a stage.
  [[maybe_unused]] const int scale_token = (lane % 16) * Tile::kScalesPerLane;
  [[maybe_unused]] const int scale_step = kTileIds == 1 ? 0 : scale_token / 8;
  [[maybe_unused]] const float* scale_src =
      (lane < 16 ? p.scales.k_token : p.scales.v_token) + (scale_token - 8 * scale_step);
  [[maybe_unused]] const int scale_dst =
      Tile::kScaleOffset +
      4 * (4 * (8 * (scale_token / 16) + scale_token % 8) + 2 * (lane / 16) + scale_token % 16 / 8);

  // Out-of-range block ids are flagged and replaced by block 0 with the copies zero-filled, never
  // dereferenced.
  auto issue = [&](int it, const int32_t (&ids)[kTileIds]) {
    const int tile = warp_begin + it * kBlockTile;
    uint4* stage = ring + (it % kStages) * (Tile::kStageBytes / 16);
    uint8_t* stage_bytes = reinterpret_cast<uint8_t*>(stage);
    uint8_t* v_rows = reinterpret_cast<uint8_t*>(stage + Tile::kKStageVectors * 32);
    // The per-token scale row of this lane's scale_step and whether its page is valid, picked as
    // the steps go by: a [kSteps] array picked from afterwards became an indexed load from a stack
    // frame (ptxas, head dim 64).
    [[maybe_unused]] int64_t scale_row = 0;
    [[maybe_unused]] bool scale_row_ok = false;
    int64_t offset = 0;  // of the step's first token in the K and V pools (and its scale, per token)
    int64_t token_scale = 0;
    bool page_ok = true;
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
      const int step = tile + 8 * u;
      bool ok = step < t_end;
      if (u < kTileIds) {
        int64_t block = ok ? ids[u] : 0;
        if (block < 0 || block >= p.num_blocks) {
          atomicOr(p.error_flags, kErrorBlockIdOutOfRange);
          ok = false;
          block = 0;
        }
        const int position0 = step & position_mask;
        offset = p.layout.token_offset(block, kv_head, position0);
        token_scale = offset / kHeadDim;  // = token_scale_offset(): scales follow the pools' order
        page_ok = ok;
      } else {
        // Same page as the previous step, 8 tokens further.
        offset += 8 * kHeadDim;
        token_scale += 8;
        ok = ok && page_ok;
      }
      const Storage* k_page = k_cache + offset;
      const Storage* v_page = v_cache + offset;
#pragma unroll
      for (int i = 0; i < kKVectors; ++i) {
        cp_async_16(stage + (u * kKVectors + i) * 32 + lane, k_page + quad_row * kHeadDim + (quad_col + 4 * i) * kE,
                    ok && step + quad_row < t_end);
      }
#pragma unroll
      for (int i = 0; i < kVLoads; ++i) {
        const int t = v_row + kVRows * i;
        void* dst = Tile::kPvMma ? static_cast<void*>(v_rows + (8 * u + t) * Tile::kVPitch + v_c0 * sizeof(Storage))
                                 : static_cast<void*>(stage + (Tile::kKStageVectors + u * kVLoads + i) * 32 + lane);
        cp_async_16(dst, v_page + t * kHeadDim + v_c0, ok && step + t < t_end);
      }
      if (u == scale_step) {
        scale_row = token_scale;
        scale_row_ok = ok;
      }
    }
    // Per-token scales, one copy per lane. Those of tokens at or past the length are zero-filled:
    // their slots may hold stale bits, and a zero V scale keeps a masked token's zero probability
    // zero.
    if constexpr (kPerToken) {
      // A lane's second token (32-token tiles) is token t + 1 of the same row tile: the next float4.
#pragma unroll
      for (int e = 0; e < Tile::kScalesPerLane; ++e) {
        cp_async_scales<4>(stage_bytes + scale_dst + 16 * e, scale_src + scale_row + e,
                           scale_row_ok && tile + scale_token + e < t_end ? 4 : 0);
      }
    }
    // The block ids of iteration it + kStages - 1 (read when this stage is consumed).
    if (lane < kTileIds) {
      const int step = warp_begin + (it + kStages - 1) * kBlockTile + 8 * lane;
      const bool valid = step < lookup_end;
      cp_async_4(stage_bytes + Tile::kIdOffset + 4 * lane, table + (valid ? (step >> p.log2_block_size) : 0), valid);
    }
    cp_async_commit();
  };

#pragma unroll
  for (int it = 0; it < kStages - 1; ++it) {
    if (it < iterations) {
      issue(it, first_ids[it]);
    } else {
      cp_async_commit();  // empty groups keep the wait count below uniform
    }
  }
  for (int it = 0; it < iterations; ++it) {
    // Groups committed so far: it + kStages - 1; iteration it's copies have landed once at most
    // kStages - 2 are pending.
    cp_async_wait<kStages - 2>();
    __syncwarp();
    const int tile = warp_begin + it * kBlockTile;
    const uint4* stage = ring + (it % kStages) * (Tile::kStageBytes / 16);
    if (it + kStages - 1 < iterations) {
      const int32_t* stage_ids = reinterpret_cast<const int32_t*>(reinterpret_cast<const uint8_t*>(stage) + Tile::kIdOffset);
      int32_t ids[kTileIds];
#pragma unroll
      for (int u = 0; u < kTileIds; ++u) ids[u] = stage_ids[u];
      issue(it + kStages - 1, ids);
    } else {
      cp_async_commit();
    }
    const uint8_t* v_rows = reinterpret_cast<const uint8_t*>(stage + Tile::kKStageVectors * 32);
    const float4* stage_scales =
        reinterpret_cast<const float4*>(reinterpret_cast<const uint8_t*>(stage) + Tile::kScaleOffset);
    uint4 k_vec[kSteps][kKVectors];
    [[maybe_unused]] uint4 v_vec[kSteps][kVLoads];
#pragma unroll
    for (int u = 0; u < kSteps; ++u) {
#pragma unroll
      for (int i = 0; i < kKVectors; ++i) k_vec[u][i] = stage[(u * kKVectors + i) * 32 + lane];
      if constexpr (!Tile::kPvMma) {
#pragma unroll
        for (int i = 0; i < kVLoads; ++i) v_vec[u][i] = stage[(Tile::kKStageVectors + u * kVLoads + i) * 32 + lane];
      }
    }

    if constexpr (Tile::kPvMma) {
      // FP8 storage: 16 tokens (a pair of steps) per score tile.
      // Scores (log2 units), transposed: S^T (16 tokens x 8 heads) = K . Q^T. A = K: row r is
      // token r of step 2 u2 and row r + 8 token r of step 2 u2 + 1, the vectors lane (r, c) loaded,
      // in the channel order q was loaded in; B = Q^T is qa as it is. Every row of the tile is a
      // token, so one mma per 16 tokens and k-step, with no zero rows in the operands. Lane (r, c)
      // gets tokens 16 u2 + r (e = 0, 1) and 16 u2 + 8 + r (e = 2, 3) of heads 2c (e even) and
      // 2c + 1 (e odd); st[h] lists head h's as (u2, e / 2).
      float st[2][kSteps];
      [[maybe_unused]] float2 v_tok[kSteps / 2];  // V scales of tokens 16 u2 + r and 16 u2 + 8 + r
#pragma unroll
      for (int u2 = 0; u2 < kSteps / 2; ++u2) {
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < kKVectors; ++i) {
#pragma unroll
          for (int jj = 0; jj < kStepsPerVector; ++jj) {
            uint32_t a0, a1, a2, a3;
            fp8x4_to_half2x2_bits<Storage>(vector_word(k_vec[2 * u2][i], jj), a0, a2);
            fp8x4_to_half2x2_bits<Storage>(vector_word(k_vec[2 * u2 + 1][i], jj), a1, a3);
            const int ks = i * kStepsPerVector + jj;
            mma_m16n8k16_f16(d, a0, a1, a2, a3, qa[ks][0], qa[ks][1]);
          }
        }
        [[maybe_unused]] float2 k_tok = make_float2(1.0f, 1.0f);
        if constexpr (kPerToken) {
          const float4 kv_scales = stage_scales[8 * u2 + quad_row];
          k_tok = make_float2(kv_scales.x, kv_scales.y);
          v_tok[u2] = make_float2(kv_scales.z, kv_scales.w);
        }
        const int token = tile + 16 * u2 + quad_row;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float score = d[e] * head_scale[e & 1];
          if constexpr (kPerToken) score *= e < 2 ? k_tok.x : k_tok.y;
          st[e & 1][2 * u2 + e / 2] = token + 8 * (e / 2) < t_end ? score : -INFINITY;
        }
      }

      // Online softmax per head over the 8 lanes of a column (xor 4, 8, 16); a lane's accumulator
      // columns are its own two heads, so the rescale needs no exchange. It is skipped once the
      // running maxima have settled and iterations rarely raise them.
      float correction[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) correction[h] = online_softmax_step<kSteps, kShareFirstBit, kShareLastBit>(st[h], m[h], l[h]);
      if (__any_sync(0xffffffffu, correction[0] != 1.0f || correction[1] != 1.0f)) {
#pragma unroll
        for (int a = 0; a < kAccRows; ++a) {
          acc[a][0] *= correction[0];
          acc[a][1] *= correction[1];
          acc[a][2] *= correction[0];
          acc[a][3] *= correction[1];
        }
      }

      // P.V on the tensor cores: O^T (channels x heads) += V^T (channels x 16 tokens) . P^T.
      // B = P^T (k = token, n = head) is the transpose of what the lane holds: each 8 x 8 block
      // [token][head] of fp16 pairs goes through transpose_8x8_b16, after which lane (r, c) holds
      // head r's probabilities of tokens 2c, 2c+1 (b0) and 2c+8, 2c+9 (b1). A = V^T: lane (r, c)
      // reads channels 32*g4 + 4r .. +3 of tokens 2c, 2c+1, 2c+8, 2c+9 (4-byte words) from the
      // stage's token rows and byte-permutes them into (channel: token pair) codes, widened exactly
      // to fp16. P is rounded to fp16 (probabilities in [0, 1]); the products accumulate in FP32.
#pragma unroll
      for (int u2 = 0; u2 < kSteps / 2; ++u2) {
        float p00 = st[0][2 * u2], p01 = st[1][2 * u2], p10 = st[0][2 * u2 + 1], p11 = st[1][2 * u2 + 1];
        if constexpr (kPerToken) {
          // Per-token V scales enter P before its fp16 rounding, relative to v_ref, a running
          // reference of the warp's V scales; the accumulator is kept in units of v_ref. v_ref
          // moves (and the accumulator is rescaled) only when a token's scale exceeds
          // kVRefHeadroom * v_ref, so P * v / v_ref stays within [0, kVRefHeadroom], far inside
          // fp16's range at the same relative precision. The test is a vote on each lane's own
          // scales; only a move pays for the shuffles, which after the first tile is rare.
          const float2 vt = v_tok[u2];
          const float lane_max = fmaxf(vt.x, vt.y);
          if (__any_sync(0xffffffffu, lane_max > v_ref * kVRefHeadroom)) {
            // The tile's 16 tokens are spread over the 8 lanes of a column; every column holds
            // the same tokens, so the column's maximum is the warp's and v_ref stays warp-uniform.
            float vmax = lane_max;
#pragma unroll
            for (int bit = kShareFirstBit; bit <= kShareLastBit; bit *= 2) {
              vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, bit));
            }
            const float rebase = v_ref / vmax;  // 0 before any scale > 0: the accumulator is still 0
#pragma unroll
            for (int a = 0; a < kAccRows; ++a) {
#pragma unroll
              for (int e = 0; e < 4; ++e) acc[a][e] *= rebase;
            }
            v_ref = vmax;
            v_ref_inv = 1.0f / vmax;
          }
          p00 *= vt.x * v_ref_inv;
          p01 *= vt.x * v_ref_inv;
          p10 *= vt.y * v_ref_inv;
          p11 *= vt.y * v_ref_inv;
        }
        const uint32_t b0 = transpose_8x8_b16(float2_to_half2(p00, p01));
        const uint32_t b1 = transpose_8x8_b16(float2_to_half2(p10, p11));
        const uint8_t* rows = v_rows + (16 * u2 + 2 * quad_col) * Tile::kVPitch + 4 * quad_row;
#pragma unroll
        for (int g4 = 0; g4 < kHeadDim / 32; ++g4) {
          const uint32_t w0 = *reinterpret_cast<const uint32_t*>(rows + 32 * g4);
          const uint32_t w1 = *reinterpret_cast<const uint32_t*>(rows + Tile::kVPitch + 32 * g4);
          const uint32_t w8 = *reinterpret_cast<const uint32_t*>(rows + 8 * Tile::kVPitch + 32 * g4);
          const uint32_t w9 = *reinterpret_cast<const uint32_t*>(rows + 9 * Tile::kVPitch + 32 * g4);
          // (channel 0: t, t+1), (channel 1: t, t+1) and likewise for channels 2, 3.
          const uint32_t lo_a = __byte_perm(w0, w1, 0x5140);
          const uint32_t hi_a = __byte_perm(w0, w1, 0x7362);
          const uint32_t lo_b = __byte_perm(w8, w9, 0x5140);
          const uint32_t hi_b = __byte_perm(w8, w9, 0x7362);
          uint32_t a_lo[4], a_hi[4];  // A fragments of the two tiles: channels (0, 1) and (2, 3)
          fp8x4_to_half2x2_bits<Storage>(lo_a, a_lo[0], a_lo[1]);
          fp8x4_to_half2x2_bits<Storage>(lo_b, a_lo[2], a_lo[3]);
          fp8x4_to_half2x2_bits<Storage>(hi_a, a_hi[0], a_hi[1]);
          fp8x4_to_half2x2_bits<Storage>(hi_b, a_hi[2], a_hi[3]);
          mma_m16n8k16_f16(acc[2 * g4], a_lo[0], a_lo[1], a_lo[2], a_lo[3], b0, b1);
          mma_m16n8k16_f16(acc[2 * g4 + 1], a_hi[0], a_hi[1], a_hi[2], a_hi[3], b0, b1);
        }
      }
    } else {
      // Scores (log2 units): lane (r, c) gets head r's scores of tokens 2c, 2c+1 of each step.
      float s[kSteps][2];
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
        float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int i = 0; i < kKVectors; ++i) {
#pragma unroll
          for (int jj = 0; jj < kStepsPerVector; ++jj) {
            const int ks = i * kStepsPerVector + jj;
            // B (k = 2c..2c+1 and 2c+8..2c+9): two words of the K vector as they are.
            const uint32_t b0 = vector_word(k_vec[u][i], 2 * jj);
            const uint32_t b1 = vector_word(k_vec[u][i], 2 * jj + 1);
            mma_m16n8k16<kBf16Mma>(d, qa[ks][0], qa[ks][1], b0, b1);
            if (q_split) mma_m16n8k16<kBf16Mma>(d, qa_lo[ks][0], qa_lo[ks][1], b0, b1);
          }
        }
        const int token = tile + 8 * u + 2 * quad_col;
        float score0 = d[0] * head_scale[0];
        float score1 = d[1] * head_scale[0];
        s[u][0] = token < t_end ? score0 : -INFINITY;
        s[u][1] = token + 1 < t_end ? score1 : -INFINITY;
      }

      // Online softmax per head over the quad.
      const float correction = online_softmax_step<2 * kSteps, kShareFirstBit, kShareLastBit>(&s[0][0], m[0], l[0]);
      // P @ V on the CUDA cores in the row layout: the probabilities of this lane's V tokens come
      // from the lanes holding them (head g's token t sits in lane 4g + t/2, element t % 2).
      // Once the running max has settled, iterations rarely raise it: skip the rescale then.
      if (__any_sync(0xffffffffu, correction != 1.0f)) {
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          const float c = __shfl_sync(0xffffffffu, correction, 4 * g);
#pragma unroll
          for (int e = 0; e < kE; ++e) acc[g][e] *= c;
        }
      }
#pragma unroll
      for (int u = 0; u < kSteps; ++u) {
#pragma unroll
        for (int i = 0; i < kVLoads; ++i) {
          const int t = v_row + kVRows * i;
          float v[kE];
          Traits::unpack(v_vec[u][i], v);
#pragma unroll
          for (int g = 0; g < kGroup; ++g) {
            const float x0 = __shfl_sync(0xffffffffu, s[u][0], 4 * g + t / 2);
            const float x1 = __shfl_sync(0xffffffffu, s[u][1], 4 * g + t / 2);
            const float prob = (t & 1) ? x1 : x0;
#pragma unroll
            for (int e = 0; e < kE; ++e) acc[g][e] = fmaf(prob, v[e], acc[g][e]);
          }
        }
      }
    }
  }

  // The softmax sums are spread over the lanes that share a head.
#pragma unroll
  for (int h = 0; h < kLaneHeads; ++h) {
#pragma unroll
    for (int bit = kShareFirstBit; bit <= kShareLastBit; bit *= 2) {
      l[h] += __shfl_xor_sync(0xffffffffu, l[h], bit);
    }
  }
  // Each warp's [kGroup][kHeadDim] output goes to the start of its own ring, once its copies have
  // landed (the groups after its last iteration are empty) and its lanes are done reading stages.
  cp_async_wait<0>();
  __syncwarp();
  auto warp_acc = [&](int w) {
    return reinterpret_cast<float(*)[kHeadDim]>(decode_ring + static_cast<size_t>(w) * kStages * (Tile::kStageBytes / 16));
  };
  float(*own_acc)[kHeadDim] = warp_acc(warp);
  if constexpr (Tile::kPvMma) {
    const float acc_unit = kPerToken ? v_ref : 1.0f;  // warps differ in v_ref: back to absolute units
#pragma unroll
    for (int a = 0; a < kAccRows; ++a) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int head = 2 * quad_col + (e & 1);
        const int channel = 32 * (a / 2) + 4 * quad_row + 2 * (a % 2) + (e >> 1);
        if (head < kGroup) own_acc[head][channel] = acc[a][e] * acc_unit;
      }
    }
  } else {
    // Rows of the V layout hold the same channels for different tokens, all relative to the same
    // running max: plain sums merge them.
#pragma unroll
    for (int offset = kRowVectors; offset < 32; offset *= 2) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int e = 0; e < kE; ++e) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], offset);
      }
    }
    if (v_row == 0) {
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
#pragma unroll
        for (int e = 0; e < kE; ++e) own_acc[g][v_c0 + e] = acc[g][e];
      }
    }
  }
  if constexpr (Tile::kPvMma) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int head = 2 * quad_col + h;
      if (quad_row == 0 && head < kGroup) {
        smem_m[warp][head] = m[h];
        smem_l[warp][head] = l[h];
      }
    }
  } else if (quad_col == 0 && quad_row < kGroup) {
    smem_m[warp][quad_row] = m[0];
    smem_l[warp][quad_row] = l[0];
  }
  __syncthreads();

  // Merge the warps; each thread finishes some (head, channel) outputs.
  const bool direct = seg.parts == 1;
  for (int index = static_cast<int>(threadIdx.x); index < kGroup * kHeadDim; index += kDecodeThreads) {
    const int g = index / kHeadDim;
    const int c = index % kHeadDim;
    float m_max = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) m_max = fmaxf(m_max, smem_m[w][g]);
    const float m_ref = m_max == -INFINITY ? 0.0f : m_max;
    float l_sum = 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float weight = exp2f(smem_m[w][g] - m_ref);
      l_sum += smem_l[w][g] * weight;
      o += warp_acc(w)[g][c] * weight;
    }
    // No keys (empty sequence or split): the output is zero, by definition (attention.h).
    o = l_sum > 0.0f ? o / l_sum * v_static : 0.0f;
    const int head = q_head0 + g;
    if (direct) {
      store_activation(p.out, (static_cast<int64_t>(seq) * p.num_q_heads + head) * kHeadDim + c, o, p.out_fp16);
    } else {
      const int64_t w_row = static_cast<int64_t>(seg.row) * p.num_q_heads + head;
      p.partial_o[w_row * kHeadDim + c] = o;
      if (c == 0) p.partial_lse[w_row] = l_sum > 0.0f ? m_max + __log2f(l_sum) : -INFINITY;
    }
  }
  if (direct) return;

  // Split-KV merge by the sequence's last split to finish (flash-decoding's reduction without a
  // second launch). The barrier orders every thread's partial writes before thread 0's count, whose
  // acq_rel atomic releases them at GPU scope (a release is cumulative over what the barrier
  // ordered before it) and, for the last split, acquires the other splits' partials; the second
  // barrier hands that on to the block's threads. One thread's acq_rel fence instead of a
  // sequentially consistent __threadfence() in every thread before the count and again after it.
  __shared__ bool last_split;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* counter = p.split_counters + static_cast<int64_t>(seq) * gridDim.x + blockIdx.x;
    int32_t done;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(done) : "l"(counter) : "memory");
    last_split = done == seg.parts - 1;
    if (last_split) *counter = 0;  // ready for the next run (CUDA graph replays)
  }
  __syncthreads();
  if (!last_split) return;

  // Online merge of the splits' results, weighted by exp2(lse - running max) (as in the main loop).
  // The block's kGroup rows of a split result are kGroup * kHeadDim contiguous floats: thread
  // (lane j of kMergeLanes, column c) merges float4 column c of the splits j, j + kMergeLanes, ...,
  // loading kMergeBatch splits' lse and values at once (the merge sits on the launch's critical
  // path: fewer, wider round trips); the lanes of a column are merged through shared memory. A
  // thread with several columns (8 heads at head dim 128, or 4 at 256) finishes one before the
  // next: with both columns' state and loads unrolled together, ptxas gave the per-token kernel of
  // 8 heads 148 registers instead of 128 (3 blocks per SM instead of 4).
  constexpr int kColumns = kGroup * kHeadDim / 4;
  constexpr int kMergeLanes = kColumns >= kDecodeThreads ? 1 : kDecodeThreads / kColumns;
  constexpr int kColumnsPerThread = kColumns >= kDecodeThreads ? kColumns / kDecodeThreads : 1;
  constexpr int kMergeBatch = 16;
  static_assert(kColumns % kDecodeThreads == 0 || kDecodeThreads % kColumns == 0, "columns tile the threads");
  static_assert(kMergeLanes == 1 || kColumnsPerThread == 1, "a column's lanes merge in one pass");
  const int merge_lane = static_cast<int>(threadIdx.x) / (kDecodeThreads / kMergeLanes);
  const int column0 = static_cast<int>(threadIdx.x) % (kDecodeThreads / kMergeLanes);
  const float4* partial_rows = reinterpret_cast<const float4*>(p.partial_o + static_cast<int64_t>(q_head0) * kHeadDim);
  const int64_t split_stride = static_cast<int64_t>(p.num_q_heads) * kHeadDim / 4;  // float4 per work item
#pragma unroll 1
  for (int j = 0; j < kColumnsPerThread; ++j) {
    const int column = column0 + j * kDecodeThreads;
    const int g = column / (kHeadDim / 4);
    const float* lse_column = p.partial_lse + q_head0 + g;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float weight_sum = 0.0f;
    float m_run = -INFINITY;
    for (int i0 = merge_lane; i0 < seg.parts; i0 += kMergeLanes * kMergeBatch) {
      float lse[kMergeBatch];
      float4 x[kMergeBatch];
#pragma unroll
      for (int b = 0; b < kMergeBatch; ++b) {
        const int i = i0 + b * kMergeLanes;
        lse[b] = -INFINITY;
        x[b] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (i < seg.parts) {
          const int64_t row = i == 0 ? seg.first_row : seg.next_row + static_cast<int64_t>(i - 1) * seg.row_step;
          lse[b] = __ldcg(lse_column + row * p.num_q_heads);
          x[b] = __ldcg(partial_rows + row * split_stride + column);
        }
      }
      float m_new = m_run;
#pragma unroll
      for (int b = 0; b < kMergeBatch; ++b) m_new = fmaxf(m_new, lse[b]);
      if (m_new == -INFINITY) continue;  // only empty splits so far: nothing to weigh
      const float correction = exp2f(m_run - m_new);
      weight_sum *= correction;
      o.x *= correction;
      o.y *= correction;
      o.z *= correction;
      o.w *= correction;
#pragma unroll
      for (int b = 0; b < kMergeBatch; ++b) {
        const float w = exp2f(lse[b] - m_new);
        weight_sum += w;
        o.x = fmaf(w, x[b].x, o.x);
        o.y = fmaf(w, x[b].y, o.y);
        o.z = fmaf(w, x[b].z, o.z);
        o.w = fmaf(w, x[b].w, o.w);
      }
      m_run = m_new;
    }
    if constexpr (kMergeLanes > 1) {
      cp_async_wait<0>();  // the ring holds the lanes' states (no copy may still land there)
      float4* lane_o = reinterpret_cast<float4*>(decode_ring);          // [kDecodeThreads]
      float* lane_w = reinterpret_cast<float*>(lane_o + kDecodeThreads);  // [kDecodeThreads]
      float* lane_m = lane_w + kDecodeThreads;                            // [kDecodeThreads]
      lane_o[threadIdx.x] = o;
      lane_w[threadIdx.x] = weight_sum;
      lane_m[threadIdx.x] = m_run;
      __syncthreads();
      if (merge_lane != 0) return;
      float m_max = m_run;
#pragma unroll
      for (int l = 1; l < kMergeLanes; ++l) m_max = fmaxf(m_max, lane_m[threadIdx.x + l * kColumns]);
      const float m_ref = m_max == -INFINITY ? 0.0f : m_max;  // all splits empty: every weight is 0
      const float own = exp2f(m_run - m_ref);
      o = make_float4(o.x * own, o.y * own, o.z * own, o.w * own);
      weight_sum *= own;
#pragma unroll
      for (int l = 1; l < kMergeLanes; ++l) {
        const int from = static_cast<int>(threadIdx.x) + l * kColumns;
        const float w = exp2f(lane_m[from] - m_ref);
        o.x = fmaf(w, lane_o[from].x, o.x);
        o.y = fmaf(w, lane_o[from].y, o.y);
        o.z = fmaf(w, lane_o[from].z, o.z);
        o.w = fmaf(w, lane_o[from].w, o.w);
        weight_sum = fmaf(w, lane_w[from], weight_sum);
      }
    }
    const int c = (column % (kHeadDim / 4)) * 4;
    const float inv = weight_sum > 0.0f ? 1.0f / weight_sum : 0.0f;
    const int64_t row = (static_cast<int64_t>(seq) * p.num_q_heads + q_head0 + g) * kHeadDim + c;
    store_activation(p.out, row, o.x * inv, p.out_fp16);
    store_activation(p.out, row + 1, o.y * inv, p.out_fp16);
    store_activation(p.out, row + 2, o.z * inv, p.out_fp16);
    store_activation(p.out, row + 3, o.w * inv, p.out_fp16);
  }
}

// Block row y's segments. Split plan: one, work item y (sequence, split) with `parts` = the
// sequence's split count, computed when every sequence has the same count (the load of `work`
// would be one more DRAM latency in front of the length, q and block-id loads, which all need the
// sequence). Balanced plan (equal planned lengths L, padded to a multiple of 16): the sequences'
// keys laid end to end, block row y takes keys [y * W, (y + 1) * W) with W <= L, so at most the
// tail of one sequence and the head of the next. Every block row then streams the same number of
// keys, where whole-sequence splits leave slots idle (256 blocks of 16k keys on 264 slots);
// partial rows are 2y + k for the row's k-th segment.
template <typename Storage, int kHeadDim, int kGroup, bool kPerToken>
__global__ void __launch_bounds__(kDecodeThreads) paged_decode_kernel(const DecodeParams p) {
  const int y = static_cast<int>(blockIdx.y);
  const bool balanced = p.balance_tokens > 0;
  const int64_t w = p.balance_tokens;
  const int64_t len = p.balance_len;
  int64_t f = static_cast<int64_t>(y) * w;
  const int64_t f_end = balanced ? min(f + w, static_cast<int64_t>(p.batch) * len) : 0;
  // One call site of decode_segment (it is inlined): the segment is described first.
#pragma unroll 1
  for (int k = 0; k < 2; ++k) {
    DecodeSegment seg;
    if (balanced) {
      if (f >= f_end) break;
      seg.seq = static_cast<int>(f / len);
      const int64_t seq_start = static_cast<int64_t>(seg.seq) * len;
      seg.t_begin = static_cast<int>(f - seq_start);
      seg.t_stop = static_cast<int>(min(len, static_cast<int64_t>(seg.t_begin) + (f_end - f)));
      seg.limit = len;
      const int64_t y0 = seq_start / w;             // block row holding the sequence's first key
      const int64_t y1 = (seq_start + len - 1) / w;  // ... and its last
      seg.parts = static_cast<int>(y1 - y0 + 1);
      seg.row = 2 * y + k;
      seg.first_row = static_cast<int>(2 * y0 + (y0 * w == seq_start ? 0 : 1));
      seg.next_row = static_cast<int>(2 * (y0 + 1));
      seg.row_step = 2;
      f += seg.t_stop - seg.t_begin;
    } else {
      if (k > 0) break;
      int split;
      if (p.uniform_splits > 0) {
        seg.parts = p.uniform_splits;
        seg.seq = y / seg.parts;
        seg.first_row = seg.seq * seg.parts;
        split = y - seg.first_row;
      } else {
        const int4 item = p.work[y];
        seg.seq = item.x;
        split = item.y;
        seg.parts = item.z;
        seg.first_row = item.w;
      }
      seg.t_begin = split * p.chunk_tokens;
      seg.t_stop = seg.t_begin + p.chunk_tokens;
      seg.limit = static_cast<int64_t>(seg.parts) * p.chunk_tokens;
      seg.row = y;
      seg.next_row = seg.first_row + 1;
      seg.row_step = 1;
    }
    if (k > 0) __syncthreads();  // the previous segment's last reads of shared memory are done
    decode_segment<Storage, kHeadDim, kGroup, kPerToken>(p, seg);
  }
}

// Launches paged_decode_kernel<Storage, kHeadDim, kGroup, kPerToken> over `grid` (a non-null
// `blocks_per_sm` instead receives how many of its blocks one SM holds at once, for the plan). `two_per_sm`
// launches with enough dynamic shared memory that no SM holds more than two of the blocks: the
// balanced plan counts on every block sharing its SM with exactly one other.
template <typename Storage, int kHeadDim, int kGroup, bool kPerToken>
void paged_decode_kernel_op(const DecodeParams* p, dim3 grid, bool two_per_sm, cudaStream_t stream,
                            int* blocks_per_sm) {
  constexpr int kSmem = DecodeTile<Storage, kHeadDim>::kSmemBytes;
  const auto kernel = paged_decode_kernel<Storage, kHeadDim, kGroup, kPerToken>;
  // The ring exceeds the default 48 KB of dynamic shared memory, and a capped launch takes up to
  // half an SM's: raise the limit once per device, and keep that half-SM size.
  static std::atomic<int> half_sm_of_device[64];  // 0 = not configured yet
  int device = 0;
  FP8KV_CUDA_CHECK(cudaGetDevice(&device));
  std::atomic<int>& half_sm_slot = half_sm_of_device[device % 64];
  int half_sm = half_sm_slot.load();
  if (half_sm == 0) {
    int per_sm = 0;
    int reserved = 0;
    int optin = 0;
    FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
    FP8KV_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    cudaFuncAttributes attributes{};
    FP8KV_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
    // Two blocks of this size fill the SM's shared memory; a third does not fit.
    const int fill = std::min(optin, per_sm / 2 - static_cast<int>(attributes.sharedSizeBytes) - reserved) / 16 * 16;
    half_sm = std::max(kSmem, fill);
    FP8KV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, half_sm));
    half_sm_slot.store(half_sm);
  }
  if (blocks_per_sm != nullptr) {
    FP8KV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks_per_sm, kernel, kDecodeThreads, kSmem));
    return;
  }
  const int smem = two_per_sm ? half_sm : kSmem;
  kernel<<<grid, kDecodeThreads, smem, stream>>>(*p);
}

template <typename Storage, int kHeadDim, bool kPerToken>
void paged_decode_group_op(const DecodeParams* p, int kernel_group, dim3 grid, bool two_per_sm, cudaStream_t stream,
                           int* blocks_per_sm) {
  switch (kernel_group) {
    case 1: return paged_decode_kernel_op<Storage, kHeadDim, 1, kPerToken>(p, grid, two_per_sm, stream, blocks_per_sm);
    case 2: return paged_decode_kernel_op<Storage, kHeadDim, 2, kPerToken>(p, grid, two_per_sm, stream, blocks_per_sm);
    case 4: return paged_decode_kernel_op<Storage, kHeadDim, 4, kPerToken>(p, grid, two_per_sm, stream, blocks_per_sm);
    case 8:
      if constexpr (8 <= max_decode_group(StorageTraits<Storage>::kIsFp8, kHeadDim)) {
        return paged_decode_kernel_op<Storage, kHeadDim, 8, kPerToken>(p, grid, two_per_sm, stream, blocks_per_sm);
      }
      break;
    default: break;
  }
}

// Launches paged_decode_kernel<Storage, head_dim, kernel_group, kPerToken> (kernel_group from the
// host's selection, head_dim 64/128/256), or with p == nullptr reports its blocks per SM. One
// translation unit per storage type and scale kind (decode_<storage>[_token].cu) instantiates it,
// so the six compile in parallel.
template <typename Storage, bool kPerToken>
void paged_decode_op(const DecodeParams* p, int head_dim, int kernel_group, dim3 grid, bool two_per_sm,
                     cudaStream_t stream, int* blocks_per_sm) {
  switch (head_dim) {
    case 64:
      return paged_decode_group_op<Storage, 64, kPerToken>(p, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    case 128:
      return paged_decode_group_op<Storage, 128, kPerToken>(p, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    case 256:
      return paged_decode_group_op<Storage, 256, kPerToken>(p, kernel_group, grid, two_per_sm, stream, blocks_per_sm);
    default: break;
  }
}

extern template void paged_decode_op<Bf16, false>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
extern template void paged_decode_op<Fp16, false>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
extern template void paged_decode_op<Fp8E4M3, false>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
extern template void paged_decode_op<Fp8E4M3, true>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
extern template void paged_decode_op<Fp8E5M2, false>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);
extern template void paged_decode_op<Fp8E5M2, true>(const DecodeParams*, int, int, dim3, bool, cudaStream_t, int*);

}  // namespace fp8kv::cuda_detail

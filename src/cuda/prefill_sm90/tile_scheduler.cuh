// Which (sequence, query head, 128-row query block) a work tile is, and the order in which the
// persistent CTAs take them.
//
// Work tile indices run over num_q_heads x an upper bound on the number of query blocks over all
// sequences (the host does not know the device-side cumulative lengths, but sum_b ceil(len_b /
// 128) <= total_q / 128 + batch); an index past the last block of its section is not a tile.
// Within a sequence the blocks are handed out last-first, so that under causal masking the
// longest blocks start first and the short ones fill the tail.
// The heads are cut into sections of p.heads_per_section (whole KV-head groups, chosen on the
// host so that a section's K/V fits comfortably in L2); the order runs section after section, and
// inside a section the head varies fastest: all its heads' first block, then their second, ...
// So within a section the order is longest-first over all its heads, and heads that share a KV
// head run side by side on the same K/V tiles. With one head after another instead, the last
// heads' longest blocks started when most of the work was done and ran alone at the end.
//
// Persistent CTAs: the grid has one CTA per SM (at most one per work tile). CTA c takes tile c
// first, then the next index of a global counter, so tiles still start in the order above and a
// CTA that finishes early takes the next one, as the hardware's block scheduler did when every
// tile was a CTA (a fixed stride instead leaves CTA c the longest tile of every round: 4-72%
// longer than the counter's order at the bench shapes, in a simulation at one unit per K/V tile).
// What persistence buys: the next tile's Q and first K/V tiles load while the current one's last
// turns and output store run, the barrier setup is paid once per SM instead of once per tile, and
// warpgroup 0 starts the next tile's Q.K^T under warpgroup 1's last P.V (kernel.cuh). H100 A/B
// against one CTA per tile (2026-11-24, two runs each, FP8 default): Qwen3-8B 8 x 512 72.0 ->
// 55.4 us, 1 x 4096 224 -> 211, Qwen3-0.6B 8 x 4096 881 -> 821, head dim 64 1 x 4096 101 -> 95,
// 16k causal 1.01-1.02x, non-causal 1.00-1.01x.
// The counter resets itself, so the launch needs no memset and replays in a CUDA graph: the
// CTA whose "finished" increment is the grid's last zeroes both words; by then every CTA has
// drawn its final index. Two launches that run at the same time must not share a counter pair,
// so each launch takes a slot of its own (host side, launch.cuh): direct launches take the first
// kDirectWorkSlots in turn, and a launch captured into a CUDA graph keeps one of the other
// kCapturedWorkSlots for good, since the graph may be replayed at any time beside any other
// launch. The counters, and the slots handed out, are per instantiation file: the kernels of one
// file (dense and paged) share them.
#pragma once

#include <cstdint>

#include "cuda/prefill_sm90/traits.cuh"

namespace fp8kv::cuda::sm90 {

constexpr int kDirectWorkSlots = 256;
constexpr int kCapturedWorkSlots = 3840;
constexpr int kWorkSlots = kDirectWorkSlots + kCapturedWorkSlots;

namespace {
// [slot][0]: work tiles drawn past the first gridDim.x; [slot][1]: CTAs that have drawn their last.
// One array per instantiation file (internal linkage), zero at module load.
__device__ unsigned g_work_counters[kWorkSlots][2];
}  // namespace

struct WorkTile {
  int valid;    // 0: no tile (the producer's "no more work" for the consumers)
  int batch;
  int q_head;
  int m_block;
  int q_start;  // first query row of the sequence in the packed tensor
  int len_q;
  int len_k;
  int k_start;  // dense: first key row of the sequence in the packed tensor
};

// The first query row of work tile t, relative to its sequence. The kernels that pass turns
// (traits.cuh, kPassesTurns) align their blocks to the sequence's end, so that a partial block is
// the sequence's first, which under a causal mask has the fewest K/V tiles; its rows before the
// sequence (negative) are computed and not stored. At the end, its 64 real rows would take the
// most tiles, with one warpgroup computing and two passing: at 4096 keys, 32 of a head's 384
// rounds of turns. Measured: README "Fifteenth session".
template <class Traits>
__device__ __forceinline__ int block_row0(const WorkTile& t) {
  const int row0 = t.m_block * Traits::kBlockM;
  if constexpr (Traits::kPassesTurns) {
    return row0 - (Traits::kBlockM - t.len_q % Traits::kBlockM) % Traits::kBlockM;
  } else {
    return row0;
  }
}

template <class Traits>
__device__ __forceinline__ WorkTile work_tile_at(const PrefillParams& p, int index) {
  WorkTile t{};
  const int section_tiles = p.heads_per_section * p.blocks_per_head;
  const int section = index / section_tiles;
  const int in_section = index - section * section_tiles;
  int remaining = in_section / p.heads_per_section;
  for (int b = 0; b < p.batch; ++b) {
    const int q0 = p.cu_seqlens_q[b];
    const int len_q = p.cu_seqlens_q[b + 1] - q0;
    const int blocks = (len_q + Traits::kBlockM - 1) / Traits::kBlockM;
    if (remaining < blocks) {
      t.valid = 1;
      t.batch = b;
      t.q_head = section * p.heads_per_section + in_section % p.heads_per_section;
      t.m_block = blocks - 1 - remaining;
      t.q_start = q0;
      t.len_q = len_q;
      if constexpr (Traits::kPaged) {
        t.len_k = p.seq_lens[b];
        t.k_start = 0;
      } else {
        t.k_start = p.cu_seqlens_k[b];
        t.len_k = p.cu_seqlens_k[b + 1] - t.k_start;
      }
      return t;
    }
    remaining -= blocks;
  }
  t.valid = 0;
  return t;
}

// The producer leader's view of the counter. The first tile is blockIdx.x; the leader draws the
// next index when it has issued the current tile's last K/V load, a few turns before the tile
// ends, so that the atomic's latency hides behind those turns. (Drawing at the tile's start
// instead hands out tiles a whole tile before the CTA is free: up to 10% longer at 8 x 512 in
// the simulation, where tiles are 1-4 K/V tiles long.)
// (The counter's address is recomputed from p.work_slot at each use: the producer has 40
// registers.)
struct WorkCounter {
  int index;  // the index the next call of next() looks at

  __device__ void start() { index = static_cast<int>(blockIdx.x); }
  __device__ void draw(const PrefillParams& p) {
    index = static_cast<int>(atomicAdd(&g_work_counters[p.work_slot][0], 1u) + gridDim.x);
  }
  // The work tile at `index` (an index that is not a tile draws the next at once); valid = 0 once
  // the indices run out.
  template <class Traits>
  __device__ WorkTile next(const PrefillParams& p) {
    while (index < p.num_work) {
      const WorkTile t = work_tile_at<Traits>(p, index);
      if (t.valid) return t;
      draw(p);
    }
    return WorkTile{};
  }
  // Called once next() has run out: the grid's last CTA resets the counter pair.
  __device__ void finish(const PrefillParams& p) {
    unsigned* words = g_work_counters[p.work_slot];
    __threadfence();  // this CTA's draws are ordered before its "finished" increment
    if (atomicAdd(&words[1], 1u) == gridDim.x - 1) {
      atomicExch(&words[0], 0u);
      atomicExch(&words[1], 0u);
    }
  }
};

// Number of KV tiles the block's rows can see. Causal masking is aligned bottom-right: row i sees
// keys j <= i + (len_k - len_q).
template <class Traits>
__device__ __forceinline__ int num_kv_tiles(const WorkTile& t, bool causal) {
  int end = t.len_k;
  if (causal) {
    const int last_row_end = block_row0<Traits>(t) + Traits::kBlockM + (t.len_k - t.len_q);
    end = min(end, last_row_end);
  }
  return end <= 0 ? 0 : (end + Traits::kBlockN - 1) / Traits::kBlockN;
}

// The K/V tiles that consumer warpgroup `warpgroup`'s 64 rows need: fewer than the work tile's
// when the causal diagonal cuts its later rows off (192-row tiles over 128-key tiles: the first
// warpgroup of every other block needs one tile less; a query chunk whose cached prefix is not a
// whole number of tiles), and 0 when all its rows lie outside the sequence (they are not stored).
template <class Traits>
__device__ __forceinline__ int warpgroup_kv_tiles(const WorkTile& t, bool causal, int warpgroup) {
  const int row0 = block_row0<Traits>(t) + warpgroup * 64;
  const int row_end = min(row0 + 64, t.len_q);
  if (row_end <= max(row0, 0)) return 0;
  const int end = causal ? min(t.len_k, row_end + (t.len_k - t.len_q)) : t.len_k;
  return end <= 0 ? 0 : (end + Traits::kBlockN - 1) / Traits::kBlockN;
}

}  // namespace fp8kv::cuda::sm90

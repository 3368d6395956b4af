// Which (sequence, query head, 128-row query block) a CTA computes.
//
// The grid is one-dimensional: num_q_heads x an upper bound on the number of query blocks over all
// sequences (the host does not know the device-side cumulative lengths, but sum_b ceil(len_b /
// 128) <= total_q / 128 + batch). Each CTA walks cu_seqlens_q to find its block; CTAs past the
// last block exit at once. Within a sequence the blocks are handed out last-first, so that under
// causal masking the longest blocks start first and the short ones fill the tail.
// The heads are cut into sections of p.heads_per_section (whole KV-head groups, chosen on the
// host so that a section's K/V fits comfortably in L2); the grid runs section after section, and
// inside a section the head varies fastest: all its heads' first block, then their second, ...
// So within a section the order is longest-first over all its heads, and heads that share a KV
// head run side by side on the same K/V tiles. With one head after another instead, the last
// heads' longest blocks started when most of the work was done and ran alone at the end.
#pragma once

#include <cstdint>

#include "cuda/prefill_sm90/traits.cuh"

namespace fp8kv::cuda::sm90 {

struct WorkTile {
  bool valid;
  int batch;
  int q_head;
  int m_block;
  int q_start;  // first query row of the sequence in the packed tensor
  int len_q;
  int len_k;
  int k_start;  // dense: first key row of the sequence in the packed tensor
};

template <class Traits>
__device__ __forceinline__ WorkTile get_work_tile(const PrefillParams& p) {
  WorkTile t{};
  const int blocks_per_head = static_cast<int>(gridDim.x) / p.num_q_heads;
  const int section_ctas = p.heads_per_section * blocks_per_head;
  const int section = static_cast<int>(blockIdx.x) / section_ctas;
  const int in_section = static_cast<int>(blockIdx.x) - section * section_ctas;
  int remaining = in_section / p.heads_per_section;
  for (int b = 0; b < p.batch; ++b) {
    const int q0 = p.cu_seqlens_q[b];
    const int len_q = p.cu_seqlens_q[b + 1] - q0;
    const int blocks = (len_q + Traits::kBlockM - 1) / Traits::kBlockM;
    if (remaining < blocks) {
      t.valid = true;
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
  t.valid = false;
  return t;
}

// Number of KV tiles the block's rows can see. Causal masking is aligned bottom-right: row i sees
// keys j <= i + (len_k - len_q).
template <class Traits>
__device__ __forceinline__ int num_kv_tiles(const WorkTile& t, bool causal) {
  int end = t.len_k;
  if (causal) {
    const int last_row_end = (t.m_block + 1) * Traits::kBlockM + (t.len_k - t.len_q);
    end = min(end, last_row_end);
  }
  return end <= 0 ? 0 : (end + Traits::kBlockN - 1) / Traits::kBlockN;
}

}  // namespace fp8kv::cuda::sm90

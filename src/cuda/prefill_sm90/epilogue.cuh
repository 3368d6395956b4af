// Writes a consumer warpgroup's O rows (already normalised and descaled) to the bf16 output.
// Each quad owns a row: 4 threads x 2 channels per 8-channel group, so a quad stores 16
// contiguous bytes per group; rows outside the sequence (past its end, or before its start in a
// block aligned to its end) are skipped.
#pragma once

#include <cuda_bf16.h>

#include "cuda/prefill_sm90/tile_scheduler.cuh"

namespace fp8kv::cuda::sm90 {

template <class Traits, int kORegs>
__device__ void store_output(const PrefillParams& p, const WorkTile& t, const float (&o)[kORegs], int warpgroup,
                             int thread_in_wg) {
  const int warp = thread_in_wg / 32, lane = thread_in_wg % 32;
  const int row0 = block_row0<Traits>(t) + warpgroup * 64 + warp * 16 + lane / 4;
  const int col0 = 2 * (lane % 4);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if ((Traits::kPassesTurns && row < 0) || row >= t.len_q) continue;
    __nv_bfloat16* dst =
        p.out + (static_cast<int64_t>(t.q_start + row) * p.num_q_heads + t.q_head) * Traits::kHeadDim + col0;
#pragma unroll
    for (int j = 0; j < kORegs / 4; ++j) {
      *reinterpret_cast<uint32_t*>(dst + 8 * j) = pack_bf16x2(o[4 * j + 2 * r], o[4 * j + 2 * r + 1]);
    }
  }
}

}  // namespace fp8kv::cuda::sm90

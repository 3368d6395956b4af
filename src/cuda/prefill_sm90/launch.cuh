// Host side of one kernel instantiation: raise the shared-memory limit once and launch. Included
// only by the per-(dtype, head dim) instantiation files (src/cuda/prefill_*.cu).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "cuda/prefill_sm90/kernel.cuh"
#include "fp8kv/error.h"

namespace fp8kv::cuda::sm90 {

// grid_x: work tiles per query head (an upper bound on the query blocks, see tile_scheduler.cuh).
template <class Traits>
void launch_prefill(const PrefillParams& params, int grid_x, cudaStream_t stream) {
  static const cudaError_t attribute_status = cudaFuncSetAttribute(
      prefill_kernel<Traits>, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
  if (attribute_status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill kernel shared-memory setup failed: ") + cudaGetErrorString(attribute_status));
  }
  const int64_t work = static_cast<int64_t>(grid_x) * params.num_q_heads;
  if (work > INT32_MAX / 2) {  // the counter may run up to twice past the last index
    throw InvalidArgument("q", "needs " + std::to_string(work) + " work tiles (query blocks x heads), more than " +
                                   std::to_string(INT32_MAX / 2) + " one launch covers");
  }
  int device = 0, sms = 0;
  cudaError_t status = cudaGetDevice(&device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill cannot query the device: ") + cudaGetErrorString(status));
  }
  // Persistent CTAs, one per SM (the kernel's shared memory allows one), none without a tile.
  // Each launch takes the next counter pair of the ring (tile_scheduler.cuh).
  static std::atomic<unsigned> next_slot{0};
  PrefillParams p = params;
  p.blocks_per_head = grid_x;
  p.num_work = static_cast<int>(work);
  p.work_slot = static_cast<int>(next_slot.fetch_add(1, std::memory_order_relaxed) % kWorkSlots);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(work, std::max(sms, 1))));
  prefill_kernel<Traits><<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(p);
  status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill kernel launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace fp8kv::cuda::sm90

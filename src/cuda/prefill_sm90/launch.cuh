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

namespace {
// The work-counter slot of one launch (tile_scheduler.cuh). Internal linkage, like the counters:
// one pair of slot counters per instantiation file, shared by its dense and paged kernels. A
// direct launch takes the next of the first kDirectWorkSlots (launches on concurrent streams only
// share one when that many are in flight at once); a launch being captured into a CUDA graph
// keeps its own slot for as long as the process runs, and running out of those is an error
// rather than a shared counter.
int take_work_slot(cudaStream_t stream) {
  static std::atomic<unsigned> next_direct{0};
  static std::atomic<unsigned> next_captured{0};
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t status = cudaStreamIsCapturing(stream, &capture);
  if (status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill cannot query the stream's capture status: ") + cudaGetErrorString(status));
  }
  if (capture == cudaStreamCaptureStatusNone) {
    return static_cast<int>(next_direct.fetch_add(1, std::memory_order_relaxed) % kDirectWorkSlots);
  }
  const unsigned captured = next_captured.fetch_add(1, std::memory_order_relaxed);
  if (captured >= static_cast<unsigned>(kCapturedWorkSlots)) {
    throw Error("fp8kv: more than " + std::to_string(kCapturedWorkSlots) +
                " prefill launches of one dtype and head dim have been captured into CUDA graphs in this process "
                "(each captured launch keeps its own work counter)");
  }
  return kDirectWorkSlots + static_cast<int>(captured);
}
}  // namespace

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
  PrefillParams p = params;
  p.blocks_per_head = grid_x;
  p.num_work = static_cast<int>(work);
  p.work_slot = take_work_slot(stream);
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(work, std::max(sms, 1))));
  prefill_kernel<Traits><<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(p);
  status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill kernel launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace fp8kv::cuda::sm90

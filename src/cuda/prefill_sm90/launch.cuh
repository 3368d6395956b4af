// Host side of one kernel instantiation: raise the shared-memory limit once and launch. Included
// only by the per-(dtype, head dim) instantiation files (src/cuda/prefill_*.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "cuda/prefill_sm90/kernel.cuh"
#include "fp8kv/error.h"

namespace fp8kv::cuda::sm90 {

template <class Traits>
void launch_prefill(const PrefillParams& params, int grid_x, cudaStream_t stream) {
  static const cudaError_t attribute_status = cudaFuncSetAttribute(
      prefill_kernel<Traits>, cudaFuncAttributeMaxDynamicSharedMemorySize, Traits::kSmemBytes);
  if (attribute_status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill kernel shared-memory setup failed: ") + cudaGetErrorString(attribute_status));
  }
  // One dimension: sections of heads, the head fastest inside a section (see tile_scheduler.cuh).
  const int64_t ctas = static_cast<int64_t>(grid_x) * params.num_q_heads;
  if (ctas > INT32_MAX) {
    throw InvalidArgument("q", "needs " + std::to_string(ctas) + " thread blocks (query blocks x heads), more than " +
                                   std::to_string(INT32_MAX) + " one launch covers");
  }
  const dim3 grid(static_cast<unsigned>(ctas));
  prefill_kernel<Traits><<<grid, Traits::kThreads, Traits::kSmemBytes, stream>>>(params);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) {
    throw Error(std::string("fp8kv: prefill kernel launch failed: ") + cudaGetErrorString(status));
  }
}

}  // namespace fp8kv::cuda::sm90

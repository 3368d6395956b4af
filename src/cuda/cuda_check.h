// CUDA error checking for host code: every runtime call and every launch goes through these, so a
// failure surfaces as fp8kv::Error naming the call, the file and the line instead of a later,
// unrelated crash.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "fp8kv/error.h"

namespace fp8kv::cuda_detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* what, const char* file, int line) {
  throw Error(std::string("fp8kv: CUDA error at ") + file + ":" + std::to_string(line) + ": " + what + ": " +
              cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
}

inline void check_cuda(cudaError_t status, const char* what, const char* file, int line) {
  if (status != cudaSuccess) throw_cuda_error(status, what, file, line);
}

}  // namespace fp8kv::cuda_detail

// FP8KV_CUDA_CHECK(cudaMemcpy(...)): throws fp8kv::Error with file:line unless the call succeeded.
#define FP8KV_CUDA_CHECK(call) ::fp8kv::cuda_detail::check_cuda((call), #call, __FILE__, __LINE__)

// After a kernel launch: a bad configuration is reported by cudaGetLastError, not by the launch.
#define FP8KV_CUDA_CHECK_LAUNCH() ::fp8kv::cuda_detail::check_cuda(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

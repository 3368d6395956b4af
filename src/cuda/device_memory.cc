#include "core/device_memory.h"

#include <cuda_runtime.h>

#include <string>

namespace fp8kv::detail {
namespace {

void check(cudaError_t status, const char* what, size_t bytes) {
  if (status == cudaSuccess) return;
  throw Error(std::string("fp8kv: ") + what + " of " + std::to_string(bytes) + " bytes failed: " +
              cudaGetErrorString(status));
}

}  // namespace

void* device_malloc(size_t bytes) {
  void* ptr = nullptr;
  check(cudaMalloc(&ptr, bytes), "cudaMalloc", bytes);
  // Fresh pages start at zero, as host buffers do, so an unwritten slot never holds NaN bits.
  const cudaError_t status = cudaMemset(ptr, 0, bytes);
  if (status != cudaSuccess) {
    cudaFree(ptr);
    check(status, "cudaMemset", bytes);
  }
  return ptr;
}

void device_free(void* ptr) noexcept { cudaFree(ptr); }

void copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host->device", bytes);
}

void copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device->host", bytes);
}

void copy_rows_on_device(void* dst, const void* src, size_t pitch, size_t row_bytes, size_t rows) {
  check(cudaMemcpy2D(dst, pitch, src, pitch, row_bytes, rows, cudaMemcpyDeviceToDevice), "cudaMemcpy2D device->device",
        row_bytes * rows);
}

}  // namespace fp8kv::detail

// Raw CUDA device memory for the library's own buffers (Buffer, KvCache).
//
// src/core compiles without the CUDA toolkit, so it reaches cudaMalloc & co. through these
// functions: src/cuda/device_memory.cc defines them in CUDA builds; otherwise the inline fallbacks
// below throw Unsupported, and every host-memory path keeps working. All calls act on the current
// device and are synchronous with respect to the host.
#pragma once

#include <cstddef>

#include "fp8kv/error.h"

namespace fp8kv::detail {

#if defined(FP8KV_WITH_CUDA)

void* device_malloc(size_t bytes);                 // zero-filled; throws Error naming the size on failure
void device_free(void* ptr) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
// `rows` rows of `row_bytes` bytes, `pitch` bytes apart in both src and dst (device to device).
void copy_rows_on_device(void* dst, const void* src, size_t pitch, size_t row_bytes, size_t rows);

#else

[[noreturn]] inline void no_cuda() {
  throw Unsupported("CUDA device memory needs a build with CUDA (configure with -DFP8KV_CUDA=ON)");
}
inline void* device_malloc(size_t) { no_cuda(); }
inline void device_free(void*) noexcept {}
inline void copy_to_device(void*, const void*, size_t) { no_cuda(); }
inline void copy_to_host(void*, const void*, size_t) { no_cuda(); }
inline void copy_rows_on_device(void*, const void*, size_t, size_t, size_t) { no_cuda(); }

#endif

}  // namespace fp8kv::detail

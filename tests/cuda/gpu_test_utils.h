// Helpers for the GPU test suites (tests/cuda): owning device buffers, poisoning, host<->device
// copies of the library's element types, and the skip that keeps the suite listable and green
// (with a visible reason) on CPU-only machines.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda/cuda_check.h"
#include "fp8kv/fp8.h"
#include "fp8kv/half.h"
#include "fp8kv/tensor.h"

namespace fp8kv::testing {

inline bool gpu_available() {
  static const bool available = [] {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  }();
  return available;
}

// First statement of every GPU test: skipped (and reported as skipped, with the reason) without a GPU.
#define FP8KV_REQUIRE_GPU()                                                                 \
  do {                                                                                      \
    if (!::fp8kv::testing::gpu_available()) {                                               \
      GTEST_SKIP() << "no CUDA device on this machine: GPU test skipped (label 'gpu')";     \
    }                                                                                       \
  } while (0)

// A byte pattern that is NaN in every float type the kernels write (fp32, bf16, fp16) and in both
// FP8 formats (0xFF is NaN in E4M3 and in E5M2), so an element a kernel forgot to write shows up.
constexpr uint8_t kPoisonByte = 0xFF;

// Owning device allocation of `count` elements of T. Move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : count_(count) {
    if (count_ > 0) FP8KV_CUDA_CHECK(cudaMalloc(&ptr_, count_ * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept { swap(other); }
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    swap(other);
    return *this;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }

  T* get() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }

  void upload(const std::vector<T>& host) {
    EXPECT_EQ(host.size(), count_);
    FP8KV_CUDA_CHECK(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    FP8KV_CUDA_CHECK(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
  void fill_bytes(uint8_t byte) { FP8KV_CUDA_CHECK(cudaMemset(ptr_, byte, bytes())); }
  void poison() { fill_bytes(kPoisonByte); }

  // A TensorRef over this buffer with the given dtype and dims (dtype size must match T's).
  TensorRef tensor(DType dtype, std::initializer_list<int64_t> dims) const {
    return TensorRef(ptr_, dtype, dims, Device::kCuda);
  }

 private:
  void swap(DeviceBuffer& other) noexcept {
    std::swap(ptr_, other.ptr_);
    std::swap(count_, other.count_);
  }
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

// float -> element type T, elementwise (T = Bf16, Fp16, float).
template <typename T>
std::vector<T> convert_from_float(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = from_float<T>(x[i]);
  return out;
}

// T -> float, elementwise (T = Bf16, Fp16, Fp8E4M3, Fp8E5M2, float).
template <typename T>
std::vector<float> convert_to_float(const std::vector<T>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_float(x[i]);
  return out;
}

// Number of NaN elements: a poisoned (unwritten) element reads as NaN after conversion.
inline size_t count_nan(const std::vector<float>& x) {
  size_t n = 0;
  for (float v : x) n += (v != v) ? 1 : 0;
  return n;
}

// Raw bytes of a host vector, for bit-exact comparisons.
template <typename T>
std::vector<uint8_t> bytes_of(const std::vector<T>& x) {
  std::vector<uint8_t> out(x.size() * sizeof(T));
  if (!x.empty()) std::memcpy(out.data(), x.data(), out.size());
  return out;
}

}  // namespace fp8kv::testing

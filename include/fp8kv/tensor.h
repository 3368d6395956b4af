// A non-owning view of a dense, row-major tensor on the host or a CUDA device.
//
// Every public function takes its tensors as TensorRef so that one validation routine can check
// dtype, device, rank and every dimension, and name the argument when one is wrong. Strides are
// not supported: a tensor must be contiguous (bindings reject non-contiguous input rather than
// copying it silently).
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "fp8kv/dtype.h"

namespace fp8kv {

enum class Device : uint8_t { kCpu, kCuda };

struct TensorRef {
  static constexpr int kMaxDims = 6;

  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device = Device::kCpu;
  int device_index = 0;
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};

  TensorRef() = default;
  TensorRef(void* data_, DType dtype_, std::initializer_list<int64_t> dims, Device device_ = Device::kCpu,
            int device_index_ = 0);

  bool defined() const { return data != nullptr; }
  int64_t size(int dim) const { return shape[static_cast<size_t>(dim < 0 ? dim + ndim : dim)]; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
  std::string shape_string() const;  // "[4, 32, 128]"
};

// Checks that `t` has the given rank and dims (-1 = any) and throws InvalidArgument naming
// `argument` otherwise; `dim_names` documents each dim in the message, e.g. "[batch, heads, dim]".
void check_shape(const TensorRef& t, const char* argument, std::initializer_list<int64_t> expected,
                 const char* dim_names);
// Throws unless t.dtype is one of `allowed`.
void check_dtype(const TensorRef& t, const char* argument, std::initializer_list<DType> allowed);
// Throws unless t is defined (non-null) and on `device`.
void check_device(const TensorRef& t, const char* argument, Device device);

}  // namespace fp8kv

#include "fp8kv/tensor.h"

#include <sstream>

#include "fp8kv/error.h"

namespace fp8kv {

TensorRef::TensorRef(void* data_, DType dtype_, std::initializer_list<int64_t> dims, Device device_,
                     int device_index_)
    : data(data_), dtype(dtype_), device(device_), device_index(device_index_), ndim(static_cast<int>(dims.size())) {
  FP8KV_REQUIRE(dims.size() <= static_cast<size_t>(kMaxDims), "tensor", "at most ", kMaxDims, " dims, got ",
                dims.size());
  size_t i = 0;
  for (int64_t d : dims) shape[i++] = d;
}

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[static_cast<size_t>(i)];
  return n;
}

std::string TensorRef::shape_string() const {
  std::ostringstream out;
  out << '[';
  for (int i = 0; i < ndim; ++i) out << (i ? ", " : "") << shape[static_cast<size_t>(i)];
  out << ']';
  return out.str();
}

void check_shape(const TensorRef& t, const char* argument, std::initializer_list<int64_t> expected,
                 const char* dim_names) {
  bool ok = t.ndim == static_cast<int>(expected.size());
  size_t i = 0;
  for (int64_t e : expected) {
    if (ok && e >= 0 && t.shape[i] != e) ok = false;
    ++i;
  }
  if (ok) return;
  std::ostringstream want;
  want << '[';
  i = 0;
  for (int64_t e : expected) {
    want << (i++ ? ", " : "");
    if (e >= 0) want << e; else want << '*';
  }
  want << ']';
  throw InvalidArgument(argument, "expected shape " + std::string(dim_names) + " = " + want.str() + ", got " +
                                      t.shape_string());
}

void check_dtype(const TensorRef& t, const char* argument, std::initializer_list<DType> allowed) {
  for (DType d : allowed) {
    if (t.dtype == d) return;
  }
  std::string names;
  for (DType d : allowed) names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
  throw InvalidArgument(argument, "dtype must be one of {" + names + "}, got " + dtype_name(t.dtype));
}

void check_device(const TensorRef& t, const char* argument, Device device) {
  FP8KV_REQUIRE(t.defined(), argument, "is required but was not given (null data)");
  FP8KV_REQUIRE(t.device == device, argument, "must be on the ", device == Device::kCpu ? "CPU" : "CUDA device",
                ", got a ", t.device == Device::kCpu ? "CPU" : "CUDA", " tensor");
}

}  // namespace fp8kv

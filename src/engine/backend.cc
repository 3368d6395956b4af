#include "fp8kv/engine/backend.h"

#include "fp8kv/error.h"

namespace fp8kv::engine {

namespace {
TensorRef make_ref(void* data, DType dtype, const std::vector<int64_t>& shape, Device device) {
  FP8KV_REQUIRE(!shape.empty() && shape.size() <= static_cast<size_t>(TensorRef::kMaxDims), "shape",
                "needs 1 to ", TensorRef::kMaxDims, " dims, got ", shape.size());
  TensorRef ref;
  ref.data = data;
  ref.dtype = dtype;
  ref.device = device;
  ref.ndim = static_cast<int>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) ref.shape[i] = shape[i];
  return ref;
}

int64_t product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}
}  // namespace

DeviceTensor::DeviceTensor(Device device, DType dtype, const std::vector<int64_t>& shape) {
  const int64_t count = product(shape);
  FP8KV_REQUIRE(count >= 0, "shape", "dims must be >= 0");
  // A zero-element tensor still gets a distinct allocation so that defined() tells it apart.
  buffer_ = Buffer(device, static_cast<size_t>(std::max<int64_t>(count, 1)) * dtype_size(dtype));
  ref_ = make_ref(buffer_.data(), dtype, shape, device);
}

TensorRef DeviceTensor::view(const std::vector<int64_t>& shape) const {
  FP8KV_REQUIRE(product(shape) == ref_.numel(), "shape", "view ", make_ref(nullptr, ref_.dtype, shape, ref_.device).shape_string(),
                " has another element count than ", ref_.shape_string());
  return make_ref(ref_.data, ref_.dtype, shape, ref_.device);
}

TensorRef DeviceTensor::rows(int64_t rows) const {
  FP8KV_REQUIRE(rows >= 0 && rows <= ref_.shape[0], "rows", rows, " is outside [0, ", ref_.shape[0], "]");
  TensorRef out = ref_;
  out.shape[0] = rows;
  return out;
}

#ifndef FP8KV_WITH_CUDA
std::unique_ptr<Backend> make_cuda_backend() {
  throw Unsupported("the CUDA backend: this build of fp8kv has no CUDA (configure with -DFP8KV_CUDA=ON)");
}
bool cuda_available() { return false; }
#endif

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda") return make_cuda_backend();
  if (device == "auto") return cuda_available() ? make_cuda_backend() : make_cpu_backend();
  throw InvalidArgument("device", "must be auto, cpu or cuda, got '" + device + "'");
}

}  // namespace fp8kv::engine

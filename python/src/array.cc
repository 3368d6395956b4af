#include "array.h"

#include <algorithm>
#include <cctype>
#include <sstream>
#include <string>

#include "fp8kv/error.h"

namespace fp8kv::python {

namespace {

namespace dl = nb::dlpack;

constexpr int kDLCpu = 1;
constexpr int kDLCuda = 2;

std::string describe_dtype(const dl::dtype& t) {
  std::ostringstream out;
  out << "DLPack dtype (code " << static_cast<int>(t.code) << ", " << static_cast<int>(t.bits) << " bits, "
      << t.lanes << " lanes)";
  return out.str();
}

// The DLPack dtype of an array as fp8kv's DType; uint8 only with an explicit FP8 reinterpretation.
DType dtype_of(const Array& array, const char* argument, std::optional<DType> fp8) {
  const dl::dtype t = array.dtype();
  FP8KV_REQUIRE(t.lanes == 1, argument, "vector dtypes are not supported, got ", describe_dtype(t));
  const auto code = static_cast<dl::dtype_code>(t.code);
  if (fp8) {
    const bool bytes = (code == dl::dtype_code::UInt || code == dl::dtype_code::Int) && t.bits == 8;
    const bool same_fp8 = (code == dl::dtype_code::Float8_E4M3FN && *fp8 == DType::kFp8E4M3) ||
                          (code == dl::dtype_code::Float8_E5M2 && *fp8 == DType::kFp8E5M2);
    FP8KV_REQUIRE(bytes || same_fp8, argument, "fp8_dtype='", dtype_name(*fp8),
                  "' reinterprets 8-bit integer data, but the array holds ", describe_dtype(t));
    return *fp8;
  }
  switch (code) {
    case dl::dtype_code::Float:
      if (t.bits == 32) return DType::kFloat32;
      if (t.bits == 16) return DType::kFloat16;
      break;
    case dl::dtype_code::Bfloat:
      if (t.bits == 16) return DType::kBFloat16;
      break;
    case dl::dtype_code::Float8_E4M3FN: return DType::kFp8E4M3;
    case dl::dtype_code::Float8_E5M2: return DType::kFp8E5M2;
    case dl::dtype_code::Int:
      if (t.bits == 32) return DType::kInt32;
      if (t.bits == 64) return DType::kInt64;
      break;
    case dl::dtype_code::UInt:
      FP8KV_REQUIRE(t.bits != 8, argument,
                    "uint8 data is only accepted as FP8 codes: pass fp8_dtype='fp8_e4m3' or 'fp8_e5m2'");
      break;
    default: break;
  }
  throw InvalidArgument(argument, "unsupported " + describe_dtype(t) +
                                      "; expected float32, bfloat16, float16, float8_e4m3fn, float8_e5m2, "
                                      "int32 or int64");
}

// Row-major contiguity; dims of extent 1 may carry any stride (PyTorch gives them arbitrary ones).
bool is_row_major(const Array& array) {
  int64_t expected = 1;
  for (size_t i = array.ndim(); i-- > 0;) {
    const int64_t extent = static_cast<int64_t>(array.shape(i));
    if (extent != 1 && array.stride(i) != expected) return false;
    expected *= extent;
  }
  return true;
}

std::string strides_string(const Array& array) {
  std::ostringstream out;
  out << '(';
  for (size_t i = 0; i < array.ndim(); ++i) out << (i ? ", " : "") << array.stride(i);
  out << ')';
  return out.str();
}

}  // namespace

TensorRef to_tensor(const Array& array, const char* argument, std::optional<DType> fp8) {
  FP8KV_REQUIRE(array.is_valid(), argument, "is required but was not given");
  TensorRef t;
  t.dtype = dtype_of(array, argument, fp8);
  const int device_type = array.device_type();
  FP8KV_REQUIRE(device_type == kDLCpu || device_type == kDLCuda, argument,
                "must live in CPU or CUDA device memory, got DLPack device type ", device_type);
  t.device = device_type == kDLCuda ? Device::kCuda : Device::kCpu;
  t.device_index = array.device_id();
  FP8KV_REQUIRE(array.ndim() <= static_cast<size_t>(TensorRef::kMaxDims), argument, "at most ",
                TensorRef::kMaxDims, " dims are supported, got ", array.ndim());
  FP8KV_REQUIRE(is_row_major(array), argument, "must be contiguous (dense, row-major); got strides ",
                strides_string(array), " in elements. fp8kv does not copy silently: pass x.contiguous()");
  t.ndim = static_cast<int>(array.ndim());
  for (size_t i = 0; i < array.ndim(); ++i) t.shape[i] = static_cast<int64_t>(array.shape(i));
  t.data = array.data();
  // A zero-sized tensor may carry a null pointer; TensorRef reads null as "not given".
  FP8KV_REQUIRE(t.data != nullptr || t.numel() == 0, argument, "has a null data pointer");
  return t;
}

TensorRef to_optional_tensor(const std::optional<Array>& array, const char* argument, std::optional<DType> fp8) {
  if (!array) return TensorRef{};
  return to_tensor(*array, argument, fp8);
}

std::optional<DType> parse_fp8_dtype(const std::optional<std::string>& name) {
  if (!name) return std::nullopt;
  const DType t = parse_kv_cache_dtype(*name, DType::kBFloat16, "fp8_dtype");
  FP8KV_REQUIRE(is_fp8(t), "fp8_dtype", "must name an FP8 format (fp8, fp8_e4m3, fp8_e5m2), got '", *name, "'");
  return t;
}

DType parse_dtype(const std::string& name, const char* argument) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (n == "float32" || n == "float") return DType::kFloat32;
  if (n == "bfloat16" || n == "bf16") return DType::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "half") return DType::kFloat16;
  if (n == "fp8_e4m3" || n == "float8_e4m3fn") return DType::kFp8E4M3;
  if (n == "fp8_e5m2" || n == "float8_e5m2") return DType::kFp8E5M2;
  if (n == "int32") return DType::kInt32;
  if (n == "int64") return DType::kInt64;
  throw InvalidArgument(argument, "unknown dtype '" + name +
                                      "'; expected float32, bfloat16, float16, fp8_e4m3, fp8_e5m2, int32, int64");
}

}  // namespace fp8kv::python

#include "fp8kv/dtype.h"

#include <algorithm>
#include <cctype>

#include "fp8kv/error.h"

namespace fp8kv {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
    case DType::kFp8E4M3: return "fp8_e4m3";
    case DType::kFp8E5M2: return "fp8_e5m2";
    case DType::kInt32: return "int32";
    case DType::kInt64: return "int64";
  }
  return "unknown";
}

const char* kv_cache_dtype_name(DType t) {
  switch (t) {
    case DType::kBFloat16: return "bf16";
    case DType::kFloat16: return "fp16";
    case DType::kFp8E4M3: return "fp8_e4m3";
    case DType::kFp8E5M2: return "fp8_e5m2";
    default: return dtype_name(t);
  }
}

DType parse_kv_cache_dtype(const std::string& name, DType model_dtype, const std::string& argument_name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (n == "auto") {
    FP8KV_REQUIRE(model_dtype == DType::kBFloat16 || model_dtype == DType::kFloat16, argument_name,
                  "'auto' stores the cache in the model dtype, which must be bf16 or fp16, got ",
                  dtype_name(model_dtype));
    return model_dtype;
  }
  if (n == "fp8" || n == "fp8_e4m3") return DType::kFp8E4M3;
  if (n == "fp8_e5m2") return DType::kFp8E5M2;
  if (n == "bf16" || n == "bfloat16") return DType::kBFloat16;
  if (n == "fp16" || n == "float16" || n == "half") return DType::kFloat16;
  throw InvalidArgument(argument_name, "unknown KV-cache dtype '" + name +
                                           "'; expected one of auto, fp8, fp8_e4m3, fp8_e5m2, bf16, fp16");
}

}  // namespace fp8kv

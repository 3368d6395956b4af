// Element types and the KV-cache storage dtypes, with the names users type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace fp8kv {

// Element type of a tensor crossing the API. FP8 formats are separate values, never "uint8".
enum class DType : uint8_t { kFloat32, kBFloat16, kFloat16, kFp8E4M3, kFp8E5M2, kInt32, kInt64 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
    case DType::kFloat16: return 2;
    case DType::kFp8E4M3: return 1;
    case DType::kFp8E5M2: return 1;
    case DType::kInt32: return 4;
    case DType::kInt64: return 8;
  }
  return 0;
}

constexpr bool is_fp8(DType t) { return t == DType::kFp8E4M3 || t == DType::kFp8E5M2; }

// Largest finite value of an FP8 dtype (448 or 57344); 0 for other types.
constexpr float fp8_max(DType t) {
  return t == DType::kFp8E4M3 ? 448.0f : t == DType::kFp8E5M2 ? 57344.0f : 0.0f;
}

// "float32", "bfloat16", "float16", "fp8_e4m3", "fp8_e5m2", "int32", "int64".
const char* dtype_name(DType t);

// How the KV cache is stored. The user-facing spelling follows vLLM's --kv-cache-dtype:
//   "auto"     -> the model's dtype (bf16 or fp16), no quantization
//   "fp8"      -> fp8_e4m3
//   "fp8_e4m3" -> FP8 E4M3 (precision: 3 mantissa bits, range +-448, needs a scale)
//   "fp8_e5m2" -> FP8 E5M2 (range +-57344, 2 mantissa bits)
// Also accepted for explicit 16-bit storage: "bf16"/"bfloat16", "fp16"/"float16"/"half".
// Throws InvalidArgument(argument_name, ...) on any other name, or if "auto" is given with a model
// dtype that is not bf16/fp16.
DType parse_kv_cache_dtype(const std::string& name, DType model_dtype,
                           const std::string& argument_name = "kv_cache_dtype");

// The canonical user-facing name of a storage dtype: "bf16", "fp16", "fp8_e4m3", "fp8_e5m2".
const char* kv_cache_dtype_name(DType t);

// True for the four dtypes the paged cache can store.
constexpr bool is_kv_storage_dtype(DType t) {
  return t == DType::kBFloat16 || t == DType::kFloat16 || is_fp8(t);
}

}  // namespace fp8kv

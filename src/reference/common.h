// Helpers private to the CPU reference: element access by runtime dtype, rounding a float64
// result once to the output dtype, and a plain thread pool over independent work items.
#pragma once

#include <cstdint>
#include <functional>
#include <limits>

#include "fp8kv/dtype.h"
#include "fp8kv/fp8.h"
#include "fp8kv/tensor.h"

namespace fp8kv::reference::detail {

// Element `index` of a buffer of `dtype` (float, bf16, fp16 or FP8), exactly, as float.
inline float load(const void* data, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::kFloat32: return static_cast<const float*>(data)[index];
    case DType::kBFloat16: return static_cast<const Bf16*>(data)[index].to_float();
    case DType::kFloat16: return static_cast<const Fp16*>(data)[index].to_float();
    case DType::kFp8E4M3: return static_cast<const Fp8E4M3*>(data)[index].to_float();
    case DType::kFp8E5M2: return static_cast<const Fp8E5M2*>(data)[index].to_float();
    default: return 0.0f;  // integer dtypes never reach here: validate() rejects them
  }
}

// Stores a float value (already rounded to float) with the conversion of the destination type:
// RNE for bf16/fp16, RNE with saturation for FP8 (fp8.h).
inline void store(void* data, DType dtype, int64_t index, float value) {
  switch (dtype) {
    case DType::kFloat32: static_cast<float*>(data)[index] = value; break;
    case DType::kBFloat16: static_cast<Bf16*>(data)[index] = Bf16::from_float(value); break;
    case DType::kFloat16: static_cast<Fp16*>(data)[index] = Fp16::from_float(value); break;
    case DType::kFp8E4M3: static_cast<Fp8E4M3*>(data)[index] = Fp8E4M3::from_float(value); break;
    case DType::kFp8E5M2: static_cast<Fp8E5M2*>(data)[index] = Fp8E5M2::from_float(value); break;
    default: break;
  }
}

// x / scale as the FP8 quantizers encode it (scales.h): IEEE division, a NaN quotient made +NaN
// (the GPU's canonical NaN; x86 would give inf / inf a negative sign).
inline float quantize_quotient(float x, float scale) {
  const float q = x / scale;
  return q != q ? std::numeric_limits<float>::quiet_NaN() : q;
}

// double -> float rounding to odd (truncate, then set the last bit if anything was cut off).
// Rounding that result to nearest-even in a format with at least two fewer significand bits
// (bf16: 8, fp16: 11, float: 24) equals rounding the double directly, so results are rounded
// once, never twice.
float round_to_odd(double value);

// Rounds a float64 result once to the output dtype (float32, bf16 or fp16) and stores it.
void store_rounded(void* data, DType dtype, int64_t index, double value);

// The reference reads and writes its tensors directly: they must be host tensors. (validate()
// accepts CUDA tensors too; the CUDA entry points take those.)
void require_cpu(Device device, const char* argument);

// Runs fn(i) for every i in [0, count) on up to std::thread::hardware_concurrency() threads
// (FP8KV_REFERENCE_THREADS overrides). Items are handed out one at a time, so uneven items
// (sequences of different lengths) balance. An exception in any item is rethrown here.
void parallel_for(int64_t count, const std::function<void(int64_t)>& fn);

}  // namespace fp8kv::reference::detail

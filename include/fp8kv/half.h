// 16-bit storage types for host code: bf16 and IEEE fp16.
//
// These are plain 16-bit payloads with the same layout as CUDA's __nv_bfloat16 / __half, so a
// buffer of them can be handed to a kernel as is. Conversions are round-to-nearest-even, exactly
// as the hardware converts (float -> bf16 keeps NaN a quiet NaN; float -> fp16 overflows to inf,
// IEEE semantics, no saturation).
#pragma once

#include <cstdint>
#include <cstring>

#include "fp8kv/macros.h"

namespace fp8kv {

FP8KV_HOST_DEVICE uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

FP8KV_HOST_DEVICE float bits_float(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

struct Bf16 {
  uint16_t bits;

  static FP8KV_HOST_DEVICE Bf16 from_float(float x) {
    const uint32_t b = float_bits(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((b >> 16) | 0x0040u)};
    const uint32_t rounding_bias = 0x7fffu + ((b >> 16) & 1u);
    return Bf16{static_cast<uint16_t>((b + rounding_bias) >> 16)};
  }
  FP8KV_HOST_DEVICE float to_float() const { return bits_float(static_cast<uint32_t>(bits) << 16); }
};

struct Fp16 {
  uint16_t bits;

  static FP8KV_HOST_DEVICE Fp16 from_float(float x) {
    constexpr int kMantissaShift = 23 - 10;  // fp32 keeps 23 fraction bits, fp16 keeps 10
    const uint32_t b = float_bits(x);
    const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
    const uint32_t abs = b & 0x7fffffffu;
    if (abs > 0x7f800000u) return Fp16{static_cast<uint16_t>(sign | 0x7e00u)};
    if (abs >= 0x477ff000u) return Fp16{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520 rounds to inf
    const int exp = static_cast<int>(abs >> 23) - 127;
    if (exp >= -14) {  // fp16 normal range
      uint32_t code = (static_cast<uint32_t>(exp + 15) << 10) | ((abs >> kMantissaShift) & 0x3ffu);
      const uint32_t rest = abs & ((1u << kMantissaShift) - 1u);
      const uint32_t half = 1u << (kMantissaShift - 1);
      if (rest > half || (rest == half && (code & 1u))) ++code;
      return Fp16{static_cast<uint16_t>(sign | code)};
    }
    // Subnormal: count units of 2^-24 with round-to-nearest-even.
    const int shift = kMantissaShift + (-14 - exp);
    if (exp < -127 + 1 || shift > 24) return Fp16{sign};
    const uint32_t significand = (abs & 0x7fffffu) | 0x800000u;
    uint32_t code = significand >> shift;
    const uint32_t rest = significand & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (code & 1u))) ++code;
    return Fp16{static_cast<uint16_t>(sign | code)};
  }

  FP8KV_HOST_DEVICE float to_float() const {
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    const uint32_t exp = (bits >> 10) & 0x1fu;
    const uint32_t mantissa = bits & 0x3ffu;
    if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
    if (exp == 0) {
      const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
      return bits_float(sign | float_bits(magnitude));
    }
    return bits_float(sign | ((exp + 112u) << 23) | (mantissa << 13));
  }
};

}  // namespace fp8kv

// The two OCP 8-bit floating-point formats, as distinct types.
//
//   E4M3 (OCP "E4M3FN"): 1 sign, 4 exponent (bias 7), 3 mantissa bits. Max +-448, min subnormal
//        2^-9. No infinities; S.1111.111 is NaN (one NaN per sign).
//   E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits. Max +-57344, min subnormal 2^-16.
//        IEEE-style: S.11111.00 is +-inf, S.11111.{01,10,11} are NaN.
//
// float -> FP8 is round-to-nearest-even with saturation to +-max, the semantics of CUDA's
// __nv_cvt_float_to_fp8(x, __NV_SATFINITE, ...) and of PTX cvt.rn.satfinite: a finite value past
// max and +-inf both become +-max; NaN stays NaN. FP8 -> float is exact.
//
// These scalar routines are the definition: they run on the host (the CPU reference) and compile
// for the device; the kernels use the hardware conversions in src/cuda/fp8_convert.cuh, which
// the GPU tests check against these bit for bit over all 2^32 float inputs.
#pragma once

#include <cstdint>

#include "fp8kv/half.h"
#include "fp8kv/macros.h"

namespace fp8kv {

// Compile-time description of one format; the encoder and decoder are written once over it.
template <int kExponentBits_, int kMantissaBits_, bool kHasInfinity_>
struct Fp8Format {
  static constexpr int kExponentBits = kExponentBits_;
  static constexpr int kMantissaBits = kMantissaBits_;
  static constexpr bool kHasInfinity = kHasInfinity_;
  static constexpr int kBias = (1 << (kExponentBits - 1)) - 1;
  static constexpr int kMinNormalExponent = 1 - kBias;
  // Largest finite code (without sign): E4M3 0x7E (S.1111.110), E5M2 0x7B (S.11110.11).
  static constexpr uint8_t kMaxCode = kHasInfinity ? static_cast<uint8_t>(((1 << kExponentBits) - 2) << kMantissaBits |
                                                                         ((1 << kMantissaBits) - 1))
                                                   : 0x7E;
  static constexpr uint8_t kNanCode = 0x7F;  // a NaN in both formats (sign bit added separately)
};

using E4M3Format = Fp8Format<4, 3, false>;
using E5M2Format = Fp8Format<5, 2, true>;

constexpr float kE4M3Max = 448.0f;
constexpr float kE5M2Max = 57344.0f;

namespace detail {

// Rounds `value >> shift` to nearest, ties to even, for 0 < shift < 32.
FP8KV_HOST_DEVICE uint32_t shift_right_round_even(uint32_t value, int shift) {
  const uint32_t kept = value >> shift;
  const uint32_t rest = value & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
}

template <typename Format>
FP8KV_HOST_DEVICE uint8_t encode_fp8(float x) {
  constexpr int kM = Format::kMantissaBits;
  const uint32_t b = float_bits(x);
  const uint8_t sign = static_cast<uint8_t>((b >> 24) & 0x80u);
  const uint32_t abs = b & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint8_t>(sign | Format::kNanCode);

  const int exp = static_cast<int>(abs >> 23) - 127;
  if (exp >= Format::kMinNormalExponent) {
    // Normal in FP8: keep kM fraction bits; a carry out of the mantissa bumps the exponent, which
    // is the right answer, and anything that lands past the largest finite code saturates.
    const uint32_t exp_and_fraction = (static_cast<uint32_t>(exp + Format::kBias) << 23) | (abs & 0x7fffffu);
    const uint32_t code = shift_right_round_even(exp_and_fraction, 23 - kM);
    return static_cast<uint8_t>(sign | (code > Format::kMaxCode ? Format::kMaxCode : code));
  }
  // Subnormal in FP8: count units of the smallest subnormal, 2^(kMinNormalExponent - kM). A
  // result of 2^kM is the smallest normal, whose code is also 2^kM.
  const int shift = 23 - kM + (Format::kMinNormalExponent - exp);
  if (shift > 24) return sign;  // below half the smallest subnormal (fp32 subnormals included)
  const uint32_t significand = (abs & 0x7fffffu) | 0x800000u;
  return static_cast<uint8_t>(sign | shift_right_round_even(significand, shift));
}

template <typename Format>
FP8KV_HOST_DEVICE float decode_fp8(uint8_t code) {
  constexpr int kM = Format::kMantissaBits;
  constexpr uint32_t kExpMask = (1u << Format::kExponentBits) - 1u;
  const uint32_t sign = static_cast<uint32_t>(code & 0x80u) << 24;
  const uint32_t exp = (code >> kM) & kExpMask;
  const uint32_t mantissa = code & ((1u << kM) - 1u);
  if (Format::kHasInfinity && exp == kExpMask) {
    return bits_float(sign | 0x7f800000u | (mantissa << (23 - kM)));  // inf or NaN
  }
  if (!Format::kHasInfinity && (code & 0x7fu) == 0x7fu) return bits_float(sign | 0x7fc00000u);
  if (exp == 0) {
    // 2^(kMinNormalExponent - kM) is a power of two, so this product is exact.
    const float unit = bits_float(static_cast<uint32_t>(127 + Format::kMinNormalExponent - kM) << 23);
    return bits_float(sign | float_bits(static_cast<float>(mantissa) * unit));
  }
  return bits_float(sign | ((exp - Format::kBias + 127u) << 23) | (mantissa << (23 - kM)));
}

}  // namespace detail

// One FP8 E4M3 value. A distinct type so that E4M3 and E5M2 buffers never mix by accident.
struct Fp8E4M3 {
  using Format = E4M3Format;
  static constexpr float kMax = kE4M3Max;
  uint8_t bits;

  static FP8KV_HOST_DEVICE Fp8E4M3 from_float(float x) { return Fp8E4M3{detail::encode_fp8<Format>(x)}; }
  FP8KV_HOST_DEVICE float to_float() const { return detail::decode_fp8<Format>(bits); }
};

// One FP8 E5M2 value.
struct Fp8E5M2 {
  using Format = E5M2Format;
  static constexpr float kMax = kE5M2Max;
  uint8_t bits;

  static FP8KV_HOST_DEVICE Fp8E5M2 from_float(float x) { return Fp8E5M2{detail::encode_fp8<Format>(x)}; }
  FP8KV_HOST_DEVICE float to_float() const { return detail::decode_fp8<Format>(bits); }
};

static_assert(sizeof(Fp8E4M3) == 1 && sizeof(Fp8E5M2) == 1, "FP8 values are one byte");
static_assert(E4M3Format::kMaxCode == 0x7E && E5M2Format::kMaxCode == 0x7B, "largest finite codes");

// Conversions from every element type the library accepts, so templated code can write
// to_float(x) / from_float<T>(f) whatever T is.
FP8KV_HOST_DEVICE float to_float(float x) { return x; }
FP8KV_HOST_DEVICE float to_float(Bf16 x) { return x.to_float(); }
FP8KV_HOST_DEVICE float to_float(Fp16 x) { return x.to_float(); }
FP8KV_HOST_DEVICE float to_float(Fp8E4M3 x) { return x.to_float(); }
FP8KV_HOST_DEVICE float to_float(Fp8E5M2 x) { return x.to_float(); }

template <typename T>
FP8KV_HOST_DEVICE T from_float(float x) {
  return T::from_float(x);
}
template <>
FP8KV_HOST_DEVICE float from_float<float>(float x) {
  return x;
}

}  // namespace fp8kv

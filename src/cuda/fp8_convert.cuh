// Device-side conversions between float and the cache's storage types: THE one place where kernels
// turn FP8 / bf16 / fp16 bits into floats and back.
//
// FP8 encode is PTX `cvt.rn.satfinite.{e4m3x2,e5m2x2}.f32` (sm_89+): two floats to two codes in one
// instruction, round-to-nearest-even with saturation to +-max, which is exactly the definition in
// include/fp8kv/fp8.h except that the hardware drops a NaN's sign; one OR puts it back
// (tests/cuda/test_fp8_device.cu checks all 2^32 inputs). FP8
// decode is `cvt.rn.f16x2.{e4m3x2,e5m2x2}` (exact: every E4M3 and E5M2 value is an fp16 value)
// followed by an exact fp16 -> fp32 widening. Older architectures (sm_80) fall back to the scalar
// definition in fp8.h, bit-identical by construction and slower.
//
// Storage types are the host types of half.h / fp8.h (Bf16, Fp16, Fp8E4M3, Fp8E5M2): the same
// layout as CUDA's, and E4M3 and E5M2 stay distinct types in templates.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "fp8kv/fp8.h"
#include "fp8kv/half.h"

namespace fp8kv::cuda_detail {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
#define FP8KV_HW_FP8_CVT 1
#endif

// ---- FP8 <- float ------------------------------------------------------------------------------

// Two floats -> two codes; `lo` lands in the low byte (lower address).
template <typename Fp8>
__device__ __forceinline__ uint16_t float2_to_fp8x2(float lo, float hi) {
#if defined(FP8KV_HW_FP8_CVT)
  uint16_t packed;
  // PTX puts the first source operand in the upper half of the result.
  if constexpr (std::is_same_v<Fp8, Fp8E4M3>) {
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(packed) : "f"(hi), "f"(lo));
  } else {
    static_assert(std::is_same_v<Fp8, Fp8E5M2>, "FP8 storage is Fp8E4M3 or Fp8E5M2");
    asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(packed) : "f"(hi), "f"(lo));
  }
  // The hardware writes every NaN as +NaN (0x7F); fp8.h keeps the input's sign (0xFF for -NaN).
  packed |= static_cast<uint16_t>((lo != lo ? (__float_as_uint(lo) >> 24) & 0x80u : 0u) |
                                  (hi != hi ? (__float_as_uint(hi) >> 16) & 0x8000u : 0u));
  return packed;
#else
  return static_cast<uint16_t>(Fp8::from_float(lo).bits | (Fp8::from_float(hi).bits << 8));
#endif
}

template <typename Fp8>
__device__ __forceinline__ uint8_t float_to_fp8(float x) {
  return static_cast<uint8_t>(float2_to_fp8x2<Fp8>(x, 0.0f) & 0xffu);
}

// Four floats -> four codes in one 32-bit word, element 0 in the low byte.
template <typename Fp8>
__device__ __forceinline__ uint32_t float4_to_fp8x4(float x0, float x1, float x2, float x3) {
  return static_cast<uint32_t>(float2_to_fp8x2<Fp8>(x0, x1)) |
         (static_cast<uint32_t>(float2_to_fp8x2<Fp8>(x2, x3)) << 16);
}

// ---- FP8 -> float ------------------------------------------------------------------------------

// Two codes (low byte first) -> two fp16 values in one register, exactly.
template <typename Fp8>
__device__ __forceinline__ uint32_t fp8x2_to_half2_bits(uint16_t codes) {
#if defined(FP8KV_HW_FP8_CVT)
  uint32_t h2;
  if constexpr (std::is_same_v<Fp8, Fp8E4M3>) {
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(codes));
  } else {
    static_assert(std::is_same_v<Fp8, Fp8E5M2>, "FP8 storage is Fp8E4M3 or Fp8E5M2");
    asm("cvt.rn.f16x2.e5m2x2 %0, %1;" : "=r"(h2) : "h"(codes));
  }
  return h2;
#else
  const uint32_t lo = Fp16::from_float(Fp8{static_cast<uint8_t>(codes & 0xffu)}.to_float()).bits;
  const uint32_t hi = Fp16::from_float(Fp8{static_cast<uint8_t>(codes >> 8)}.to_float()).bits;
  return lo | (hi << 16);
#endif
}

// Four codes in one 32-bit word (low byte first) -> two fp16x2 registers, codes 0-1 in `lo` and 2-3
// in `hi`, exactly. The word is split into 16-bit halves inside the asm, so ptxas reads the high
// half in place (an operand selector of the convert) instead of shifting it down first: one
// instruction less per word, 32 of the ~490 in an FP8 decode iteration (head dim 128).
template <typename Fp8>
__device__ __forceinline__ void fp8x4_to_half2x2_bits(uint32_t codes, uint32_t& lo, uint32_t& hi) {
#if defined(FP8KV_HW_FP8_CVT)
  if constexpr (std::is_same_v<Fp8, Fp8E4M3>) {
    asm("{\n\t.reg .b16 c0, c1;\n\tmov.b32 {c0, c1}, %2;\n\t"
        "cvt.rn.f16x2.e4m3x2 %0, c0;\n\tcvt.rn.f16x2.e4m3x2 %1, c1;\n\t}"
        : "=r"(lo), "=r"(hi)
        : "r"(codes));
  } else {
    static_assert(std::is_same_v<Fp8, Fp8E5M2>, "FP8 storage is Fp8E4M3 or Fp8E5M2");
    asm("{\n\t.reg .b16 c0, c1;\n\tmov.b32 {c0, c1}, %2;\n\t"
        "cvt.rn.f16x2.e5m2x2 %0, c0;\n\tcvt.rn.f16x2.e5m2x2 %1, c1;\n\t}"
        : "=r"(lo), "=r"(hi)
        : "r"(codes));
  }
#else
  lo = fp8x2_to_half2_bits<Fp8>(static_cast<uint16_t>(codes & 0xffffu));
  hi = fp8x2_to_half2_bits<Fp8>(static_cast<uint16_t>(codes >> 16));
#endif
}

template <typename Fp8>
__device__ __forceinline__ float2 fp8x2_to_float2(uint16_t codes) {
  const uint32_t h2 = fp8x2_to_half2_bits<Fp8>(codes);
  return __half22float2(*reinterpret_cast<const __half2*>(&h2));
}

template <typename Fp8>
__device__ __forceinline__ float fp8_to_float(uint8_t code) {
  return fp8x2_to_float2<Fp8>(code).x;
}

// ---- 16-bit <-> float --------------------------------------------------------------------------

// bf16 -> fp32 is a 16-bit shift: the low/high halves of a packed pair.
__device__ __forceinline__ float2 bf16x2_to_float2(uint32_t bits) {
  return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
}

__device__ __forceinline__ float2 half2_to_float2(uint32_t bits) {
  return __half22float2(*reinterpret_cast<const __half2*>(&bits));
}

// Round-to-nearest-even packs, low element first (the same rounding as half.h's host types).
__device__ __forceinline__ uint32_t float2_to_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t float2_to_half2(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// ---- one interface over the four storage types -------------------------------------------------

// StorageTraits<T>::kPerVector elements of T fill one 16-byte vector; unpack() turns such a vector
// into floats and pack() turns floats back into one.
template <typename T>
struct StorageTraits;

// bf16 and fp16 differ only in their two conversions.
template <float2 (*kToFloat2)(uint32_t), uint32_t (*kFromFloat2)(float, float)>
struct SixteenBitStorageTraits {
  static constexpr bool kIsFp8 = false;
  static constexpr int kPerVector = 8;
  __device__ __forceinline__ static void unpack(const uint4& v, float (&out)[kPerVector]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = kToFloat2(w[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ __forceinline__ static uint32_t pack2(float lo, float hi) { return kFromFloat2(lo, hi); }
};

template <>
struct StorageTraits<Bf16> : SixteenBitStorageTraits<bf16x2_to_float2, float2_to_bf16x2> {};
template <>
struct StorageTraits<Fp16> : SixteenBitStorageTraits<half2_to_float2, float2_to_half2> {};

template <typename Fp8>
struct Fp8StorageTraits {
  static constexpr bool kIsFp8 = true;
  static constexpr int kPerVector = 16;
  __device__ __forceinline__ static void unpack(const uint4& v, float (&out)[kPerVector]) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 a = fp8x2_to_float2<Fp8>(static_cast<uint16_t>(w[i] & 0xffffu));
      const float2 b = fp8x2_to_float2<Fp8>(static_cast<uint16_t>(w[i] >> 16));
      out[4 * i] = a.x;
      out[4 * i + 1] = a.y;
      out[4 * i + 2] = b.x;
      out[4 * i + 3] = b.y;
    }
  }
};

template <>
struct StorageTraits<Fp8E4M3> : Fp8StorageTraits<Fp8E4M3> {};
template <>
struct StorageTraits<Fp8E5M2> : Fp8StorageTraits<Fp8E5M2> {};

// x / scale as the FP8 quantizers encode it (scales.h): IEEE division, a NaN quotient made +NaN.
__device__ __forceinline__ float quantize_quotient(float x, float scale) {
  const float q = __fdiv_rn(x, scale);
  return q != q ? __uint_as_float(0x7fc00000u) : q;
}

// Converts `n` (even) floats to storage type T and writes them to `dst` as 32-bit words (n/2 words
// for 16-bit types, n/4 for FP8; `dst` aligned accordingly). `scale` divides each value first
// (FP8 only, scales.h's convention: stored = satfinite_rne(x / scale)).
template <typename T, int kN>
__device__ __forceinline__ void pack_floats(const float (&x)[kN], float scale, uint32_t* dst) {
  if constexpr (StorageTraits<T>::kIsFp8) {
    static_assert(kN % 4 == 0, "FP8 packs whole 32-bit words of 4 codes");
#pragma unroll
    for (int i = 0; i < kN / 4; ++i) {
      dst[i] = float4_to_fp8x4<T>(quantize_quotient(x[4 * i], scale), quantize_quotient(x[4 * i + 1], scale),
                                  quantize_quotient(x[4 * i + 2], scale), quantize_quotient(x[4 * i + 3], scale));
    }
  } else {
    static_assert(kN % 2 == 0, "16-bit types pack whole 32-bit words of 2 values");
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) dst[i] = StorageTraits<T>::pack2(x[2 * i], x[2 * i + 1]);
  }
}

}  // namespace fp8kv::cuda_detail

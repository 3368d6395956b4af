// FP8 E4M3 / E5M2 and bf16 / fp16 conversions against values and encoders written independently
// here: the OCP formulas for every code, an exhaustive nearest-code search for random floats, and
// CUDA's host-callable conversions when cuda_fp8.h is available.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/test_utils.h"
#include "fp8kv/fp8.h"

#if __has_include(<cuda_fp8.h>)
#include <cuda_fp8.h>
#define FP8KV_TEST_HAVE_CUDA_FP8 1
#endif

namespace fp8kv {
namespace {

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}
uint32_t to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
}

// The OCP 8-bit floating point specification's value of `code`, from its formula.
double ocp_value(uint8_t code, int exponent_bits, int mantissa_bits, bool ieee_specials) {
  const int sign = code >> 7;
  const int e = (code >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int m = code & ((1 << mantissa_bits) - 1);
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const int e_max = (1 << exponent_bits) - 1;
  double magnitude;
  if (ieee_specials && e == e_max) {
    magnitude = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (!ieee_specials && e == e_max && m == (1 << mantissa_bits) - 1) {
    magnitude = std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    magnitude = std::ldexp(static_cast<double>(m), 1 - bias - mantissa_bits);
  } else {
    magnitude = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -mantissa_bits), e - bias);
  }
  return sign ? -magnitude : magnitude;
}

double e4m3_value(uint8_t c) { return ocp_value(c, 4, 3, false); }
double e5m2_value(uint8_t c) { return ocp_value(c, 5, 2, true); }

template <typename T>
struct Traits;
template <>
struct Traits<Fp8E4M3> {
  static double value(uint8_t c) { return e4m3_value(c); }
  static constexpr double kMax = 448.0;
  static constexpr uint8_t kMaxCode = 0x7E;
};
template <>
struct Traits<Fp8E5M2> {
  static double value(uint8_t c) { return e5m2_value(c); }
  static constexpr double kMax = 57344.0;
  static constexpr uint8_t kMaxCode = 0x7B;
};

// Slow reference encoder: the nearest finite code by exhaustive search, ties to the even code,
// saturation past +-max, NaN to NaN. Written from the spec, not from fp8.h.
template <typename T>
uint8_t slow_encode(float x) {
  if (std::isnan(x)) return 0x7F;  // compared as "is NaN" below
  const double ax = std::fabs(static_cast<double>(x));
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (ax >= Traits<T>::kMax) return sign | Traits<T>::kMaxCode;
  uint8_t best = 0;
  double best_distance = std::numeric_limits<double>::infinity();
  for (int c = 0; c <= Traits<T>::kMaxCode; ++c) {
    const double distance = std::fabs(ax - Traits<T>::value(static_cast<uint8_t>(c)));
    if (distance < best_distance || (distance == best_distance && (c & 1) == 0)) {
      best = static_cast<uint8_t>(c);
      best_distance = distance;
    }
  }
  return sign | best;
}

template <typename T>
bool is_nan_code(uint8_t c) {
  return std::isnan(Traits<T>::value(c));
}

template <typename T>
class Fp8Format : public ::testing::Test {};
using Formats = ::testing::Types<Fp8E4M3, Fp8E5M2>;
TYPED_TEST_SUITE(Fp8Format, Formats);

TYPED_TEST(Fp8Format, EveryCodeDecodesToOcpValue) {
  for (int c = 0; c < 256; ++c) {
    const double expected = Traits<TypeParam>::value(static_cast<uint8_t>(c));
    const float got = TypeParam{static_cast<uint8_t>(c)}.to_float();
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << "code " << c;
    } else {
      EXPECT_EQ(static_cast<double>(got), expected) << "code " << c;
      EXPECT_EQ(std::signbit(got), (c & 0x80) != 0) << "code " << c;  // -0 keeps its sign
    }
  }
}

TYPED_TEST(Fp8Format, EncodeDecodeRoundTripsEveryFiniteCode) {
  for (int c = 0; c < 256; ++c) {
    const float v = TypeParam{static_cast<uint8_t>(c)}.to_float();
    if (std::isnan(v)) {
      EXPECT_TRUE(is_nan_code<TypeParam>(TypeParam::from_float(v).bits)) << "code " << c;
    } else if (std::isinf(v)) {
      // Saturating conversion: infinity becomes the largest finite value of its sign.
      EXPECT_EQ(TypeParam::from_float(v).bits, (c & 0x80) | Traits<TypeParam>::kMaxCode);
    } else {
      EXPECT_EQ(TypeParam::from_float(v).bits, c) << "value " << v;
    }
  }
}

TYPED_TEST(Fp8Format, MidpointsRoundToEvenAndNeighboursToNearest) {
  for (int sign : {0x00, 0x80}) {
    for (int c = 0; c < Traits<TypeParam>::kMaxCode; ++c) {
      const uint8_t lo = static_cast<uint8_t>(sign | c), hi = static_cast<uint8_t>(sign | (c + 1));
      const double a = Traits<TypeParam>::value(lo), b = Traits<TypeParam>::value(hi);
      const float mid = static_cast<float>((a + b) / 2);  // exact: a few bits, well inside float
      ASSERT_EQ(static_cast<double>(mid), (a + b) / 2);
      const uint8_t even = (c & 1) == 0 ? lo : hi;
      EXPECT_EQ(TypeParam::from_float(mid).bits, even) << "midpoint " << mid;
      const float toward_b = std::nextafter(mid, static_cast<float>(b));  // +-1 ulp of float
      const float toward_a = std::nextafter(mid, static_cast<float>(a));
      EXPECT_EQ(TypeParam::from_float(toward_b).bits, hi) << "just past midpoint " << toward_b;
      EXPECT_EQ(TypeParam::from_float(toward_a).bits, lo) << "just before midpoint " << toward_a;
    }
  }
}

TYPED_TEST(Fp8Format, SpecialValues) {
  const float max = static_cast<float>(Traits<TypeParam>::kMax);
  const uint8_t max_code = Traits<TypeParam>::kMaxCode;
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(TypeParam::from_float(0.0f).bits, 0x00);
  EXPECT_EQ(TypeParam::from_float(-0.0f).bits, 0x80);
  EXPECT_EQ(TypeParam::from_float(max).bits, max_code);
  EXPECT_EQ(TypeParam::from_float(-max).bits, 0x80 | max_code);
  EXPECT_EQ(TypeParam::from_float(std::nextafter(max, inf)).bits, max_code);
  EXPECT_EQ(TypeParam::from_float(-std::nextafter(max, inf)).bits, 0x80 | max_code);
  EXPECT_EQ(TypeParam::from_float(max * 1.5f).bits, max_code);  // past the overflow midpoint too
  EXPECT_EQ(TypeParam::from_float(3.0e38f).bits, max_code);
  EXPECT_EQ(TypeParam::from_float(inf).bits, max_code);
  EXPECT_EQ(TypeParam::from_float(-inf).bits, 0x80 | max_code);
  EXPECT_TRUE(is_nan_code<TypeParam>(TypeParam::from_float(std::numeric_limits<float>::quiet_NaN()).bits));
  EXPECT_TRUE(is_nan_code<TypeParam>(TypeParam::from_float(-std::numeric_limits<float>::quiet_NaN()).bits));
  EXPECT_TRUE(std::isnan(TypeParam::from_float(std::numeric_limits<float>::quiet_NaN()).to_float()));
  // Subnormals: the smallest one, half of it (a tie, to the even code 0), and just above half.
  const float min_sub = static_cast<float>(Traits<TypeParam>::value(0x01));
  EXPECT_EQ(TypeParam::from_float(min_sub).bits, 0x01);
  EXPECT_EQ(TypeParam::from_float(-min_sub).bits, 0x81);
  EXPECT_EQ(TypeParam::from_float(min_sub / 2).bits, 0x00);
  EXPECT_EQ(TypeParam::from_float(-min_sub / 2).bits, 0x80);
  EXPECT_EQ(TypeParam::from_float(std::nextafter(min_sub / 2, 1.0f)).bits, 0x01);
  EXPECT_EQ(TypeParam::from_float(1.5f * min_sub).bits, 0x02);  // tie between codes 1 and 2: even
  // Float subnormals are far below every FP8 value: signed zero.
  EXPECT_EQ(TypeParam::from_float(from_bits(0x00000001u)).bits, 0x00);
  EXPECT_EQ(TypeParam::from_float(from_bits(0x80400000u)).bits, 0x80);
}

// Random floats: half uniformly random bit patterns (every class of float, NaN and inf included),
// half spread over the format's range with random exponents, where rounding matters.
std::vector<float> random_floats(size_t count, uint64_t seed, double max) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> bits;
  std::uniform_real_distribution<double> mantissa(1.0, 2.0);
  const int top = static_cast<int>(std::log2(max)) + 2;
  std::uniform_int_distribution<int> exponent(-top - 4, top);
  std::vector<float> out(count);
  for (size_t i = 0; i < count; ++i) {
    if (i % 2 == 0) {
      out[i] = from_bits(bits(rng));
    } else {
      const double v = std::ldexp(mantissa(rng), exponent(rng));
      out[i] = static_cast<float>((bits(rng) & 1) ? -v : v);
    }
  }
  return out;
}

TYPED_TEST(Fp8Format, MillionRandomFloatsMatchSlowEncoder) {
  const uint64_t seed = testing::test_seed();
  const auto values = random_floats(1u << 20, seed, Traits<TypeParam>::kMax);
  int64_t mismatches = 0;
  for (float x : values) {
    const uint8_t got = TypeParam::from_float(x).bits;
    const uint8_t want = slow_encode<TypeParam>(x);
    const bool ok = std::isnan(x) ? is_nan_code<TypeParam>(got) : got == want;
    if (!ok && mismatches++ < 10) {
      ADD_FAILURE() << "x = " << x << " (bits 0x" << std::hex << to_bits(x) << ") got 0x" << int(got) << " want 0x"
                    << int(want) << std::dec << " seed " << seed;
    }
  }
  EXPECT_EQ(mismatches, 0) << "seed " << seed;
}

#ifdef FP8KV_TEST_HAVE_CUDA_FP8
template <typename T>
constexpr __nv_fp8_interpretation_t cuda_kind() {
  return std::is_same<T, Fp8E4M3>::value ? __NV_E4M3 : __NV_E5M2;
}

TYPED_TEST(Fp8Format, MatchesCudaHostConversion) {
  const uint64_t seed = testing::test_seed();
  const auto values = random_floats(1u << 20, seed, Traits<TypeParam>::kMax);
  int64_t mismatches = 0;
  for (float x : values) {
    const uint8_t got = TypeParam::from_float(x).bits;
    const uint8_t want = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, cuda_kind<TypeParam>());
    const bool ok = std::isnan(x) ? is_nan_code<TypeParam>(got) && is_nan_code<TypeParam>(want) : got == want;
    if (!ok && mismatches++ < 10) {
      ADD_FAILURE() << "x = " << x << " got 0x" << std::hex << int(got) << " cuda 0x" << int(want) << std::dec;
    }
  }
  EXPECT_EQ(mismatches, 0) << "seed " << seed;
  for (int c = 0; c < 256; ++c) {  // decode: CUDA widens to half, exactly
    const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(c), cuda_kind<TypeParam>());
    const float cuda_value = Fp16{h.x}.to_float();
    const float ours = TypeParam{static_cast<uint8_t>(c)}.to_float();
    if (std::isnan(ours)) {
      EXPECT_TRUE(std::isnan(cuda_value)) << "code " << c;
    } else {
      EXPECT_EQ(ours, cuda_value) << "code " << c;
    }
  }
}
#else
TYPED_TEST(Fp8Format, MatchesCudaHostConversion) { GTEST_SKIP() << "cuda_fp8.h not found at build time"; }
#endif

// ---- bf16 / fp16 ---------------------------------------------------------------------------------

// Value of a 16-bit IEEE-style code from its formula.
double half_value(uint16_t code, int exponent_bits, int mantissa_bits) {
  const int sign = code >> 15;
  const int e = (code >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int m = code & ((1 << mantissa_bits) - 1);
  const int bias = (1 << (exponent_bits - 1)) - 1;
  double magnitude;
  if (e == (1 << exponent_bits) - 1) {
    magnitude = m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    magnitude = std::ldexp(static_cast<double>(m), 1 - bias - mantissa_bits);
  } else {
    magnitude = std::ldexp(1.0 + std::ldexp(static_cast<double>(m), -mantissa_bits), e - bias);
  }
  return sign ? -magnitude : magnitude;
}

// Nearest 16-bit code by bisection over the ordered non-negative codes, ties to even, overflow
// to infinity once past the midpoint between max and the next power (IEEE round-to-nearest).
uint16_t slow_encode_16(float x, int exponent_bits, int mantissa_bits) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const uint16_t inf_code = static_cast<uint16_t>(((1 << exponent_bits) - 1) << mantissa_bits);
  const double ax = std::fabs(static_cast<double>(x));
  const double max = half_value(static_cast<uint16_t>(inf_code - 1), exponent_bits, mantissa_bits);
  const double overflow = max + std::ldexp(1.0, static_cast<int>(std::log2(max)) - mantissa_bits - 1);
  if (ax >= overflow) return sign | inf_code;
  uint16_t lo = 0, hi = static_cast<uint16_t>(inf_code - 1);  // value(lo) <= ax < value(hi) unless ax >= max
  if (ax >= max) return sign | hi;
  while (hi - lo > 1) {
    const uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    if (half_value(mid, exponent_bits, mantissa_bits) <= ax) lo = mid; else hi = mid;
  }
  const double dl = ax - half_value(lo, exponent_bits, mantissa_bits);
  const double dh = half_value(hi, exponent_bits, mantissa_bits) - ax;
  const uint16_t pick = dl < dh ? lo : dh < dl ? hi : ((lo & 1) == 0 ? lo : hi);
  return sign | pick;
}

TEST(HalfFormats, EveryCodeDecodes) {
  for (uint32_t c = 0; c < 65536; ++c) {
    const double bf = half_value(static_cast<uint16_t>(c), 8, 7);
    const double fp = half_value(static_cast<uint16_t>(c), 5, 10);
    const float got_bf = Bf16{static_cast<uint16_t>(c)}.to_float();
    const float got_fp = Fp16{static_cast<uint16_t>(c)}.to_float();
    if (std::isnan(bf)) EXPECT_TRUE(std::isnan(got_bf)); else EXPECT_EQ(static_cast<double>(got_bf), bf) << c;
    if (std::isnan(fp)) EXPECT_TRUE(std::isnan(got_fp)); else EXPECT_EQ(static_cast<double>(got_fp), fp) << c;
  }
}

TEST(HalfFormats, RandomFloatsMatchSlowEncoder) {
  const uint64_t seed = testing::test_seed();
  const auto values = random_floats(1u << 20, seed, 65504.0);
  int64_t mismatches = 0;
  for (float x : values) {
    const uint16_t bf = Bf16::from_float(x).bits, fp = Fp16::from_float(x).bits;
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(Bf16{bf}.to_float()) && std::isnan(Fp16{fp}.to_float()));
      continue;
    }
    const uint16_t want_bf = slow_encode_16(x, 8, 7), want_fp = slow_encode_16(x, 5, 10);
    if ((bf != want_bf || fp != want_fp) && mismatches++ < 10) {
      ADD_FAILURE() << "x = " << x << std::hex << " bf16 0x" << bf << " want 0x" << want_bf << " fp16 0x" << fp
                    << " want 0x" << want_fp << std::dec;
    }
  }
  EXPECT_EQ(mismatches, 0) << "seed " << seed;
}

TEST(HalfFormats, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(Fp16::from_float(65504.0f).bits, 0x7BFF);
  EXPECT_EQ(Fp16::from_float(65519.99f).bits, 0x7BFF);
  EXPECT_EQ(Fp16::from_float(65520.0f).bits, 0x7C00);  // the overflow midpoint rounds (to even) to inf
  EXPECT_EQ(Fp16::from_float(-inf).bits, 0xFC00);
  EXPECT_EQ(Fp16::from_float(std::ldexp(1.0f, -25)).bits, 0x0000);  // half the smallest subnormal: tie to 0
  EXPECT_EQ(Fp16::from_float(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits, 0x0001);
  EXPECT_EQ(Bf16::from_float(inf).bits, 0x7F80);
  EXPECT_EQ(Bf16::from_float(-0.0f).bits, 0x8000);
  EXPECT_EQ(Bf16::from_float(from_bits(0x3F808000u)).bits, 0x3F80);  // tie, to even
  EXPECT_EQ(Bf16::from_float(from_bits(0x3F818000u)).bits, 0x3F82);  // tie, to even
  EXPECT_TRUE(std::isnan(Bf16::from_float(from_bits(0x7F800001u)).to_float()));  // NaN stays NaN
}

}  // namespace
}  // namespace fp8kv

// The reference rounds its float64 results once to the output dtype (round-to-odd to float, then
// RNE): checked where rounding through float first would go wrong, just off a 16-bit midpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/test_utils.h"
#include "fp8kv/half.h"
#include "reference/common.h"

namespace fp8kv {
namespace {

TEST(ReferenceRounding, DoubleRoundsOnceToSixteenBits) {
  std::mt19937_64 rng(testing::test_seed());
  std::uniform_int_distribution<uint32_t> code(0x0400, 0x7BFE);  // fp16 normals
  std::uniform_int_distribution<int> side(0, 1);
  for (int i = 0; i < 100000; ++i) {
    for (DType dtype : {DType::kFloat16, DType::kBFloat16}) {
      const uint16_t lo = static_cast<uint16_t>(code(rng));
      const double a = dtype == DType::kFloat16 ? Fp16{lo}.to_float() : Bf16{lo}.to_float();
      const double b = dtype == DType::kFloat16 ? Fp16{static_cast<uint16_t>(lo + 1)}.to_float()
                                                : Bf16{static_cast<uint16_t>(lo + 1)}.to_float();
      // A hair above or below the midpoint: float's nearest value is the midpoint itself, and
      // rounding that again would tie to even instead of going to the nearer neighbour.
      const double mid = (a + b) / 2;
      const bool above = side(rng) == 1;
      const double x = mid + (above ? 1 : -1) * (b - a) * 0x1p-30;
      uint16_t got = 0;
      reference::detail::store_rounded(&got, dtype, 0, x);
      ASSERT_EQ(got, above ? lo + 1 : lo) << dtype_name(dtype) << " x " << x;
      reference::detail::store_rounded(&got, dtype, 0, -x);
      ASSERT_EQ(got, (above ? lo + 1 : lo) | 0x8000);
    }
  }
  uint16_t got = 0;
  reference::detail::store_rounded(&got, DType::kFloat16, 0, 0.0);
  EXPECT_EQ(got, 0);
  float f = 0;
  reference::detail::store_rounded(&f, DType::kFloat32, 0, 1.0 + 0x1p-30);
  EXPECT_EQ(f, 1.0f);
}

}  // namespace
}  // namespace fp8kv

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/expect_error.h"
#include "fp8kv/error.h"
#include "fp8kv/fp8.h"
#include "fp8kv/scales.h"

namespace fp8kv {
namespace {

TEST(Scales, ParseNames) {
  EXPECT_EQ(parse_scale_granularity("per_tensor"), ScaleGranularity::kPerTensor);
  EXPECT_EQ(parse_scale_granularity("Per_Head"), ScaleGranularity::kPerHead);
  EXPECT_EQ(parse_scale_granularity("per_token"), ScaleGranularity::kPerToken);
  for (auto g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead, ScaleGranularity::kPerToken}) {
    EXPECT_EQ(parse_scale_granularity(scale_granularity_name(g)), g);
  }
  testing::expect_invalid_argument([] { parse_scale_granularity("per_channel", "--scales"); }, "--scales",
                                   {"per_channel"});
}

TEST(Scales, StaticScaleCount) {
  EXPECT_EQ(static_scale_count(DType::kFp8E4M3, ScaleGranularity::kPerTensor, 8), 1);
  EXPECT_EQ(static_scale_count(DType::kFp8E5M2, ScaleGranularity::kPerHead, 8), 8);
  EXPECT_EQ(static_scale_count(DType::kFp8E4M3, ScaleGranularity::kPerToken, 8), 0);
  EXPECT_EQ(static_scale_count(DType::kBFloat16, ScaleGranularity::kPerHead, 8), 0);
  EXPECT_EQ(static_scale_count(DType::kFloat16, ScaleGranularity::kPerTensor, 8), 0);
}

TEST(Scales, ScaleFromAmaxFollowsTheConvention) {
  EXPECT_EQ(scale_from_amax(448.0f, kE4M3Max), 1.0f);
  EXPECT_EQ(scale_from_amax(57344.0f, kE5M2Max), 1.0f);
  EXPECT_EQ(scale_from_amax(0.0f, kE4M3Max), kAmaxFloor / kE4M3Max);  // the documented floor
  EXPECT_GT(scale_from_amax(0.0f, kE5M2Max), 0.0f);
  // The amax element lands on +-max (or one code below, after the division's rounding).
  for (float amax : {0.37f, 1.0f, 3.3e-3f, 812.5f, 1.0e5f}) {
    const float s = scale_from_amax(amax, kE4M3Max);
    EXPECT_NEAR(amax / s, kE4M3Max, kE4M3Max * 1e-6f);
  }
}

TEST(Scales, ValidateRejectsNonFiniteZeroAndNegative) {
  const std::vector<float> good{0.5f, 1e-8f, 3.0f};
  EXPECT_NO_THROW(validate_scales(good.data(), 3, "k_scale"));
  EXPECT_NO_THROW(validate_scales(nullptr, 0, "k_scale"));
  for (float bad : {0.0f, -0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> s{1.0f, bad};
    SCOPED_TRACE(bad);
    testing::expect_invalid_argument([&] { validate_scales(s.data(), 2, "k_scale"); }, "k_scale", {"scale[1]"});
  }
  EXPECT_THROW(validate_scales(nullptr, 2, "k_scale"), InvalidArgument);
}

TEST(Scales, AmaxOf) {
  const std::vector<float> x{0.5f, -7.25f, 3.0f, 0.0f};
  EXPECT_EQ(amax_of(x.data(), 4, "x"), 7.25f);
  EXPECT_EQ(amax_of(x.data(), 0, "x"), 0.0f);
  std::vector<float> nan{1.0f, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(amax_of(nan.data(), 2, "x"), InvalidArgument);
  std::vector<float> inf{1.0f, -std::numeric_limits<float>::infinity()};
  EXPECT_THROW(amax_of(inf.data(), 2, "x"), InvalidArgument);
}

}  // namespace
}  // namespace fp8kv

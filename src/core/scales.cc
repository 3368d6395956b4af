#include "fp8kv/scales.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "fp8kv/error.h"

namespace fp8kv {

ScaleGranularity parse_scale_granularity(const std::string& name, const std::string& argument_name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (n == "per_tensor") return ScaleGranularity::kPerTensor;
  if (n == "per_head") return ScaleGranularity::kPerHead;
  if (n == "per_token") return ScaleGranularity::kPerToken;
  throw InvalidArgument(argument_name,
                        "unknown scale granularity '" + name + "'; expected one of per_tensor, per_head, per_token");
}

const char* scale_granularity_name(ScaleGranularity g) {
  switch (g) {
    case ScaleGranularity::kPerTensor: return "per_tensor";
    case ScaleGranularity::kPerHead: return "per_head";
    case ScaleGranularity::kPerToken: return "per_token";
  }
  return "unknown";
}

int64_t static_scale_count(DType storage, ScaleGranularity g, int num_kv_heads) {
  if (!is_fp8(storage)) return 0;
  switch (g) {
    case ScaleGranularity::kPerTensor: return 1;
    case ScaleGranularity::kPerHead: return num_kv_heads;
    case ScaleGranularity::kPerToken: return 0;
  }
  return 0;
}

void validate_scales(const float* scales, int64_t count, const char* argument) {
  FP8KV_REQUIRE(count == 0 || scales != nullptr, argument, count, " scales are required but none were given");
  for (int64_t i = 0; i < count; ++i) {
    const float s = scales[i];
    FP8KV_REQUIRE(std::isfinite(s) && s > 0.0f, argument,
                  "every scale must be finite and > 0 (x ~= stored * scale), got scale[", i, "] = ", s);
  }
}

float amax_of(const float* values, int64_t count, const char* argument) {
  FP8KV_REQUIRE(count == 0 || values != nullptr, argument, "no data for ", count, " values");
  float amax = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    FP8KV_REQUIRE(std::isfinite(values[i]), argument,
                  "calibration data must be finite, got value[", i, "] = ", values[i]);
    amax = std::max(amax, std::fabs(values[i]));
  }
  return amax;
}

}  // namespace fp8kv

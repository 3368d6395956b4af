// reference::quantize / dequantize: the scale convention of scales.h applied to a dense tensor.
#include <cmath>

#include "fp8kv/error.h"
#include "fp8kv/reference.h"
#include "reference/common.h"

namespace fp8kv::reference {
namespace {

// Checks x, out and scales for quantize (x wide, out FP8) or dequantize (x FP8, out float32).
void check_args(const TensorRef& x, const TensorRef& out, ScaleGranularity g, const TensorRef& scales,
                bool quantizing) {
  check_device(x, "x", Device::kCpu);
  check_device(out, "out", Device::kCpu);
  check_device(scales, "scales", Device::kCpu);
  const TensorRef& wide = quantizing ? x : out;
  const TensorRef& narrow = quantizing ? out : x;
  const char* wide_name = quantizing ? "x" : "out";
  const char* narrow_name = quantizing ? "out" : "x";
  if (quantizing) {
    check_dtype(wide, wide_name, {DType::kFloat32, DType::kBFloat16, DType::kFloat16});
  } else {
    check_dtype(wide, wide_name, {DType::kFloat32});
  }
  check_dtype(narrow, narrow_name, {DType::kFp8E4M3, DType::kFp8E5M2});
  FP8KV_REQUIRE(x.ndim == 3, "x", "expected shape [num_tokens, num_heads, head_dim], got ", x.shape_string());
  check_shape(out, "out", {x.size(0), x.size(1), x.size(2)}, "[num_tokens, num_heads, head_dim] (same as x)");
  check_dtype(scales, "scales", {DType::kFloat32});
  switch (g) {
    case ScaleGranularity::kPerTensor: check_shape(scales, "scales", {1}, "[1] (per_tensor)"); break;
    case ScaleGranularity::kPerHead: check_shape(scales, "scales", {x.size(1)}, "[num_heads] (per_head)"); break;
    case ScaleGranularity::kPerToken:
      check_shape(scales, "scales", {x.size(0), x.size(1)}, "[num_tokens, num_heads] (per_token)");
      break;
  }
  // Per-token scales are an output of quantize(); every other scale is an input here.
  if (!(quantizing && g == ScaleGranularity::kPerToken)) {
    validate_scales(scales.ptr<const float>(), scales.numel(), "scales");
  }
}

// Index into `scales` of row (token, head).
int64_t scale_index(ScaleGranularity g, int64_t token, int64_t head, int64_t num_heads) {
  switch (g) {
    case ScaleGranularity::kPerTensor: return 0;
    case ScaleGranularity::kPerHead: return head;
    case ScaleGranularity::kPerToken: return token * num_heads + head;
  }
  return 0;
}

}  // namespace

void quantize(const TensorRef& x, const TensorRef& out, ScaleGranularity granularity, const TensorRef& scales) {
  check_args(x, out, granularity, scales, true);
  const int64_t tokens = x.size(0), heads = x.size(1), d = x.size(2);
  float* s = scales.ptr<float>();
  const float max_value = fp8_max(out.dtype);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (t * heads + h) * d;
      const int64_t si = scale_index(granularity, t, h, heads);
      if (granularity == ScaleGranularity::kPerToken) {
        float amax = 0.0f;
        for (int64_t c = 0; c < d; ++c) {
          const float a = std::fabs(detail::load(x.data, x.dtype, row + c));
          amax = a > amax ? a : amax;
        }
        s[si] = scale_from_amax(amax, max_value);
      }
      for (int64_t c = 0; c < d; ++c) detail::store(out.data, out.dtype, row + c, detail::quantize_quotient(detail::load(x.data, x.dtype, row + c), s[si]));
    }
  }
}

void dequantize(const TensorRef& x, const TensorRef& out, ScaleGranularity granularity, const TensorRef& scales) {
  check_args(x, out, granularity, scales, false);
  const int64_t tokens = x.size(0), heads = x.size(1), d = x.size(2);
  const float* s = scales.ptr<const float>();
  float* o = out.ptr<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (t * heads + h) * d;
      const float scale = s[scale_index(granularity, t, h, heads)];
      for (int64_t c = 0; c < d; ++c) o[row + c] = detail::load(x.data, x.dtype, row + c) * scale;
    }
  }
}

}  // namespace fp8kv::reference

// The FMA-pipe exp2 of the 256-key prefill kernel's softmax (src/cuda/prefill_sm90/poly_exp2.cuh),
// with the operands the softmax gives it, against exp2(S * scale - base) in double precision.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda/prefill_sm90/poly_exp2.cuh"
#include "gpu_test_utils.h"

namespace fp8kv {
namespace {

using testing::DeviceBuffer;

__global__ void poly_exp2_kernel(const float* s, int n, float scale, float base, float* out) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n) return;
  using cuda::sm90::kPolyExpClamp;
  out[i] = cuda::sm90::poly_exp2(s[i], -scale * (1.0f / kPolyExpClamp), base * (1.0f / kPolyExpClamp));
}

std::vector<float> run_poly_exp2(const std::vector<float>& s, float scale, float base) {
  const int n = static_cast<int>(s.size());
  DeviceBuffer<float> d_s(s.size()), d_out(s.size());
  FP8KV_CUDA_CHECK(cudaMemcpy(d_s.get(), s.data(), s.size() * sizeof(float), cudaMemcpyHostToDevice));
  poly_exp2_kernel<<<(n + 255) / 256, 256>>>(d_s.get(), n, scale, base, d_out.get());
  FP8KV_CUDA_CHECK(cudaGetLastError());
  std::vector<float> out(s.size());
  FP8KV_CUDA_CHECK(cudaMemcpy(out.data(), d_out.get(), s.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}

TEST(CudaPolyExp2, MatchesExp2AndGivesExactZeroAndOne) {
  // Scores s = 128 - k / 1024 (exact) whose scaled value x = s * scale - base covers [-140, 0] in
  // steps of ~1.2e-4, with a scale near a softmax's (log2(e) / sqrt(128) = 0.1275) and a running
  // max as base, plus the masked -inf. scale / 127 = 2^-10 and base / 127 = 1 / 8 (127 being
  // kPolyExpClamp) are exact, so that s = 128 (the row max) gives exactly x = 0.
  const float scale = 127.0f / 1024.0f, base = 127.0f / 8.0f;
  std::vector<float> s;
  for (int k = 0; 128.0 - k / 1024.0 >= 128.0 - 140.0 / scale; ++k) {
    s.push_back(128.0f - static_cast<float>(k) / 1024.0f);
  }
  s.push_back(-INFINITY);
  const std::vector<float> out = run_poly_exp2(s, scale, base);

  double worst = 0.0;
  int64_t bad = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const double x = static_cast<double>(s[i]) * scale - base;  // what the kernel's FFMA rounds
    const float p = out[i];
    if (!(p >= 0.0f) || !std::isfinite(p)) {
      if (bad++ < 5) ADD_FAILURE() << "s = " << s[i] << ": " << p << " is not a finite probability";
      continue;
    }
    if (x >= -125.0) {
      // 1.0e-4 for the cubic, the rest for x's rounding in the saturated FFMA (|x| <= 125).
      const double rel = std::fabs(p / std::exp2(x) - 1.0);
      worst = std::max(worst, rel);
      if (rel > 1.3e-4 && bad++ < 5) ADD_FAILURE() << "x = " << x << ": " << p << " against " << std::exp2(x);
    } else if (x <= -127.01) {
      if (p != 0.0f && bad++ < 5) ADD_FAILURE() << "x = " << x << " below the clamp gives " << p << ", not 0";
    } else if (p > 0x1p-124f && bad++ < 5) {
      // Between the clamp and -125 the exponent add may give a denormal instead of ~2^x.
      ADD_FAILURE() << "x = " << x << " near the clamp gives " << p << ", above 2^-124";
    }
  }
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(out.front(), 1.0f) << "the row max itself (x = 0) must be exactly 1";
  EXPECT_EQ(out.back(), 0.0f) << "a masked key (-inf) must give exactly 0";
  std::printf("[poly exp2] %zu values, worst relative error %.3e for x >= -125\n", s.size(), worst);
}

}  // namespace
}  // namespace fp8kv

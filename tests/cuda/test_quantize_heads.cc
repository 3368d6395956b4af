// cuda::quantize_heads (dense bf16 [tokens, heads, head_dim] -> FP8 E4M3, one scale per group of
// heads) against the CPU reference: each group's heads, gathered, are quantised by
// reference::quantize with the per-tensor scale of scales.h computed from the group's amax. Both
// divide in float32 and round with the same (bit-exact, verified) conversion, so codes and scales
// must agree bit for bit.
//
// The shapes make tokens * heads a non-multiple of the kernel's rows per block (16 at head_dim 64,
// 8 at 128), so the last block has padding rows: quantize_heads has no K/V tensors, and those rows
// once read through K's null pointer (compute-sanitizer: rope_quantize_kernel<64>, reached from the
// engine's prefill on the head_dim-64 golden models). Run this under memcheck too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/test_utils.h"
#include "cuda/gpu_test_utils.h"
#include "fp8kv/cuda_prefill.h"
#include "fp8kv/fp8.h"
#include "fp8kv/half.h"
#include "fp8kv/reference.h"
#include "fp8kv/scales.h"

namespace fp8kv::testing {
namespace {

struct Shape {
  int tokens, heads, groups, head_dim;
};

class CudaQuantizeHeads : public ::testing::TestWithParam<Shape> {};

TEST_P(CudaQuantizeHeads, CodesAndScalesMatchReferenceQuantize) {
  FP8KV_REQUIRE_GPU();
  const Shape s = GetParam();
  const int per_group = s.heads / s.groups;
  const size_t count = static_cast<size_t>(s.tokens) * s.heads * s.head_dim;
  const uint64_t seed = test_seed();
  // Two outlier channels per row, as real activations have.
  const std::vector<Bf16> x = convert_from_float<Bf16>(random_normal(count, seed, 1.0f, s.head_dim, 2, 20.0f));

  // Reference: per group, gather its heads into [tokens, per_group, head_dim], scale from the amax,
  // reference::quantize per tensor, scatter the codes back.
  std::vector<uint8_t> want(count);
  std::vector<float> want_scale(static_cast<size_t>(s.groups));
  const size_t row = static_cast<size_t>(s.head_dim);
  for (int g = 0; g < s.groups; ++g) {
    std::vector<Bf16> part;
    part.reserve(static_cast<size_t>(s.tokens) * per_group * row);
    float amax = 0.0f;
    for (int t = 0; t < s.tokens; ++t) {
      for (int h = g * per_group; h < (g + 1) * per_group; ++h) {
        const size_t base = (static_cast<size_t>(t) * s.heads + h) * row;
        for (size_t c = 0; c < row; ++c) {
          part.push_back(x[base + c]);
          amax = std::max(amax, std::fabs(to_float(x[base + c])));
        }
      }
    }
    float scale = scale_from_amax(amax, kE4M3Max);
    want_scale[static_cast<size_t>(g)] = scale;
    std::vector<Fp8E4M3> codes(part.size());
    reference::quantize(TensorRef(part.data(), DType::kBFloat16, {s.tokens, per_group, s.head_dim}),
                        TensorRef(codes.data(), DType::kFp8E4M3, {s.tokens, per_group, s.head_dim}),
                        ScaleGranularity::kPerTensor, TensorRef(&scale, DType::kFloat32, {1}));
    size_t i = 0;
    for (int t = 0; t < s.tokens; ++t) {
      for (int h = g * per_group; h < (g + 1) * per_group; ++h) {
        const size_t base = (static_cast<size_t>(t) * s.heads + h) * row;
        for (size_t c = 0; c < row; ++c) want[base + c] = codes[i++].bits;
      }
    }
  }

  // Exactly sized device buffers (memcheck catches any write past them), outputs poisoned.
  DeviceBuffer<Bf16> dx(x);
  DeviceBuffer<uint8_t> dout(count);
  DeviceBuffer<float> dscale(static_cast<size_t>(s.groups));
  dout.poison();
  dscale.poison();
  cuda::quantize_heads(dx.tensor(DType::kBFloat16, {s.tokens, s.heads, s.head_dim}),
                       dout.tensor(DType::kFp8E4M3, {s.tokens, s.heads, s.head_dim}),
                       dscale.tensor(DType::kFloat32, {s.groups}), false, 0);
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());

  const std::vector<float> got_scale = dscale.download();
  for (int g = 0; g < s.groups; ++g) {
    EXPECT_EQ(got_scale[static_cast<size_t>(g)], want_scale[static_cast<size_t>(g)]) << "group " << g;
  }
  const std::vector<uint8_t> got = dout.download();
  size_t mismatches = 0, first = count;
  for (size_t i = 0; i < count; ++i) {
    if (got[i] != want[i]) {
      ++mismatches;
      if (first == count) first = i;
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << count << " codes; first at " << first << ": got 0x" << std::hex
                            << static_cast<int>(got[first < count ? first : 0]) << ", want 0x"
                            << static_cast<int>(want[first < count ? first : 0]) << std::dec << " (seed " << seed
                            << ")";
}

// tokens * heads leaves a partial last block at both head dims (the one case that fills whole
// blocks, 64 x 16 at head dim 64, is marked), GQA group sizes 1 to 7, one group and one per head.
INSTANTIATE_TEST_SUITE_P(Shapes, CudaQuantizeHeads,
                         ::testing::Values(Shape{1, 2, 1, 64}, Shape{7, 4, 2, 64}, Shape{5, 14, 2, 64},
                                           Shape{35, 6, 6, 64}, Shape{129, 12, 4, 64},
                                           Shape{64, 16, 4, 64} /* whole blocks */, Shape{1, 2, 1, 128},
                                           Shape{7, 4, 2, 128}, Shape{5, 14, 2, 128}, Shape{35, 6, 6, 128},
                                           Shape{129, 12, 4, 128}),
                         [](const ::testing::TestParamInfo<Shape>& info) {
                           const Shape& s = info.param;
                           return "t" + std::to_string(s.tokens) + "_h" + std::to_string(s.heads) + "_g" +
                                  std::to_string(s.groups) + "_d" + std::to_string(s.head_dim);
                         });

}  // namespace
}  // namespace fp8kv::testing

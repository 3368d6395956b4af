// reference::write_kv_cache, RoPE and quantize/dequantize, checked element by element against
// bounds derived from the formats and against float64 arithmetic done here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/expect_error.h"
#include "common/test_utils.h"
#include "fp8kv/error.h"
#include "fp8kv/kv_cache.h"
#include "fp8kv/reference.h"
#include "reference/reference_test_utils.h"

namespace fp8kv {
namespace {

using testing::TypedBuffer;

constexpr int kHeads = 2, kDim = 64, kBs = 16, kBlocks = 4;

KvCacheSpec spec(DType dtype, ScaleGranularity g) {
  KvCacheSpec s;
  s.num_layers = 1;
  s.num_kv_heads = kHeads;
  s.head_dim = kDim;
  s.block_size = kBs;
  s.num_blocks = kBlocks;
  s.dtype = dtype;
  s.granularity = g;
  return s;
}

// |stored * scale - x| <= u |x| + half the format's smallest subnormal, times the scale.
::testing::AssertionResult within_format(double got, double x, DType dtype, double scale) {
  const int m = testing::mantissa_bits(dtype);
  const double u = std::ldexp(1.0, -(m + 1));
  const double min_subnormal = dtype == DType::kFp8E4M3 ? 0x1p-9 : dtype == DType::kFp8E5M2 ? 0x1p-16
                               : dtype == DType::kFloat16 ? 0x1p-24 : 0x1p-133;
  const double tol = u * std::fabs(x) + 0.5 * min_subnormal * scale;
  if (std::fabs(got - x) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "stored " << got << " for " << x << " (tolerance " << tol << ")";
}

TEST(CacheWriteReference, EveryFormatStoresWithinItsRoundingAndSkipsPadding) {
  for (DType dtype : {DType::kBFloat16, DType::kFloat16, DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (auto g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead, ScaleGranularity::kPerToken}) {
      const uint64_t seed = testing::test_seed();
      KvCache cache(spec(dtype, g));
      PagedKvLayer l = cache.layer(0);
      const size_t pool_bytes = static_cast<size_t>(kBlocks) * kHeads * kBs * kDim * dtype_size(dtype);
      std::memset(l.k, 0xFF, pool_bytes);  // NaN in every format: shows what was written
      std::memset(l.v, 0xFF, pool_bytes);
      const int64_t count = static_scale_count(dtype, g, kHeads);
      const std::vector<float> k_scales{0.05f, 0.2f}, v_scales{0.5f, 0.01f};
      if (count > 0) cache.set_static_scales(0, k_scales.data(), v_scales.data(), count);

      const int64_t n = 5;
      std::vector<int64_t> slots{3, -1, 17, 63, -7};
      std::vector<float> key = testing::random_normal(n * kHeads * kDim, seed, 2.0f, kDim, 2, 30.0f);
      std::vector<float> value = testing::random_normal(n * kHeads * kDim, seed + 1);
      std::fill(value.begin() + 3 * kHeads * kDim, value.begin() + 3 * kHeads * kDim + kDim, 0.0f);  // an all-zero row
      CacheWriteArgs w;
      w.key = TensorRef(key.data(), DType::kFloat32, {n, kHeads, kDim});
      w.value = TensorRef(value.data(), DType::kFloat32, {n, kHeads, kDim});
      w.slot_mapping = TensorRef(slots.data(), DType::kInt64, {n});
      w.cache = l;
      reference::write_kv_cache(w);

      TypedBuffer kpool(std::vector<float>(), dtype), vpool(std::vector<float>(), dtype);
      kpool.bytes.assign(static_cast<uint8_t*>(l.k), static_cast<uint8_t*>(l.k) + pool_bytes);
      vpool.bytes.assign(static_cast<uint8_t*>(l.v), static_cast<uint8_t*>(l.v) + pool_bytes);
      std::vector<bool> written(static_cast<size_t>(kBlocks) * kHeads * kBs * kDim, false);
      for (int64_t t = 0; t < n; ++t) {
        if (slots[static_cast<size_t>(t)] < 0) continue;
        const int64_t block = slots[static_cast<size_t>(t)] / kBs, pos = slots[static_cast<size_t>(t)] % kBs;
        for (int h = 0; h < kHeads; ++h) {
          const float* kx = key.data() + (t * kHeads + h) * kDim;
          const float* vx = value.data() + (t * kHeads + h) * kDim;
          double ks = 1.0, vs = 1.0;
          if (g == ScaleGranularity::kPerToken && is_fp8(dtype)) {
            ks = l.k_token_scale[(block * kHeads + h) * kBs + pos];
            vs = l.v_token_scale[(block * kHeads + h) * kBs + pos];
            // The row's amax maps onto the format's largest value.
            float ka = 0, va = 0;
            for (int c = 0; c < kDim; ++c) ka = std::max(ka, std::fabs(kx[c])), va = std::max(va, std::fabs(vx[c]));
            EXPECT_EQ(static_cast<float>(ks), std::max(ka, kAmaxFloor) / fp8_max(dtype));
            EXPECT_EQ(static_cast<float>(vs), std::max(va, kAmaxFloor) / fp8_max(dtype));
          } else if (is_fp8(dtype)) {
            ks = g == ScaleGranularity::kPerHead ? k_scales[static_cast<size_t>(h)] : k_scales[0];
            vs = g == ScaleGranularity::kPerHead ? v_scales[static_cast<size_t>(h)] : v_scales[0];
          }
          for (int c = 0; c < kDim; ++c) {
            const size_t i = static_cast<size_t>(((block * kHeads + h) * kBs + pos) * kDim + c);
            written[i] = true;
            // Per-tensor/per-head scales here are not calibrated: values past the range saturate.
            const double kclip = std::min<double>(std::fabs(kx[c]), ks * fp8_max(dtype) + (is_fp8(dtype) ? 0 : 1e30));
            ASSERT_TRUE(within_format(kpool.get(i) * ks, std::copysign(kclip, kx[c]), dtype, ks))
                << kv_cache_dtype_name(dtype) << " " << scale_granularity_name(g) << " K t " << t << " h " << h;
            const double vclip = std::min<double>(std::fabs(vx[c]), vs * fp8_max(dtype) + (is_fp8(dtype) ? 0 : 1e30));
            ASSERT_TRUE(within_format(vpool.get(i) * vs, std::copysign(vclip, vx[c]), dtype, vs))
                << kv_cache_dtype_name(dtype) << " " << scale_granularity_name(g) << " V t " << t << " h " << h;
          }
        }
      }
      for (size_t i = 0; i < written.size(); ++i) {  // padding tokens (negative slots) wrote nothing
        if (!written[i]) ASSERT_TRUE(std::isnan(kpool.get(i)) && std::isnan(vpool.get(i))) << "element " << i;
      }
    }
  }
}

TEST(CacheWriteReference, RopeIsAppliedToKeysBeforeStoring) {
  RopeConfig rc;
  rc.theta = 1e6;
  rc.rotary_dim = kDim;
  const int max_position = 64;
  std::vector<float> table = build_rope_table(rc, max_position);
  const uint64_t seed = testing::test_seed();
  const int64_t n = 3;
  std::vector<float> key = testing::random_normal(n * kHeads * kDim, seed), value = key;
  std::vector<int64_t> slots{0, 9, 33};
  std::vector<int32_t> positions{0, 7, 63};
  KvCache cache(spec(DType::kFloat16, ScaleGranularity::kPerTensor));
  CacheWriteArgs w;
  w.key = TensorRef(key.data(), DType::kFloat32, {n, kHeads, kDim});
  w.value = TensorRef(value.data(), DType::kFloat32, {n, kHeads, kDim});
  w.slot_mapping = TensorRef(slots.data(), DType::kInt64, {n});
  w.positions = TensorRef(positions.data(), DType::kInt32, {n});
  w.rope.cos_sin = TensorRef(table.data(), DType::kFloat32, {max_position, kDim});
  w.cache = cache.layer(0);
  reference::write_kv_cache(w);
  const auto* k = static_cast<const Fp16*>(w.cache.k);
  const auto* v = static_cast<const Fp16*>(w.cache.v);
  const int half = kDim / 2;
  for (int64_t t = 0; t < n; ++t) {
    const float* cs = table.data() + positions[static_cast<size_t>(t)] * kDim;
    const int64_t block = slots[static_cast<size_t>(t)] / kBs, pos = slots[static_cast<size_t>(t)] % kBs;
    for (int h = 0; h < kHeads; ++h) {
      const float* x = key.data() + (t * kHeads + h) * kDim;
      for (int c = 0; c < kDim; ++c) {
        const int i = c % half;
        // Rotate-half, in float64: (x1 cos - x2 sin, x2 cos + x1 sin).
        const double rotated = c < half ? double(x[i]) * cs[i] - double(x[i + half]) * cs[half + i]
                                        : double(x[i + half]) * cs[i] + double(x[i]) * cs[half + i];
        const size_t at = static_cast<size_t>(((block * kHeads + h) * kBs + pos) * kDim + c);
        const double float_slack = 0x1p-23 * (std::fabs(x[i] * cs[i]) + std::fabs(x[i + half] * cs[half + i]));
        EXPECT_LE(std::fabs(k[at].to_float() - rotated), 0x1p-11 * std::fabs(rotated) + float_slack + 0x1p-25);
        EXPECT_EQ(v[at].bits, Fp16::from_float(x[c]).bits);  // V is not rotated
      }
    }
  }
}

TEST(Rope, TableMatchesFloat64Frequencies) {
  for (bool llama3 : {false, true}) {
    RopeConfig rc;
    rc.theta = llama3 ? 500000.0 : 10000.0;
    rc.rotary_dim = 128;
    if (llama3) {  // Llama-3.1's rope_scaling
      rc.llama3_factor = 8.0;
      rc.llama3_low_freq_factor = 1.0;
      rc.llama3_high_freq_factor = 4.0;
      rc.llama3_original_max_position = 8192;
    }
    const int max_position = 4096;
    const std::vector<float> table = build_rope_table(rc, max_position);
    for (int i = 0; i < rc.rotary_dim / 2; ++i) {
      double inv = std::pow(rc.theta, -2.0 * i / rc.rotary_dim);
      if (llama3) {  // Meta's reference apply_scaling, in float64
        const double wavelen = 2 * M_PI / inv;
        const double low_wavelen = 8192 / 1.0, high_wavelen = 8192 / 4.0;
        if (wavelen > low_wavelen) {
          inv /= 8.0;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0);
          inv = (1 - smooth) * inv / 8.0 + smooth * inv;
        }
      }
      for (int p : {0, 1, 2, 17, 1000, 4095}) {
        const double angle = p * inv;
        // transformers rounds pow, 1/pow and the angle to float32 (three roundings of 2^-24
        // relative each) before cos/sin, which round once more.
        const double tol = angle * 0x1p-21 + 0x1p-23;
        EXPECT_NEAR(table[static_cast<size_t>(p) * 128 + static_cast<size_t>(i)], std::cos(angle), tol) << i << " " << p;
        EXPECT_NEAR(table[static_cast<size_t>(p) * 128 + 64 + static_cast<size_t>(i)], std::sin(angle), tol);
      }
    }
  }
  RopeConfig bad;
  bad.rotary_dim = 7;
  EXPECT_THROW(build_rope_table(bad, 16), InvalidArgument);
}

TEST(QuantizeReference, RoundTripEveryGranularityFormatAndInput) {
  const int64_t tokens = 9;
  for (DType fp8 : {DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (DType in : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      for (auto g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead, ScaleGranularity::kPerToken}) {
        const uint64_t seed = testing::test_seed();
        const auto raw = testing::random_normal(tokens * kHeads * kDim, seed, 3.0f, kDim, 1, 50.0f);
        TypedBuffer x(raw, in), q(std::vector<float>(raw.size()), fp8), deq(std::vector<float>(raw.size()), DType::kFloat32);
        q.poison();
        deq.poison();
        const auto xv = x.values();
        std::vector<float> scales(g == ScaleGranularity::kPerTensor ? 1 : g == ScaleGranularity::kPerHead ? kHeads
                                                                                                          : tokens * kHeads);
        for (size_t s = 0; s < scales.size(); ++s) {  // calibrated static scales
          float amax = 0;
          for (size_t i = 0; i < xv.size(); ++i) {
            const size_t row = i / kDim, head = row % kHeads;
            const bool mine = scales.size() == 1 || (g == ScaleGranularity::kPerHead ? head == s : row == s);
            if (mine) amax = std::max(amax, static_cast<float>(std::fabs(xv[i])));
          }
          scales[s] = g == ScaleGranularity::kPerToken ? -1.0f : scale_from_amax(amax, fp8_max(fp8));
        }
        const int64_t scale_dims = g == ScaleGranularity::kPerToken ? 2 : 1;
        const TensorRef st = scale_dims == 2 ? TensorRef(scales.data(), DType::kFloat32, {tokens, kHeads})
                                             : TensorRef(scales.data(), DType::kFloat32, {static_cast<int64_t>(scales.size())});
        reference::quantize(TensorRef(x.data(), in, {tokens, kHeads, kDim}), TensorRef(q.data(), fp8, {tokens, kHeads, kDim}),
                            g, st);
        reference::dequantize(TensorRef(q.data(), fp8, {tokens, kHeads, kDim}),
                              TensorRef(deq.data(), DType::kFloat32, {tokens, kHeads, kDim}), g, st);
        for (size_t i = 0; i < xv.size(); ++i) {
          const size_t row = i / kDim;
          const double s = scales[g == ScaleGranularity::kPerTensor ? 0 : g == ScaleGranularity::kPerHead ? row % kHeads : row];
          if (g == ScaleGranularity::kPerToken) {
            float amax = 0;
            for (size_t c = 0; c < kDim; ++c) amax = std::max(amax, static_cast<float>(std::fabs(xv[row * kDim + c])));
            ASSERT_EQ(static_cast<float>(s), scale_from_amax(amax, fp8_max(fp8)));
          }
          // Dequantisation's float product adds at most one float rounding.
          ASSERT_TRUE(within_format(deq.get(i), xv[i], fp8, s * (1 + 0x1p-20)))
              << dtype_name(fp8) << " from " << dtype_name(in) << " " << scale_granularity_name(g) << " element " << i;
        }
      }
    }
  }
}

TEST(QuantizeReference, RejectsBadArguments) {
  std::vector<float> x(2 * kHeads * kDim, 1.0f), out(x.size());
  std::vector<uint8_t> q(x.size());
  std::vector<float> scale{1.0f};
  const TensorRef xt(x.data(), DType::kFloat32, {2, kHeads, kDim});
  const TensorRef qt(q.data(), DType::kFp8E4M3, {2, kHeads, kDim});
  const auto expect_bad = [](const std::function<void()>& f, const char* argument) {
    testing::expect_invalid_argument(f, argument);
  };
  const TensorRef s1(scale.data(), DType::kFloat32, {1});
  expect_bad([&] { reference::quantize(xt, TensorRef(out.data(), DType::kBFloat16, {2, kHeads, kDim}), ScaleGranularity::kPerTensor, s1); }, "out");
  expect_bad([&] { reference::quantize(xt, qt, ScaleGranularity::kPerHead, s1); }, "scales");
  expect_bad([&] { reference::quantize(xt, TensorRef(q.data(), DType::kFp8E4M3, {2, kHeads, 32}), ScaleGranularity::kPerTensor, s1); }, "out");
  scale[0] = 0.0f;
  expect_bad([&] { reference::quantize(xt, qt, ScaleGranularity::kPerTensor, s1); }, "scales");
  scale[0] = std::nanf("");
  expect_bad([&] { reference::dequantize(qt, TensorRef(out.data(), DType::kFloat32, {2, kHeads, kDim}), ScaleGranularity::kPerTensor, s1); }, "scales");
}

TEST(ReferenceDevices, CudaTensorsAreRejectedNotRead) {
  // Non-null pointers that must never be dereferenced: the reference refuses device tensors.
  alignas(16) static uint8_t fake[64];
  PagedKvLayer cache;
  cache.layout = paged_layout(DType::kBFloat16, kHeads, kBs, kDim);
  cache.num_blocks = kBlocks;
  cache.dtype = DType::kBFloat16;
  cache.device = Device::kCuda;
  cache.k = cache.v = fake;
  DecodeArgs d;
  d.cache = cache;
  d.q = TensorRef(fake, DType::kBFloat16, {1, kHeads, kDim}, Device::kCuda);
  d.out = d.q;
  d.block_tables = TensorRef(fake, DType::kInt32, {1, 1}, Device::kCuda);
  d.seq_lens = TensorRef(fake, DType::kInt32, {1}, Device::kCuda);
  d.softmax_scale = 0.125f;
  testing::expect_invalid_argument([&] { reference::paged_decode(d); }, "cache");
  PrefillArgs p;
  p.q = d.q;
  EXPECT_THROW(reference::prefill(p), InvalidArgument);
  CacheWriteArgs w;
  w.cache = cache;
  EXPECT_THROW(reference::write_kv_cache(w), InvalidArgument);
  PagedPrefillArgs pp;
  pp.cache = cache;
  EXPECT_THROW(reference::paged_prefill(pp), InvalidArgument);
}

}  // namespace
}  // namespace fp8kv

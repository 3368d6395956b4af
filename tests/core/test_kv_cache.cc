#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "common/expect_error.h"
#include "fp8kv/error.h"
#include "fp8kv/kv_cache.h"
#include "fp8kv/planner.h"

namespace fp8kv {
namespace {

KvCacheSpec small_spec(DType dtype, ScaleGranularity g) {
  KvCacheSpec spec;
  spec.num_layers = 2;
  spec.num_kv_heads = 2;
  spec.head_dim = 64;
  spec.block_size = 8;
  spec.num_blocks = 6;
  spec.dtype = dtype;
  spec.granularity = g;
  return spec;
}

TEST(KvCache, AllocatedBytesEqualThePlan) {
  const ModelShape model = model_preset("qwen3-0.6b");
  for (DType dtype : {DType::kBFloat16, DType::kFloat16, DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (auto g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead, ScaleGranularity::kPerToken}) {
      for (int block_size : {16, 64}) {
        const KvPlan plan = plan_kv_cache(model, 48ll << 20, dtype, g, block_size);
        const KvCacheSpec spec = kv_cache_spec(plan, model);
        EXPECT_EQ(spec.num_layers, model.num_layers);
        EXPECT_EQ(spec.num_kv_heads, model.num_kv_heads);
        EXPECT_EQ(spec.head_dim, model.head_dim);
        EXPECT_EQ(spec.block_size, block_size);
        EXPECT_EQ(spec.num_blocks, plan.num_blocks);
        EXPECT_EQ(spec.dtype, dtype);
        EXPECT_EQ(spec.granularity, g);
        const KvCache cache(spec);
        EXPECT_EQ(static_cast<int64_t>(cache.allocated_bytes()), plan.total_bytes)
            << kv_cache_dtype_name(dtype) << " " << scale_granularity_name(g) << " bs " << block_size;
        EXPECT_LE(plan.total_bytes, plan.budget_bytes);
        EXPECT_GT(plan.total_bytes + plan.bytes_per_block, plan.budget_bytes);  // no whole block left over
      }
    }
  }
}

TEST(KvCache, LayerViewMatchesFormat) {
  KvCache per_token(small_spec(DType::kFp8E4M3, ScaleGranularity::kPerToken));
  PagedKvLayer l = per_token.layer(1);
  EXPECT_NO_THROW(l.validate());
  EXPECT_NE(l.k_token_scale, nullptr);
  EXPECT_EQ(l.k_scale, nullptr);
  EXPECT_EQ(l.layout.block_elements(), 2 * 8 * 64);
  EXPECT_THROW(per_token.layer(2), InvalidArgument);

  KvCache per_head(small_spec(DType::kFp8E5M2, ScaleGranularity::kPerHead));
  l = per_head.layer(0);
  ASSERT_NE(l.k_scale, nullptr);
  EXPECT_EQ(l.k_scale[0], 1.0f);  // documented start value
  EXPECT_EQ(l.k_token_scale, nullptr);
  const float ks[2] = {0.5f, 0.25f}, vs[2] = {2.0f, 4.0f};
  per_head.set_static_scales(0, ks, vs, 2);
  EXPECT_EQ(per_head.layer(0).k_scale[1], 0.25f);
  EXPECT_EQ(per_head.layer(0).v_scale[0], 2.0f);
  EXPECT_EQ(per_head.layer(1).k_scale[1], 1.0f);
  EXPECT_THROW(per_head.set_static_scales(0, ks, vs, 1), InvalidArgument);
  const float bad[2] = {0.5f, 0.0f};
  EXPECT_THROW(per_head.set_static_scales(0, ks, bad, 2), InvalidArgument);

  KvCache bf16(small_spec(DType::kBFloat16, ScaleGranularity::kPerToken));
  l = bf16.layer(0);
  EXPECT_EQ(l.k_token_scale, nullptr);  // 16-bit storage has no scales whatever the granularity
  EXPECT_EQ(l.k_scale, nullptr);
  EXPECT_NO_THROW(l.validate());
  EXPECT_NO_THROW(bf16.set_static_scales(0, nullptr, nullptr, 0));
}

TEST(KvCache, ApplyCopiesCopiesEveryLayerHeadAndTokenScale) {
  const KvCacheSpec spec = small_spec(DType::kFp8E4M3, ScaleGranularity::kPerToken);
  KvCache cache(spec);
  const PagedLayout layout = spec.layout();
  const int64_t pool = spec.num_blocks * layout.block_elements();
  const int64_t scales = spec.num_blocks * spec.num_kv_heads * spec.block_size;
  for (int l = 0; l < spec.num_layers; ++l) {
    PagedKvLayer v = cache.layer(l);
    for (int64_t i = 0; i < pool; ++i) {
      static_cast<uint8_t*>(v.k)[i] = static_cast<uint8_t>(i * 7 + l);
      static_cast<uint8_t*>(v.v)[i] = static_cast<uint8_t>(i * 13 + l);
    }
    for (int64_t i = 0; i < scales; ++i) {
      v.k_token_scale[i] = static_cast<float>(i + 1000 * l);
      v.v_token_scale[i] = static_cast<float>(-i - 1000 * l);
    }
  }
  std::vector<std::vector<uint8_t>> before_k;
  for (int l = 0; l < spec.num_layers; ++l) {
    const auto* k = static_cast<const uint8_t*>(cache.layer(l).k);
    before_k.emplace_back(k, k + pool);
  }
  const int src = 1, dst = 4, tokens = 5;
  cache.apply_copies({BlockCopy{src, dst, tokens}});
  for (int l = 0; l < spec.num_layers; ++l) {
    const PagedKvLayer v = cache.layer(l);
    for (int h = 0; h < spec.num_kv_heads; ++h) {
      for (int p = 0; p < spec.block_size; ++p) {
        for (int c = 0; c < spec.head_dim; ++c) {
          const uint8_t got = static_cast<const uint8_t*>(v.k)[layout.element_offset(dst, h, p, c)];
          const uint8_t want = before_k[static_cast<size_t>(l)][static_cast<size_t>(
              layout.element_offset(p < tokens ? src : dst, h, p, c))];
          ASSERT_EQ(got, want) << "layer " << l << " head " << h << " pos " << p;
          if (p < tokens) {
            ASSERT_EQ(static_cast<const uint8_t*>(v.v)[layout.element_offset(dst, h, p, c)],
                      static_cast<const uint8_t*>(v.v)[layout.element_offset(src, h, p, c)]);
          }
        }
        const float scale = v.k_token_scale[layout.token_scale_offset(dst, h, p)];
        const float expect = p < tokens ? v.k_token_scale[layout.token_scale_offset(src, h, p)]
                                        : static_cast<float>(layout.token_scale_offset(dst, h, p) + 1000 * l);
        EXPECT_EQ(scale, expect);
        if (p < tokens) {
          EXPECT_EQ(v.v_token_scale[layout.token_scale_offset(dst, h, p)],
                    v.v_token_scale[layout.token_scale_offset(src, h, p)]);
        }
      }
    }
  }
  EXPECT_THROW(cache.apply_copies({BlockCopy{0, 6, 1}}), InvalidArgument);
  EXPECT_THROW(cache.apply_copies({BlockCopy{0, 1, 9}}), InvalidArgument);
}

TEST(KvCache, SpecValidation) {
  const KvCacheSpec good = small_spec(DType::kFp8E4M3, ScaleGranularity::kPerTensor);
  EXPECT_NO_THROW(good.validate());
  auto expect_bad = [](const KvCacheSpec& s, const char* argument) {
    testing::expect_invalid_argument([&] { s.validate(); }, argument);
  };
  KvCacheSpec s = good;
  s.block_size = 12;
  expect_bad(s, "block_size");
  s.block_size = 512;
  expect_bad(s, "block_size");
  s.block_size = 4;
  expect_bad(s, "block_size");
  s = good;
  s.head_dim = 100;
  expect_bad(s, "head_dim");
  s = good;
  s.num_blocks = 0;
  expect_bad(s, "num_blocks");
  s = good;
  s.num_layers = 0;
  expect_bad(s, "num_layers");
  s = good;
  s.num_kv_heads = -1;
  expect_bad(s, "num_kv_heads");
  s = good;
  s.dtype = DType::kFloat32;
  expect_bad(s, "kv_cache_dtype");
  EXPECT_THROW(KvCache{s}, InvalidArgument);
}

TEST(KvCache, PagedLayerValidationNamesTheMissingPointer) {
  KvCache cache(small_spec(DType::kFp8E4M3, ScaleGranularity::kPerTensor));
  PagedKvLayer l = cache.layer(0);
  l.v_scale = nullptr;
  testing::expect_invalid_argument([&] { l.validate("cache"); }, "cache.v_scale");
  l = cache.layer(0);
  l.granularity = ScaleGranularity::kPerToken;
  EXPECT_THROW(l.validate(), InvalidArgument);  // no token scale buffers
  l = cache.layer(0);
  l.k = nullptr;
  EXPECT_THROW(l.validate(), InvalidArgument);
}

TEST(PagedLayout, StorageChoosesTheSubBlockSize) {
  EXPECT_EQ(paged_layout(DType::kFp8E4M3, 8, 64, 128).sub_block_size, 16);
  EXPECT_EQ(paged_layout(DType::kFp8E5M2, 8, 256, 128).sub_block_size, 16);
  EXPECT_EQ(paged_layout(DType::kFp8E4M3, 8, 16, 128).sub_block_size, 16);
  EXPECT_EQ(paged_layout(DType::kFp8E4M3, 8, 8, 128).sub_block_size, 8);
  EXPECT_EQ(paged_layout(DType::kBFloat16, 8, 64, 128).sub_block_size, 64);
  EXPECT_EQ(paged_layout(DType::kFloat16, 8, 256, 64).sub_block_size, 256);
  KvCacheSpec s = small_spec(DType::kFp8E4M3, ScaleGranularity::kPerTensor);
  s.block_size = 128;
  EXPECT_EQ(s.layout().sub_block_size, 16);
  s.dtype = DType::kBFloat16;
  EXPECT_EQ(s.layout().sub_block_size, 128);
}

// token_offset() against the documented array k[block][sub-block][head][token in sub-block][d],
// computed the plain way, and every (block, head, position) row owning its own head_dim elements.
TEST(PagedLayout, TokenOffsetIsTheDocumentedArrayAndABijection) {
  for (int block_size : {8, 16, 32, 64, 256}) {
    for (int sub : {block_size, 16, 32}) {
      if (sub > block_size || (sub < 16 && sub != block_size)) continue;
      const PagedLayout l{3, static_cast<int16_t>(block_size), static_cast<int16_t>(sub), 32};
      const int64_t blocks = 3;
      std::vector<int> owner(static_cast<size_t>(blocks * l.block_elements()), -1);
      for (int64_t b = 0; b < blocks; ++b) {
        for (int h = 0; h < l.num_kv_heads; ++h) {
          for (int p = 0; p < block_size; ++p) {
            const int64_t plain =
                (((b * (block_size / sub) + p / sub) * l.num_kv_heads + h) * sub + p % sub) * l.head_dim;
            ASSERT_EQ(l.token_offset(b, h, p), plain) << "bs " << block_size << " sub " << sub;
            ASSERT_EQ(l.element_offset(b, h, p, 5), plain + 5);
            ASSERT_EQ(l.token_scale_offset(b, h, p) * l.head_dim, plain) << "scales follow the pools' order";
            for (int c = 0; c < l.head_dim; ++c) {
              int& o = owner[static_cast<size_t>(plain + c)];
              ASSERT_EQ(o, -1) << "two rows share an element";
              o = static_cast<int>((b * l.num_kv_heads + h) * block_size + p);
            }
          }
        }
      }
      for (int o : owner) ASSERT_NE(o, -1) << "an element no row owns";
    }
  }
}

TEST(PagedLayout, ValidationNamesABadSubBlockSize) {
  KvCache cache(small_spec(DType::kFp8E4M3, ScaleGranularity::kPerTensor));
  PagedKvLayer l = cache.layer(0);
  for (int bad : {0, 4, 3, 16}) {  // block size 8: only 8 is allowed
    l.layout.sub_block_size = static_cast<int16_t>(bad);
    testing::expect_invalid_argument([&] { l.validate("cache"); }, "cache.sub_block_size");
  }
  l.layout.block_size = 64;
  for (int bad : {8, 32, 64, 128}) {  // FP8 at block size 64: 16 only
    l.layout.sub_block_size = static_cast<int16_t>(bad);
    testing::expect_invalid_argument([&] { l.validate("cache"); }, "cache.sub_block_size", {"16", "fp8_e4m3"});
  }
  l.layout.sub_block_size = 16;
  EXPECT_NO_THROW(l.validate("cache"));
  l.dtype = DType::kBFloat16;  // 16-bit storage: the whole block
  testing::expect_invalid_argument([&] { l.validate("cache"); }, "cache.sub_block_size", {"64"});
  l.layout.sub_block_size = 64;
  EXPECT_NO_THROW(l.validate("cache"));
}

#if !defined(FP8KV_WITH_CUDA)
TEST(KvCache, DeviceMemoryNeedsACudaBuild) {
  EXPECT_THROW(KvCache(small_spec(DType::kFp8E4M3, ScaleGranularity::kPerTensor), Device::kCuda), Unsupported);
  EXPECT_THROW(Buffer(Device::kCuda, 16), Unsupported);
}
#endif

TEST(Buffer, HostBufferIsZeroedAndMovable) {
  Buffer a(Device::kCpu, 1024);
  ASSERT_NE(a.data(), nullptr);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(static_cast<const uint8_t*>(a.data())[i], 0);
  void* p = a.data();
  Buffer b(std::move(a));
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(a.data(), nullptr);
  EXPECT_EQ(a.size(), 0u);
  Buffer c;
  c = std::move(b);
  EXPECT_EQ(c.size(), 1024u);
  EXPECT_EQ(Buffer(Device::kCpu, 0).data(), nullptr);
}

}  // namespace
}  // namespace fp8kv

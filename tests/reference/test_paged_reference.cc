// The paged reference (cache write, decode, paged prefill) against dequantisation and naive
// attention written in this test from the documented layout (paged_cache.h), not through the
// library's offset helpers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/test_utils.h"
#include "fp8kv/kv_cache.h"
#include "fp8kv/reference.h"
#include "reference/reference_test_utils.h"

namespace fp8kv {
namespace {

using testing::TypedBuffer;

float softmax_scale(int d) { return static_cast<float>(1.0 / std::sqrt(d)); }

struct CacheCase {
  DType dtype;
  ScaleGranularity granularity;
  int hq, hkv, d, block_size;
};

std::string describe(const CacheCase& s) {
  return std::string(kv_cache_dtype_name(s.dtype)) + " " + scale_granularity_name(s.granularity) + " hq " +
         std::to_string(s.hq) + " hkv " + std::to_string(s.hkv) + " d " + std::to_string(s.d) + " bs " +
         std::to_string(s.block_size);
}

// A one-layer CPU cache holding several sequences whose blocks interleave (allocated round-robin
// a block at a time), written with reference::write_kv_cache from float32 K/V.
class PagedFixture {
 public:
  // power_of_two_scales: static scales rounded up to a power of two, so that stored * scale is
  // exact in float32 and a float32 copy of the dequantised cache carries exactly its values.
  PagedFixture(const CacheCase& s, const std::vector<int32_t>& lengths, uint64_t seed, float outlier_gain,
               bool power_of_two_scales = false)
      : s_(s), lengths_(lengths), cache_(spec(s, lengths)) {
    for (size_t b = 0; b < lengths.size(); ++b) {
      seqs_.push_back(cache_.allocator().create_sequence());
      k_.push_back(testing::random_normal(static_cast<size_t>(lengths[b]) * s.hkv * s.d, seed + 2 * b, 1.0f, s.d, 2,
                                          outlier_gain));
      v_.push_back(testing::random_normal(static_cast<size_t>(lengths[b]) * s.hkv * s.d, seed + 2 * b + 1));
    }
    calibrate(power_of_two_scales);
    std::vector<std::vector<int64_t>> slots(lengths.size());
    for (bool more = true; more;) {
      more = false;
      for (size_t b = 0; b < lengths.size(); ++b) {
        const int64_t have = static_cast<int64_t>(slots[b].size());
        const int64_t take = std::min<int64_t>(s.block_size, lengths[b] - have);
        if (take <= 0) continue;
        more = true;
        const AppendResult r = cache_.allocator().append_tokens(seqs_[b], take);
        slots[b].insert(slots[b].end(), r.slots.begin(), r.slots.end());
      }
    }
    for (size_t b = 0; b < lengths.size(); ++b) {
      if (lengths[b] == 0) continue;
      CacheWriteArgs w;
      w.key = TensorRef(k_[b].data(), DType::kFloat32, {lengths[b], s.hkv, s.d});
      w.value = TensorRef(v_[b].data(), DType::kFloat32, {lengths[b], s.hkv, s.d});
      w.slot_mapping = TensorRef(slots[b].data(), DType::kInt64, {lengths[b]});
      w.cache = cache_.layer(0);
      reference::write_kv_cache(w);
    }
    max_blocks_ = 1;
    for (SequenceId id : seqs_) max_blocks_ = std::max<int64_t>(max_blocks_, cache_.allocator().block_table(id).size());
    tables_.assign(lengths.size() * static_cast<size_t>(max_blocks_), -1);  // padding past each table
    for (size_t b = 0; b < lengths.size(); ++b) {
      const auto& t = cache_.allocator().block_table(seqs_[b]);
      std::copy(t.begin(), t.end(), tables_.begin() + static_cast<int64_t>(b) * max_blocks_);
    }
  }

  static KvCacheSpec spec(const CacheCase& s, const std::vector<int32_t>& lengths) {
    KvCacheSpec spec;
    spec.num_layers = 1;
    spec.num_kv_heads = s.hkv;
    spec.head_dim = s.d;
    spec.block_size = s.block_size;
    spec.num_blocks = 2;
    for (int32_t len : lengths) spec.num_blocks += (len + s.block_size - 1) / s.block_size;
    spec.dtype = s.dtype;
    spec.granularity = s.granularity;
    return spec;
  }

  // Static scales from the data's amax (per tensor or per KV head).
  void calibrate(bool power_of_two) {
    const int64_t count = static_scale_count(s_.dtype, s_.granularity, s_.hkv);
    if (count == 0) return;
    std::vector<float> ks(static_cast<size_t>(count), 0.0f), vs(static_cast<size_t>(count), 0.0f);
    for (size_t b = 0; b < k_.size(); ++b) {
      for (size_t i = 0; i < k_[b].size(); ++i) {
        const size_t h = count == 1 ? 0 : (i / static_cast<size_t>(s_.d)) % static_cast<size_t>(s_.hkv);
        ks[h] = std::max(ks[h], std::fabs(k_[b][i]));
        vs[h] = std::max(vs[h], std::fabs(v_[b][i]));
      }
    }
    for (auto* x : {&ks, &vs}) {
      for (float& a : *x) {
        a = scale_from_amax(a, fp8_max(s_.dtype));
        if (power_of_two) a = std::exp2(std::ceil(std::log2(a)));
      }
    }
    cache_.set_static_scales(0, ks.data(), vs.data(), count);
  }

  // Token j of sequence b, KV head h, dequantised, from the layout written in paged_cache.h:
  // k[num_blocks][block_size / sub][num_kv_heads][sub][head_dim] with sub = block_size for 16-bit
  // storage and min(block_size, 16) for FP8; token scales [num_blocks][block_size / sub][heads][sub].
  std::vector<double> dequantised(size_t b, bool value) {
    const PagedKvLayer l = cache_.layer(0);
    const void* pool = value ? l.v : l.k;
    TypedBuffer view(std::vector<float>(), s_.dtype);
    const size_t pool_elems = static_cast<size_t>(l.num_blocks) * s_.hkv * s_.block_size * s_.d;
    view.bytes.assign(static_cast<const uint8_t*>(pool), static_cast<const uint8_t*>(pool) + pool_elems * dtype_size(s_.dtype));
    std::vector<double> out(static_cast<size_t>(lengths_[b]) * s_.hkv * s_.d);
    for (int64_t j = 0; j < lengths_[b]; ++j) {
      const int64_t block = tables_[b * static_cast<size_t>(max_blocks_) + static_cast<size_t>(j / s_.block_size)];
      const int64_t pos = j % s_.block_size;
      const int64_t sub = is_fp8(s_.dtype) ? std::min(s_.block_size, 16) : s_.block_size;
      for (int h = 0; h < s_.hkv; ++h) {
        double scale = 1.0;
        if (is_fp8(s_.dtype)) {
          if (s_.granularity == ScaleGranularity::kPerToken) {
            scale = (value ? l.v_token_scale : l.k_token_scale)[((block * (s_.block_size / sub) + pos / sub) * s_.hkv + h) * sub + pos % sub];
          } else {
            scale = (value ? l.v_scale : l.k_scale)[s_.granularity == ScaleGranularity::kPerHead ? h : 0];
          }
        }
        for (int c = 0; c < s_.d; ++c) {
          const size_t src = static_cast<size_t>(
              (((block * (s_.block_size / sub) + pos / sub) * s_.hkv + h) * sub + pos % sub) * s_.d + c);
          out[static_cast<size_t>((j * s_.hkv + h) * s_.d + c)] = view.get(src) * scale;
        }
      }
    }
    return out;
  }

  const CacheCase& setup() const { return s_; }
  KvCache& cache() { return cache_; }
  std::vector<int32_t>& tables() { return tables_; }
  int64_t max_blocks() const { return max_blocks_; }
  const std::vector<float>& k(size_t b) const { return k_[b]; }
  const std::vector<float>& v(size_t b) const { return v_[b]; }

 private:
  CacheCase s_;
  std::vector<int32_t> lengths_;
  KvCache cache_;
  std::vector<SequenceId> seqs_;
  std::vector<std::vector<float>> k_, v_;
  std::vector<int32_t> tables_;
  int64_t max_blocks_ = 1;
};

std::vector<double> widen(const std::vector<float>& x) { return std::vector<double>(x.begin(), x.end()); }

std::vector<CacheCase> cache_cases() {
  std::vector<CacheCase> all;
  for (DType dtype : {DType::kBFloat16, DType::kFloat16, DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (auto g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead, ScaleGranularity::kPerToken}) {
      if (!is_fp8(dtype) && g != ScaleGranularity::kPerTensor) continue;
      all.push_back(CacheCase{dtype, g, 8, 2, 128, 16});
    }
  }
  for (auto [hq, hkv] : {std::pair{4, 4}, std::pair{8, 1}}) {
    all.push_back(CacheCase{DType::kFp8E4M3, ScaleGranularity::kPerToken, hq, hkv, 128, 16});
  }
  for (int d : {64, 256}) all.push_back(CacheCase{DType::kFp8E4M3, ScaleGranularity::kPerHead, 8, 2, d, 16});
  all.push_back(CacheCase{DType::kFp8E5M2, ScaleGranularity::kPerToken, 8, 2, 128, 64});
  return all;
}

std::vector<int32_t> lengths_for(int block_size) {
  // Zero keys, one, a block minus one, a block, a block plus one, and long ones.
  return {0, 1, block_size - 1, block_size, block_size + 1, 300, 2049};
}

TEST(PagedDecodeReference, MatchesNaiveOnTheStoredValues) {
  for (const CacheCase& s : cache_cases()) {
    for (float gain : {1.0f, 20.0f}) {
      const uint64_t seed = testing::test_seed();
      const auto lengths = lengths_for(s.block_size);
      PagedFixture f(s, lengths, seed, gain);
      const int64_t batch = static_cast<int64_t>(lengths.size());
      std::vector<float> q = testing::random_normal(static_cast<size_t>(batch) * s.hq * s.d, seed + 1000);
      TypedBuffer out(std::vector<float>(q.size()), DType::kFloat32);
      out.poison();
      std::vector<int32_t> lens = lengths;
      DecodeArgs a;
      a.q = TensorRef(q.data(), DType::kFloat32, {batch, s.hq, s.d});
      a.cache = f.cache().layer(0);
      a.block_tables = TensorRef(f.tables().data(), DType::kInt32, {batch, f.max_blocks()});
      a.seq_lens = TensorRef(lens.data(), DType::kInt32, {batch});
      a.out = TensorRef(out.data(), DType::kFloat32, {batch, s.hq, s.d});
      a.softmax_scale = softmax_scale(s.d);
      reference::paged_decode(a);
      const auto got = out.values();
      std::vector<double> stored_err, exact_ref, got_all;
      for (size_t b = 0; b < lengths.size(); ++b) {
        const std::vector<double> qb(q.begin() + static_cast<int64_t>(b) * s.hq * s.d,
                                     q.begin() + static_cast<int64_t>(b + 1) * s.hq * s.d);
        const std::vector<double> gb(got.begin() + static_cast<int64_t>(b) * s.hq * s.d,
                                     got.begin() + static_cast<int64_t>(b + 1) * s.hq * s.d);
        const auto want = testing::naive_attention(qb, f.dequantised(b, false), f.dequantised(b, true), 1, lengths[b],
                                                   s.hq, s.hkv, s.d, a.softmax_scale, false);
        EXPECT_TRUE(testing::all_within_ulps(gb, want, 23, 1.0, testing::float64_order_slack(f.dequantised(b, true))))
            << describe(s) << " length " << lengths[b] << " seed " << seed;
        const auto exact = testing::naive_attention(qb, widen(f.k(b)), widen(f.v(b)), 1, lengths[b], s.hq, s.hkv, s.d,
                                                    a.softmax_scale, false);
        exact_ref.insert(exact_ref.end(), exact.begin(), exact.end());
        got_all.insert(got_all.end(), gb.begin(), gb.end());
      }
      // Within the storage format's error on outlier-free keys (see test_prefill_reference.cc).
      if (gain == 1.0f) {
        const double u = std::ldexp(1.0, -(testing::mantissa_bits(s.dtype) + 1));
        EXPECT_LE(testing::relative_l2_error(got_all, exact_ref), u) << describe(s) << " seed " << seed;
      }
    }
  }
}

TEST(PagedPrefillReference, EqualsDensePrefillOnTheSameData) {
  // Chunked prefill: `prefix` cached tokens, then `fresh` new ones (already written) that query.
  const std::vector<int32_t> prefix{0, 15, 16, 17, 100, 0}, fresh{1, 16, 33, 1, 20, 40};
  std::vector<int32_t> total(prefix.size());
  for (size_t b = 0; b < prefix.size(); ++b) total[b] = prefix[b] + fresh[b];
  for (const CacheCase& s : {CacheCase{DType::kBFloat16, ScaleGranularity::kPerTensor, 8, 2, 128, 16},
                         CacheCase{DType::kFp8E4M3, ScaleGranularity::kPerTensor, 8, 2, 128, 16},
                         CacheCase{DType::kFp8E5M2, ScaleGranularity::kPerTensor, 4, 4, 64, 32},
                         CacheCase{DType::kFp8E4M3, ScaleGranularity::kPerToken, 8, 1, 128, 16}}) {
    const uint64_t seed = testing::test_seed();
    PagedFixture f(s, total, seed, 20.0f, true);
    const int64_t batch = static_cast<int64_t>(total.size());
    std::vector<int32_t> cu_q{0}, cu_k{0};
    for (size_t b = 0; b < total.size(); ++b) {
      cu_q.push_back(cu_q.back() + fresh[b]);
      cu_k.push_back(cu_k.back() + total[b]);
    }
    std::vector<float> q = testing::random_normal(static_cast<size_t>(cu_q.back()) * s.hq * s.d, seed + 77);
    TypedBuffer paged_out(std::vector<float>(q.size()), DType::kFloat32), dense_out = paged_out;
    paged_out.poison();
    dense_out.poison();
    std::vector<int32_t> lens = total;
    PagedPrefillArgs pa;
    pa.q = TensorRef(q.data(), DType::kFloat32, {cu_q.back(), s.hq, s.d});
    pa.cache = f.cache().layer(0);
    pa.block_tables = TensorRef(f.tables().data(), DType::kInt32, {batch, f.max_blocks()});
    pa.cu_seqlens_q = TensorRef(cu_q.data(), DType::kInt32, {batch + 1});
    pa.seq_lens = TensorRef(lens.data(), DType::kInt32, {batch});
    pa.out = TensorRef(paged_out.data(), DType::kFloat32, {cu_q.back(), s.hq, s.d});
    pa.softmax_scale = softmax_scale(s.d);
    reference::paged_prefill(pa);

    // The same keys as a dense float32 tensor. With 16-bit storage or power-of-two per-tensor
    // scales it holds exactly the values the paged path reads, so the two must agree bit for
    // bit; per-token FP8 is compared with the naive attention instead.
    std::vector<double> k_all, v_all;
    for (size_t b = 0; b < total.size(); ++b) {
      const auto kb = f.dequantised(b, false), vb = f.dequantised(b, true);
      k_all.insert(k_all.end(), kb.begin(), kb.end());
      v_all.insert(v_all.end(), vb.begin(), vb.end());
    }
    if (s.granularity == ScaleGranularity::kPerToken) {
      std::vector<double> want;
      for (size_t b = 0; b < total.size(); ++b) {
        const std::vector<double> qb(q.begin() + cu_q[b] * s.hq * s.d, q.begin() + cu_q[b + 1] * s.hq * s.d);
        const auto o = testing::naive_attention(qb, f.dequantised(b, false), f.dequantised(b, true), fresh[b], total[b],
                                                s.hq, s.hkv, s.d, pa.softmax_scale, true);
        want.insert(want.end(), o.begin(), o.end());
      }
      EXPECT_TRUE(testing::all_within_ulps(paged_out.values(), want, 23, 1.0, testing::float64_order_slack(v_all)))
          << describe(s) << " seed " << seed;
      continue;
    }
    std::vector<float> kf(k_all.begin(), k_all.end()), vf(v_all.begin(), v_all.end());
    for (size_t i = 0; i < kf.size(); ++i) {
      ASSERT_EQ(static_cast<double>(kf[i]), k_all[i]) << "dequantised key not exact in float";
      ASSERT_EQ(static_cast<double>(vf[i]), v_all[i]);
    }
    PrefillArgs da;
    da.q = pa.q;
    da.k = TensorRef(kf.data(), DType::kFloat32, {cu_k.back(), s.hkv, s.d});
    da.v = TensorRef(vf.data(), DType::kFloat32, {cu_k.back(), s.hkv, s.d});
    da.cu_seqlens_q = pa.cu_seqlens_q;
    da.cu_seqlens_k = TensorRef(cu_k.data(), DType::kInt32, {batch + 1});
    da.out = TensorRef(dense_out.data(), DType::kFloat32, {cu_q.back(), s.hq, s.d});
    da.softmax_scale = pa.softmax_scale;
    da.causal = true;
    reference::prefill(da);
    EXPECT_EQ(std::memcmp(paged_out.data(), dense_out.data(), paged_out.bytes.size()), 0) << describe(s) << " seed " << seed;
    EXPECT_TRUE(testing::all_within_ulps(paged_out.values(), dense_out.values(), 23, 0.0, 0.0));
  }
}

}  // namespace
}  // namespace fp8kv

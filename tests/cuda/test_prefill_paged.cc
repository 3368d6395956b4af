// cuda::paged_prefill (chunked prefill / prefix reuse over the FP8 paged cache) against
// reference::paged_prefill, and cuda::rope_quantize against the reference's RoPE + quantisation.
// The cache is written on the host by reference::write_kv_cache (shuffled blocks, partial last
// pages), uploaded, and read by both. Error bound as in test_prefill_common.h: at most
// kErrorFactor times a naive implementation that rounds P to E4M3, plus kErrorFloor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

#include "common/expect_error.h"
#include "cuda/test_prefill_common.h"
#include "fp8kv/error.h"

namespace fp8kv::testing {
namespace {

struct PagedProblem {
  int hq, hk, d, block_size;
  ScaleGranularity granularity;
  std::vector<int> lens_q, seq_lens;
  int64_t num_blocks = 0;
  int max_blocks = 0;
  std::vector<int32_t> table;                       // [batch, max_blocks]
  std::vector<uint8_t> k_pool, v_pool;              // E4M3 codes
  std::vector<float> k_tok, v_tok, k_static, v_static;
  std::vector<uint8_t> q;                           // E4M3 [total_q, hq, d]
  std::vector<float> q_ds;                          // [hk]
  std::vector<int32_t> cu_q;
  float softmax_scale;

  PagedKvLayer layer(void* k, void* v, float* kt, float* vt, const float* ks, const float* vs, Device dev) const {
    PagedKvLayer c;
    c.layout = paged_layout(DType::kFp8E4M3, hk, block_size, d);
    c.num_blocks = num_blocks;
    c.dtype = DType::kFp8E4M3;
    c.granularity = granularity;
    c.device = dev;
    c.k = k;
    c.v = v;
    if (granularity == ScaleGranularity::kPerToken) {
      c.k_token_scale = kt;
      c.v_token_scale = vt;
    } else {
      c.k_scale = ks;
      c.v_scale = vs;
    }
    return c;
  }
};

PagedProblem make_paged(const std::vector<int>& lens_q, const std::vector<int>& seq_lens, int hq, int hk, int d,
                        int block_size, ScaleGranularity g, uint64_t seed) {
  PagedProblem p{hq, hk, d, block_size, g, lens_q, seq_lens};
  const int batch = static_cast<int>(lens_q.size());
  for (int l : seq_lens) p.max_blocks = std::max(p.max_blocks, (l + block_size - 1) / block_size);
  p.max_blocks += 1;  // an unused entry per row: the kernel must never read past a sequence's pages
  p.num_blocks = static_cast<int64_t>(batch) * p.max_blocks + 3;
  std::vector<int32_t> ids(static_cast<size_t>(p.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), std::mt19937_64(seed));
  p.table.assign(static_cast<size_t>(batch * p.max_blocks), -1);
  size_t next = 0;
  std::vector<int64_t> slots;
  for (int b = 0; b < batch; ++b) {
    const int pages = (seq_lens[static_cast<size_t>(b)] + block_size - 1) / block_size;
    for (int i = 0; i < pages; ++i) p.table[static_cast<size_t>(b * p.max_blocks + i)] = ids[next++];
    for (int t = 0; t < seq_lens[static_cast<size_t>(b)]; ++t) {
      slots.push_back(static_cast<int64_t>(p.table[static_cast<size_t>(b * p.max_blocks + t / block_size)]) * block_size +
                      t % block_size);
    }
  }
  const int64_t tokens = static_cast<int64_t>(slots.size());
  const size_t pool = static_cast<size_t>(p.num_blocks * hk * block_size * d);
  p.k_pool.assign(pool, 0);
  p.v_pool.assign(pool, 0);
  p.k_tok.assign(static_cast<size_t>(p.num_blocks * hk * block_size), 1.0f);
  p.v_tok = p.k_tok;
  std::vector<float> kf = random_normal(static_cast<size_t>(tokens * hk * d), seed + 1, 1.0f, d, 2, 10.0f);
  std::vector<float> vf = random_normal(static_cast<size_t>(tokens * hk * d), seed + 2);
  // Static scales from the data's amax (per tensor or per head).
  const int groups = g == ScaleGranularity::kPerHead ? hk : 1;
  quantize_e4m3(kf, hk, d, groups, p.k_static);
  quantize_e4m3(vf, hk, d, groups, p.v_static);
  PagedKvLayer cache = p.layer(p.k_pool.data(), p.v_pool.data(), p.k_tok.data(), p.v_tok.data(), p.k_static.data(),
                               p.v_static.data(), Device::kCpu);
  CacheWriteArgs w;
  w.key = TensorRef(kf.data(), DType::kFloat32, {tokens, hk, d});
  w.value = TensorRef(vf.data(), DType::kFloat32, {tokens, hk, d});
  w.slot_mapping = TensorRef(slots.data(), DType::kInt64, {tokens});
  w.cache = cache;
  reference::write_kv_cache(w);

  p.cu_q = cumulative(lens_q);
  const std::vector<float> qf = random_normal(static_cast<size_t>(p.cu_q.back()) * hq * d, seed + 3);
  const std::vector<Fp8E4M3> qc = quantize_e4m3(qf, hq, d, hk, p.q_ds);
  p.q.resize(qc.size());
  for (size_t i = 0; i < qc.size(); ++i) p.q[i] = qc[i].bits;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  return p;
}

PagedPrefillArgs paged_args(const PagedProblem& p, const PagedKvLayer& cache, void* q, void* table, void* cu,
                            void* lens, void* out, void* q_ds, Device dev, DType out_dtype) {
  PagedPrefillArgs a;
  const int64_t total_q = p.cu_q.back(), batch = static_cast<int64_t>(p.lens_q.size());
  a.q = TensorRef(q, DType::kFp8E4M3, {total_q, p.hq, p.d}, dev);
  a.cache = cache;
  a.block_tables = TensorRef(table, DType::kInt32, {batch, p.max_blocks}, dev);
  a.cu_seqlens_q = TensorRef(cu, DType::kInt32, {batch + 1}, dev);
  a.seq_lens = TensorRef(lens, DType::kInt32, {batch}, dev);
  a.out = TensorRef(out, out_dtype, {total_q, p.hq, p.d}, dev);
  a.softmax_scale = p.softmax_scale;
  a.q_descale = TensorRef(q_ds, DType::kFloat32, {p.hk}, dev);
  return a;
}

// Naive same-precision paged attention, float64 except for what the kernel must round: P to E4M3
// and the output to bf16. With per-token V scales P is rounded the way the kernel must round it,
// as P[j] * v_scale[j] / (max of v_scale over the row's visible keys in j's 128-key tile), since
// folding the scales into P pushes small probabilities further into E4M3's subnormal range.
std::vector<float> naive_paged(const PagedProblem& p) {
  const PagedLayout layout = paged_layout(DType::kFp8E4M3, p.hk, p.block_size, p.d);
  std::vector<float> out(static_cast<size_t>(p.cu_q.back()) * p.hq * p.d);
  const int group = p.hq / p.hk;
  parallel_items(static_cast<int64_t>(p.cu_q.back()) * p.hq, [&](int64_t item) {
    const int64_t row = item / p.hq;
    const int h = static_cast<int>(item % p.hq);
    const int b = static_cast<int>(std::upper_bound(p.cu_q.begin(), p.cu_q.end(), row) - p.cu_q.begin()) - 1;
    const int len_q = p.lens_q[static_cast<size_t>(b)], len = p.seq_lens[static_cast<size_t>(b)];
    const int visible = static_cast<int>(row - p.cu_q[static_cast<size_t>(b)]) + (len - len_q) + 1;
    const int kvh = h / group;
    auto scale_of = [&](const std::vector<float>& tok, const std::vector<float>& st, int64_t block, int pos) {
      return stored_scale(p.granularity, st.data(), tok.data(), layout, block, kvh, pos);
    };
    std::vector<double> s(static_cast<size_t>(visible)), o(static_cast<size_t>(p.d), 0.0);
    double m = -INFINITY;
    const double qs = p.q_ds[static_cast<size_t>(kvh)];
    for (int j = 0; j < visible; ++j) {
      const int64_t block = p.table[static_cast<size_t>(b * p.max_blocks + j / p.block_size)];
      const int pos = j % p.block_size;
      const double ks = scale_of(p.k_tok, p.k_static, block, pos);
      double dot = 0.0;
      for (int c = 0; c < p.d; ++c) {
        dot += Fp8E4M3{p.q[static_cast<size_t>((row * p.hq + h) * p.d + c)]}.to_float() * qs *
               Fp8E4M3{p.k_pool[static_cast<size_t>(layout.element_offset(block, kvh, pos, c))]}.to_float() * ks;
      }
      s[static_cast<size_t>(j)] = dot * p.softmax_scale;
      m = std::max(m, s[static_cast<size_t>(j)]);
    }
    constexpr int kTile = 128;  // the kernel's kBlockN
    auto v_scale_at = [&](int j) {
      const int64_t block = p.table[static_cast<size_t>(b * p.max_blocks + j / p.block_size)];
      return static_cast<double>(scale_of(p.v_tok, p.v_static, block, j % p.block_size));
    };
    const bool per_token = p.granularity == ScaleGranularity::kPerToken;
    double l = 0.0;
    for (int j = 0; j < visible; ++j) {
      const int64_t block = p.table[static_cast<size_t>(b * p.max_blocks + j / p.block_size)];
      const int pos = j % p.block_size;
      const double pr = std::exp(s[static_cast<size_t>(j)] - m);
      l += pr;
      const double vs = scale_of(p.v_tok, p.v_static, block, pos);
      double pq = Fp8E4M3::from_float(static_cast<float>(pr)).to_float();
      if (per_token) {
        double tile_max = 0.0;
        for (int t = j / kTile * kTile; t < std::min(visible, (j / kTile + 1) * kTile); ++t) tile_max = std::max(tile_max, v_scale_at(t));
        pq = Fp8E4M3::from_float(static_cast<float>(pr * vs / tile_max)).to_float() * tile_max / vs;
      }
      for (int c = 0; c < p.d; ++c) {
        o[static_cast<size_t>(c)] += pq * Fp8E4M3{p.v_pool[static_cast<size_t>(layout.element_offset(block, kvh, pos, c))]}.to_float() * vs;
      }
    }
    for (int c = 0; c < p.d; ++c) {
      out[static_cast<size_t>(item * p.d + c)] = Bf16::from_float(static_cast<float>(o[static_cast<size_t>(c)] / l)).to_float();
    }
  });
  return out;
}

ErrorReport check_paged(const PagedProblem& p, const cuda::PrefillOptions& options = {}) {
  // CPU reference on the host copy.
  const int64_t total_q = p.cu_q.back();
  std::vector<uint8_t> q = p.q, kp = p.k_pool, vp = p.v_pool;
  std::vector<float> kt = p.k_tok, vt = p.v_tok, ks = p.k_static, vs = p.v_static, qds = p.q_ds;
  std::vector<int32_t> table = p.table, cu = p.cu_q, lens(p.seq_lens.begin(), p.seq_lens.end());
  std::vector<float> ref(static_cast<size_t>(total_q) * p.hq * p.d);
  reference::paged_prefill(paged_args(p, p.layer(kp.data(), vp.data(), kt.data(), vt.data(), ks.data(), vs.data(), Device::kCpu),
                                      q.data(), table.data(), cu.data(), lens.data(), ref.data(), qds.data(), Device::kCpu,
                                      DType::kFloat32));
  // The same on the GPU.
  DeviceBuffer<uint8_t> dq(q), dkp(kp), dvp(vp);
  DeviceBuffer<float> dkt(kt), dvt(vt), dks(ks), dvs(vs), dqds(qds);
  DeviceBuffer<int32_t> dtable(table), dcu(cu), dlens(lens);
  DeviceBuffer<Bf16> dout(static_cast<size_t>(total_q) * p.hq * p.d);
  dout.poison();
  cuda::paged_prefill(paged_args(p, p.layer(dkp.get(), dvp.get(), dkt.get(), dvt.get(), dks.get(), dvs.get(), Device::kCuda),
                                 dq.get(), dtable.get(), dcu.get(), dlens.get(), dout.get(), dqds.get(), Device::kCuda,
                                 DType::kBFloat16),
                      options);
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> gpu = convert_to_float(dout.download());
  ErrorReport e;
  e.nan = count_nan(gpu);
  e.gpu = relative_l2_error(gpu, ref);
  e.naive = relative_l2_error(naive_paged(p), ref);
  return e;
}

TEST(CudaPagedPrefill, ChunkedPrefillOverFp8Pages) {
  FP8KV_REQUIRE_GPU();
  // New tokens (lens_q) at the end of sequences whose earlier tokens are a cached prefix.
  const std::vector<int> lens_q = {1, 63, 200, 129, 64, 300};
  const std::vector<int> seq_lens = {1, 100, 1000, 129, 577, 300};
  for (ScaleGranularity g : {ScaleGranularity::kPerTensor, ScaleGranularity::kPerHead, ScaleGranularity::kPerToken}) {
    for (int block_size : {16, 64, 128, 256}) {
      for (int d : {64, 128}) {
        SCOPED_TRACE(::testing::Message() << scale_granularity_name(g) << " block_size=" << block_size << " d=" << d);
        const PagedProblem p = make_paged(lens_q, seq_lens, 8, 2, d, block_size, g, test_seed());
        const ErrorReport e = check_paged(p);
        std::printf("[paged prefill] %s bs=%d d=%d: rel err %.3e (naive %.3e)\n", scale_granularity_name(g), block_size,
                    d, e.gpu, e.naive);
        expect_within_bound(e);
      }
    }
  }
}

TEST(CudaPagedPrefill, GqaRatiosAndLongPrefix) {
  FP8KV_REQUIRE_GPU();
  for (int ratio : {1, 2, 4, 8}) {
    SCOPED_TRACE(::testing::Message() << "gqa " << ratio);
    const PagedProblem p = make_paged({256, 33}, {4096, 2000}, 2 * ratio, 2, 128, 16, ScaleGranularity::kPerToken, test_seed());
    const ErrorReport e = check_paged(p);
    std::printf("[paged prefill] gqa=%d long prefix: rel err %.3e (naive %.3e)\n", ratio, e.gpu, e.naive);
    expect_within_bound(e);
  }
}

// 256-key and 192-row tiles exist for dense prefill only: asking paged_prefill for them is an
// error, not a silent 128.
TEST(CudaPagedPrefill, RejectsWideKeyTiles) {
  FP8KV_REQUIRE_GPU();
  const PagedProblem p = make_paged({17}, {300}, 4, 2, 128, 16, ScaleGranularity::kPerTensor, test_seed());
  expect_invalid_argument([&] { check_paged(p, tile_options(0, 256)); }, "key_tile");
  expect_invalid_argument([&] { check_paged(p, tile_options(192, 0)); }, "query_tile");
}

// rope_quantize: Q codes and scales vs the reference's RoPE + per-group quantisation (exact up to
// one code where the float RoPE rounding of the GPU and host differ, which they must not), and the
// K/V cache bytes vs reference::write_kv_cache (bit-exact).
TEST(CudaRopeQuantize, MatchesReferenceRopeQuantizeAndCacheWrite) {
  FP8KV_REQUIRE_GPU();
  const int tokens = 77, hq = 8, hk = 2, d = 128, block_size = 16, max_pos = 4096;
  RopeConfig rc;
  rc.theta = 1e6;
  rc.rotary_dim = d;
  std::vector<float> table = build_rope_table(rc, max_pos);
  const uint64_t seed = test_seed();
  const std::vector<float> qf = random_normal(static_cast<size_t>(tokens * hq * d), seed);
  const std::vector<float> kf = random_normal(static_cast<size_t>(tokens * hk * d), seed + 1, 1.0f, d, 2, 10.0f);
  const std::vector<float> vf = random_normal(static_cast<size_t>(tokens * hk * d), seed + 2);
  std::vector<Bf16> qb = convert_from_float<Bf16>(qf), kb = convert_from_float<Bf16>(kf), vb = convert_from_float<Bf16>(vf);
  std::vector<int32_t> positions(tokens);
  std::vector<int64_t> slots(tokens);
  for (int t = 0; t < tokens; ++t) {
    positions[static_cast<size_t>(t)] = 1000 + 3 * t;
    slots[static_cast<size_t>(t)] = t == 5 ? -1 : (t * 7) % (8 * block_size);  // one padding token
  }
  const int64_t num_blocks = 8;
  const size_t pool = static_cast<size_t>(num_blocks * hk * block_size * d);
  const size_t tok = static_cast<size_t>(num_blocks * hk * block_size);

  // Host: reference RoPE on Q (in float), per-KV-group amax -> scale -> codes; reference cache write.
  std::vector<float> q_rot = convert_to_float(qb);
  reference::apply_rope(q_rot.data(), tokens, hq, d, positions.data(), table.data(), d);
  std::vector<float> q_scale_ref;
  const std::vector<Fp8E4M3> q_ref = quantize_e4m3(q_rot, hq, d, hk, q_scale_ref);
  std::vector<uint8_t> k_pool(pool, 0), v_pool(pool, 0);
  std::vector<float> k_tok(tok, 0.0f), v_tok(tok, 0.0f);
  PagedKvLayer host_cache;
  host_cache.layout = paged_layout(DType::kFp8E4M3, hk, block_size, d);
  host_cache.num_blocks = num_blocks;
  host_cache.dtype = DType::kFp8E4M3;
  host_cache.granularity = ScaleGranularity::kPerToken;
  host_cache.k = k_pool.data();
  host_cache.v = v_pool.data();
  host_cache.k_token_scale = k_tok.data();
  host_cache.v_token_scale = v_tok.data();
  CacheWriteArgs w;
  w.key = TensorRef(kb.data(), DType::kBFloat16, {tokens, hk, d});
  w.value = TensorRef(vb.data(), DType::kBFloat16, {tokens, hk, d});
  w.slot_mapping = TensorRef(slots.data(), DType::kInt64, {tokens});
  w.cache = host_cache;
  w.positions = TensorRef(positions.data(), DType::kInt32, {tokens});
  w.rope.cos_sin = TensorRef(table.data(), DType::kFloat32, {max_pos, d});
  reference::write_kv_cache(w);

  DeviceBuffer<Bf16> dq(qb), dk(kb), dv(vb);
  DeviceBuffer<int32_t> dpos(positions);
  DeviceBuffer<int64_t> dslots(slots);
  DeviceBuffer<float> dtable(table), dkt(tok), dvt(tok), dqs(static_cast<size_t>(hk));
  DeviceBuffer<uint8_t> dkp(pool), dvp(pool), dqo(static_cast<size_t>(tokens * hq * d));
  dkp.fill_bytes(0);
  dvp.fill_bytes(0);
  dkt.fill_bytes(0);
  dvt.fill_bytes(0);
  dqo.poison();
  cuda::RopeQuantizeArgs a;
  a.q = dq.tensor(DType::kBFloat16, {tokens, hq, d});
  a.k = dk.tensor(DType::kBFloat16, {tokens, hk, d});
  a.v = dv.tensor(DType::kBFloat16, {tokens, hk, d});
  a.positions = dpos.tensor(DType::kInt32, {tokens});
  a.rope.cos_sin = dtable.tensor(DType::kFloat32, {max_pos, d});
  a.slot_mapping = dslots.tensor(DType::kInt64, {tokens});
  a.cache = host_cache;
  a.cache.device = Device::kCuda;
  a.cache.k = dkp.get();
  a.cache.v = dvp.get();
  a.cache.k_token_scale = dkt.get();
  a.cache.v_token_scale = dvt.get();
  a.q_out = dqo.tensor(DType::kFp8E4M3, {tokens, hq, d});
  a.q_scale = dqs.tensor(DType::kFloat32, {hk});
  cuda::rope_quantize(a);
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());

  EXPECT_EQ(dkp.download(), k_pool) << "K cache bytes differ from reference::write_kv_cache";
  EXPECT_EQ(dvp.download(), v_pool) << "V cache bytes differ";
  EXPECT_EQ(dkt.download(), k_tok);
  EXPECT_EQ(dvt.download(), v_tok);
  const std::vector<float> q_scale = dqs.download();
  for (int g = 0; g < hk; ++g) EXPECT_EQ(q_scale[static_cast<size_t>(g)], q_scale_ref[static_cast<size_t>(g)]) << "group " << g;
  const std::vector<uint8_t> q_codes = dqo.download();
  size_t mismatches = 0;
  for (size_t i = 0; i < q_codes.size(); ++i) mismatches += q_codes[i] != q_ref[i].bits;
  EXPECT_EQ(mismatches, 0u) << "Q codes differ from reference RoPE + quantisation";
}

// With the Hadamard rotation, the quantised Q and K still give the same q.k (orthogonal
// transform) up to FP8 rounding, and K's per-token amax shrinks when it has outlier channels.
TEST(CudaRopeQuantize, HadamardPreservesDotProductsAndSpreadsOutliers) {
  FP8KV_REQUIRE_GPU();
  const int tokens = 64, heads = 2, d = 128;
  const uint64_t seed = test_seed();
  const std::vector<float> xf = random_normal(static_cast<size_t>(tokens * heads * d), seed, 1.0f, d, 2, 30.0f);
  std::vector<Bf16> xb = convert_from_float<Bf16>(xf);
  DeviceBuffer<Bf16> dx(xb);
  DeviceBuffer<uint8_t> plain(xb.size()), rotated(xb.size());
  DeviceBuffer<float> s_plain(1), s_rot(1);
  cuda::quantize_heads(dx.tensor(DType::kBFloat16, {tokens, heads, d}), plain.tensor(DType::kFp8E4M3, {tokens, heads, d}),
                       s_plain.tensor(DType::kFloat32, {1}), false, 0);
  cuda::quantize_heads(dx.tensor(DType::kBFloat16, {tokens, heads, d}), rotated.tensor(DType::kFp8E4M3, {tokens, heads, d}),
                       s_rot.tensor(DType::kFloat32, {1}), true, 1234);
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  const float sp = s_plain.download()[0], sr = s_rot.download()[0];
  EXPECT_LT(sr, sp * 0.5f) << "the rotation should shrink the amax of outlier-heavy rows";
  // Norms are preserved: ||H x|| = ||x||, up to FP8 rounding (relative 2^-4 per element).
  const std::vector<uint8_t> a = plain.download(), b = rotated.download();
  double na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = Fp8E4M3{a[i]}.to_float() * sp, y = Fp8E4M3{b[i]}.to_float() * sr;
    na += x * x;
    nb += y * y;
  }
  EXPECT_NEAR(std::sqrt(nb / na), 1.0, 0.02);
}

}  // namespace
}  // namespace fp8kv::testing

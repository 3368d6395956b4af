// The accuracy experiments of issue 4:
//   * FlashAttention-3's (paper, Table 3): Q, K, V ~ N(0,1) with 0.1% of entries from N(0,100),
//     RMSE of the output against float64 attention on the unquantised inputs, for BF16, FP8
//     per-tensor and FP8 with incoherent processing (random-sign Hadamard on Q and K), each with
//     and without two-level accumulation, pooled over kDraws fresh draws: one draw's RMSE depends
//     on where its few large outliers fall (H100, 2026-11-24: FP8 + incoherent 7.5e-3 to 9.4e-3,
//     FP8 per-tensor 1.5e-2 to 3.2e-2 over four draws, both around the paper's figures), so a
//     single draw passes or fails the bounds by chance. Bounds: the paper's figures (FP8
//     per-tensor 2.4e-2, FP8 + incoherent 9.1e-3) and BF16 below 2e-3.
//   * Long-context retrieval without a model: at 32k, 64k and 128k keys each query row has one
//     planted key whose logit is ln(keys) + 4 above the N(0,1) distractors (softmax weight ~0.98),
//     and the output must return that key's value: relative L2 error against the float64
//     reference on the same FP8 inputs at most 2e-2 with two-level accumulation.
// Numbers are printed and, when FP8KV_PREFILL_ACCURACY_JSON names a file, written there as JSON.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>

#include "cuda/test_prefill_common.h"

namespace fp8kv::testing {
namespace {

nlohmann::json& results() {
  static nlohmann::json j = nlohmann::json::object();
  return j;
}

void save_results() {
  const char* path = std::getenv("FP8KV_PREFILL_ACCURACY_JSON");
  if (path != nullptr) std::ofstream(path) << results().dump(2) << "\n";
}

// N(0,1) with a fraction `outliers` of entries drawn from N(0, 100) (standard deviation 10).
std::vector<float> fa3_inputs(size_t count, uint64_t seed, double outliers = 1e-3) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f), big(0.0f, 10.0f);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<float> x(count);
  for (auto& v : x) v = u(rng) < outliers ? big(rng) : normal(rng);
  return x;
}

// float64 reference (reference::prefill on float32 inputs) on the last `rows` query rows.
std::vector<float> exact_last_rows(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
                                   int len, int heads, int d, int rows) {
  std::vector<float> q_slice(q.end() - static_cast<int64_t>(rows) * heads * d, q.end());
  std::vector<float> kk = k, vv = v, out(q_slice.size());
  std::vector<int32_t> cu_q = {0, rows}, cu_k = {0, len};
  PrefillArgs a;
  a.q = TensorRef(q_slice.data(), DType::kFloat32, {rows, heads, d});
  a.k = TensorRef(kk.data(), DType::kFloat32, {len, heads, d});
  a.v = TensorRef(vv.data(), DType::kFloat32, {len, heads, d});
  a.cu_seqlens_q = TensorRef(cu_q.data(), DType::kInt32, {2});
  a.cu_seqlens_k = TensorRef(cu_k.data(), DType::kInt32, {2});
  a.out = TensorRef(out.data(), DType::kFloat32, {rows, heads, d});
  a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  a.causal = false;
  reference::prefill(a);
  return out;
}

double rmse(const std::vector<float>& a, const std::vector<float>& b) {
  return l2_error(a, b) / std::sqrt(static_cast<double>(a.size()));
}

// The RMSEs of one draw: BF16, FP8 per-tensor two-/one-level, FP8 incoherent two-/one-level.
struct Fa3Rmse {
  double bf16, fp8_two, fp8_one, inc_two, inc_one;
};

// The FP8 kernel a test runs: PrefillOptions' tile sizes (0 = chosen per launch; at these tests'
// sizes that is 128 x 128) and the query rows x keys they give.
struct Tiles {
  int query_tile, key_tile;
  const char* label;
  int query() const { return query_tile == 0 ? 128 : query_tile; }
  int key() const { return key_tile == 0 ? 128 : key_tile; }
  cuda::PrefillOptions options() const { return tile_options(query_tile, key_tile); }
};
constexpr Tiles kChosenTiles{0, 0, "chosen per launch (128 x 128)"};
constexpr Tiles kWideTiles{0, 256, "128 x 256"};
constexpr Tiles kRows192Tiles{192, 0, "192 x 128"};

Fa3Rmse fa3_experiment_draw(int len, int heads, int d, int rows, uint64_t seed, const Tiles& tiles) {
  const size_t n = static_cast<size_t>(len) * heads * d;
  const std::vector<float> q = fa3_inputs(n, seed), k = fa3_inputs(n, seed + 1), v = fa3_inputs(n, seed + 2);
  const std::vector<float> exact = exact_last_rows(q, k, v, len, heads, d, rows);

  DeviceBuffer<Bf16> qb(convert_from_float<Bf16>(q)), kb(convert_from_float<Bf16>(k)), vb(convert_from_float<Bf16>(v));
  DeviceBuffer<uint8_t> q8(n), k8(n), v8(n);
  DeviceBuffer<float> qs(1), ks(1), vs(1);
  DeviceBuffer<int32_t> cu(std::vector<int32_t>{0, len});
  DeviceBuffer<Bf16> out(n);
  auto run = [&](DType dtype, const cuda::PrefillOptions& options) {
    PrefillArgs a;
    const bool fp8 = dtype == DType::kFp8E4M3;
    a.q = fp8 ? q8.tensor(dtype, {len, heads, d}) : qb.tensor(dtype, {len, heads, d});
    a.k = fp8 ? k8.tensor(dtype, {len, heads, d}) : kb.tensor(dtype, {len, heads, d});
    a.v = fp8 ? v8.tensor(dtype, {len, heads, d}) : vb.tensor(dtype, {len, heads, d});
    if (fp8) {
      a.q_descale = qs.tensor(DType::kFloat32, {1});
      a.k_descale = ks.tensor(DType::kFloat32, {1});
      a.v_descale = vs.tensor(DType::kFloat32, {1});
    }
    a.cu_seqlens_q = cu.tensor(DType::kInt32, {2});
    a.cu_seqlens_k = a.cu_seqlens_q;
    a.out = out.tensor(DType::kBFloat16, {len, heads, d});
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
    a.causal = false;
    out.poison();
    cuda::prefill(a, options);
    FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> all = convert_to_float(out.download());
    EXPECT_EQ(count_nan(all), 0u);
    return rmse(std::vector<float>(all.end() - static_cast<int64_t>(exact.size()), all.end()), exact);
  };
  auto quantize = [&](bool incoherent) {
    const uint64_t hseed = 0xC0FFEEull;
    cuda::quantize_heads(qb.tensor(DType::kBFloat16, {len, heads, d}), q8.tensor(DType::kFp8E4M3, {len, heads, d}),
                         qs.tensor(DType::kFloat32, {1}), incoherent, hseed);
    cuda::quantize_heads(kb.tensor(DType::kBFloat16, {len, heads, d}), k8.tensor(DType::kFp8E4M3, {len, heads, d}),
                         ks.tensor(DType::kFloat32, {1}), incoherent, hseed);
    cuda::quantize_heads(vb.tensor(DType::kBFloat16, {len, heads, d}), v8.tensor(DType::kFp8E4M3, {len, heads, d}),
                         vs.tensor(DType::kFloat32, {1}), false, 0);
  };
  cuda::PrefillOptions two = tiles.options(), one = tiles.options();
  one.two_level_accumulation = false;
  Fa3Rmse r{};
  r.bf16 = run(DType::kBFloat16, {});
  quantize(false);
  r.fp8_two = run(DType::kFp8E4M3, two);
  r.fp8_one = run(DType::kFp8E4M3, one);
  quantize(true);
  r.inc_two = run(DType::kFp8E4M3, two);
  r.inc_one = run(DType::kFp8E4M3, one);
  return r;
}

// The experiment with the FP8 kernel of `tiles`, recorded under `name`.
void fa3_experiment(const Tiles& tiles, const char* name) {
  const int len = 4096, heads = 4, d = 128, rows = 256;
  // About 0.4 s a draw, mostly the float64 reference; 64 draws put the pooled RMSEs within a few
  // percent of their expectation.
  constexpr int kDraws = 64;
  // Pooled RMSE: every draw checks the same number of elements, so it is the root of the mean of
  // the draws' squared RMSEs.
  Fa3Rmse sq{};
  double inc_min = INFINITY, inc_max = 0.0, fp8_min = INFINITY, fp8_max = 0.0;
  for (int draw = 0; draw < kDraws; ++draw) {
    const Fa3Rmse r = fa3_experiment_draw(len, heads, d, rows, test_seed(), tiles);
    inc_min = std::min(inc_min, r.inc_two);
    inc_max = std::max(inc_max, r.inc_two);
    fp8_min = std::min(fp8_min, r.fp8_two);
    fp8_max = std::max(fp8_max, r.fp8_two);
    sq.bf16 += r.bf16 * r.bf16 / kDraws;
    sq.fp8_two += r.fp8_two * r.fp8_two / kDraws;
    sq.fp8_one += r.fp8_one * r.fp8_one / kDraws;
    sq.inc_two += r.inc_two * r.inc_two / kDraws;
    sq.inc_one += r.inc_one * r.inc_one / kDraws;
  }
  const double bf16 = std::sqrt(sq.bf16), fp8_two = std::sqrt(sq.fp8_two), fp8_one = std::sqrt(sq.fp8_one);
  const double inc_two = std::sqrt(sq.inc_two), inc_one = std::sqrt(sq.inc_one);
  std::printf("[accuracy] FA3 experiment, FP8 tiles %s (seq %d, %d heads, d %d, last %d rows, %d draws, pooled RMSE "
              "vs float64):\n"
              "  bf16                      %.3e\n"
              "  fp8 per-tensor, two-level %.3e   one-level %.3e   (FA3: 2.4e-2)\n"
              "  fp8 incoherent, two-level %.3e   one-level %.3e   (FA3: 9.1e-3)\n"
              "  single draws, two-level: per-tensor %.3e to %.3e, incoherent %.3e to %.3e\n",
              tiles.label, len, heads, d, rows, kDraws, bf16, fp8_two, fp8_one,
              inc_two, inc_one, fp8_min, fp8_max, inc_min, inc_max);
  results()[name] = {
      {"fp8_key_tile", tiles.key()}, {"fp8_query_tile", tiles.query()},
      {"seq", len}, {"heads", heads}, {"head_dim", d}, {"rows_checked", rows}, {"draws", kDraws},
      {"bf16_rmse", bf16},
      {"fp8_per_tensor_two_level_rmse", fp8_two}, {"fp8_per_tensor_one_level_rmse", fp8_one},
      {"fp8_incoherent_two_level_rmse", inc_two}, {"fp8_incoherent_one_level_rmse", inc_one},
      {"single_draw_two_level_rmse_range",
       {{"fp8_per_tensor", {fp8_min, fp8_max}}, {"fp8_incoherent", {inc_min, inc_max}}}},
      {"fa3_reference", {{"fp16", 1.9e-4}, {"fp8_per_tensor", 2.4e-2}, {"fp8_incoherent", 9.1e-3}}}};
  save_results();
  EXPECT_LT(bf16, 2e-3);
  EXPECT_LE(fp8_two, 2.4e-2);
  EXPECT_LE(inc_two, 9.1e-3) << "target: FP8 + incoherent processing at or below FlashAttention-3's 9.1e-3";
  EXPECT_LT(inc_two, fp8_two);
}

TEST(CudaPrefillAccuracy, FlashAttention3OutlierExperiment) {
  FP8KV_REQUIRE_GPU();
  fa3_experiment(kChosenTiles, "fa3_outlier_experiment");
}

// The same with the 128 x 256 kernel (its two-level fold is every 256 keys instead of every 512).
TEST(CudaPrefillAccuracy, FlashAttention3OutlierExperimentWideTiles) {
  FP8KV_REQUIRE_GPU();
  fa3_experiment(kWideTiles, "fa3_outlier_experiment_256_key_tiles");
}

// And with the 192 x 128 kernel, which prefill_tiles picks for long sequences with many heads (its
// two-level fold is every 128 keys).
TEST(CudaPrefillAccuracy, FlashAttention3OutlierExperiment192RowTiles) {
  FP8KV_REQUIRE_GPU();
  fa3_experiment(kRows192Tiles, "fa3_outlier_experiment_192_row_tiles");
}

// Retrieval with the FP8 kernel of `tiles`, recorded under `name`.
void long_context_retrieval(const Tiles& tiles, const char* name) {
  const int rows = 128, d = 128;
  nlohmann::json& out_json = results()[name];
  for (int keys : {512, 1024, 32768, 65536, 131072}) {
    const uint64_t seed = test_seed();
    std::mt19937_64 rng(seed);
    std::vector<float> q = random_normal(static_cast<size_t>(rows) * d, seed + 1);
    std::vector<float> k = random_normal(static_cast<size_t>(keys) * d, seed + 2);
    const std::vector<float> v = random_normal(static_cast<size_t>(keys) * d, seed + 3);
    // Row i's planted key sits at a random position; its logit q.k/sqrt(d) is ln(keys) + 4.
    std::vector<int> planted(rows);
    std::uniform_int_distribution<int> pos(0, keys - 1);
    for (int i = 0; i < rows; ++i) {
      int j;
      do {
        j = pos(rng);
      } while (std::find(planted.begin(), planted.begin() + i, j) != planted.begin() + i);
      planted[static_cast<size_t>(i)] = j;
      double qq = 0;
      for (int c = 0; c < d; ++c) qq += static_cast<double>(q[static_cast<size_t>(i * d + c)]) * q[static_cast<size_t>(i * d + c)];
      const double logit = std::log(static_cast<double>(keys)) + 4.0;
      for (int c = 0; c < d; ++c) {
        k[static_cast<size_t>(j) * d + static_cast<size_t>(c)] =
            static_cast<float>(q[static_cast<size_t>(i * d + c)] * logit * std::sqrt(static_cast<double>(d)) / qq);
      }
    }
    std::vector<float> qs, ks, vs;
    const std::vector<Fp8E4M3> q8 = quantize_e4m3(q, 1, d, 1, qs), k8 = quantize_e4m3(k, 1, d, 1, ks),
                               v8 = quantize_e4m3(v, 1, d, 1, vs);
    DenseProblem p;
    p.cu_q = {0, rows};
    p.cu_k = {0, keys};
    p.hq = p.hk = 1;
    p.d = d;
    p.causal = false;
    p.dtype = DType::kFp8E4M3;
    p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
    auto raw = [](const std::vector<Fp8E4M3>& c) {
      std::vector<uint8_t> r(c.size());
      for (size_t i = 0; i < c.size(); ++i) r[i] = c[i].bits;
      return r;
    };
    p.q = raw(q8);
    p.k = raw(k8);
    p.v = raw(v8);
    p.q_ds = qs;
    p.k_ds = ks;
    p.v_ds = vs;
    const RowSlice all = last_rows(p, 0);
    const std::vector<float> ref = reference_on_slice(p, all);
    nlohmann::json entry = {{"keys", keys}, {"rows", rows}, {"planted_logit_margin", 4.0}};
    // Two-level in every CTA, the default (one-level where a CTA reads at most 512 keys) and
    // one-level everywhere.
    struct Mode {
      const char* name;
      bool two_level;
      int one_level_max_keys;
    };
    const cuda::PrefillOptions defaults;
    double everywhere_err = 0;
    for (const Mode mode : {Mode{"two_level", true, 0}, Mode{"default", true, defaults.one_level_max_keys},
                            Mode{"one_level", false, defaults.one_level_max_keys}}) {
      cuda::PrefillOptions options = tiles.options();
      options.two_level_accumulation = mode.two_level;
      options.one_level_max_keys = mode.one_level_max_keys;
      const std::vector<float> gpu = run_dense_on_gpu(p, options);
      const double err = relative_l2_error(gpu, ref);
      // How much of the planted value came back: cosine between each output row and its value.
      double worst_cos = 1.0;
      for (int i = 0; i < rows; ++i) {
        double dot = 0, nn = 0, vv = 0;
        for (int c = 0; c < d; ++c) {
          const double o = gpu[static_cast<size_t>(i * d + c)];
          const double t = v8[static_cast<size_t>(planted[static_cast<size_t>(i)]) * d + static_cast<size_t>(c)].to_float() * vs[0];
          dot += o * t;
          nn += o * o;
          vv += t * t;
        }
        worst_cos = std::min(worst_cos, dot / std::sqrt(nn * vv));
      }
      std::printf("[retrieval] tiles %s, keys=%d %s: rel err vs float64 %.3e, worst cosine to planted value "
                  "%.5f\n",
                  tiles.label, keys, mode.name, err, worst_cos);
      entry[mode.name] = {{"rel_l2_error", err}, {"worst_cosine", worst_cos}};
      EXPECT_EQ(count_nan(gpu), 0u);
      if (mode.two_level && mode.one_level_max_keys == 0) {
        everywhere_err = err;
        EXPECT_LE(err, 2e-2) << "keys " << keys;
        EXPECT_GT(worst_cos, 0.95) << "keys " << keys;
      } else if (mode.two_level) {
        // The default's one-level CTAs must cost next to nothing in accuracy.
        EXPECT_LE(err, 1.25 * everywhere_err + 1e-4) << "keys " << keys;
      }
    }
    out_json.push_back(entry);
    save_results();
  }
}

TEST(CudaPrefillAccuracy, LongContextRetrieval) {
  FP8KV_REQUIRE_GPU();
  long_context_retrieval(kChosenTiles, "long_context_retrieval");
}

TEST(CudaPrefillAccuracy, LongContextRetrievalWideTiles) {
  FP8KV_REQUIRE_GPU();
  long_context_retrieval(kWideTiles, "long_context_retrieval_256_key_tiles");
}

TEST(CudaPrefillAccuracy, LongContextRetrieval192RowTiles) {
  FP8KV_REQUIRE_GPU();
  long_context_retrieval(kRows192Tiles, "long_context_retrieval_192_row_tiles");
}

}  // namespace
}  // namespace fp8kv::testing

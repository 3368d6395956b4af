// cuda::DecodePlan / paged_decode against float64 attention over the unquantized inputs, bounded by
// the error of the CPU reference (reference::paged_decode) on the very same FP8 cache contents:
//
//   err(GPU) <= 2 * err(CPU reference, same storage) + kAbsTol      (relative L2, per sequence)
//
// Outputs are poisoned (NaN bits) before each run, so an unwritten element fails, and NaN never
// passes any bound. K carries outlier channels (100x), as real keys do.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/test_utils.h"
#include "fp8kv/cuda.h"
#include "fp8kv/reference.h"
#include "test_decode_common.h"

namespace fp8kv {
namespace {

using testing::DeviceBuffer;
using testing::TwinCache;

// Relative L2 slack on top of 2x the reference's error: the float32 vs float64 accumulation and the
// order of the split merge differ between the two implementations by ~1e-6 relative.
constexpr double kAbsTol = 1e-5;

struct DecodeCase {
  DType storage = DType::kFp8E4M3;
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;
  int head_dim = 128;
  int num_kv_heads = 2;
  int group = 4;
  int block_size = 16;
  std::vector<int32_t> seq_lens;
  DType io = DType::kBFloat16;
  // V token t of a sequence of length n is multiplied by 10^v_decades(t, n) (per-token scales
  // then span those decades); none: N(0, 1) values throughout.
  std::function<double(int32_t t, int32_t n)> v_decades;
};

std::string name_of(const DecodeCase& c) {
  std::string lens;
  for (size_t i = 0; i < c.seq_lens.size() && i < 6; ++i) lens += (i ? "," : "") + std::to_string(c.seq_lens[i]);
  return std::string(kv_cache_dtype_name(c.storage)) + "/" + testing::short_name(c.granularity) + "/d" +
         std::to_string(c.head_dim) + "/gqa" + std::to_string(c.group) + "/bs" + std::to_string(c.block_size) + "/" +
         dtype_name(c.io) + "/lens[" + lens + "]";
}

// Everything one case needs, built on the host and mirrored on the device.
struct DecodeProblem {
  DecodeCase c;
  int num_q_heads = 0;
  int64_t batch = 0;
  int max_blocks = 0;
  std::vector<float> q;                 // [batch, hq, d], values exactly representable in c.io
  std::vector<float> k, v;              // [total_tokens, hk, d], exactly representable in bf16
  std::vector<int64_t> first_token;     // per sequence, into k/v
  std::vector<int32_t> block_tables;    // [batch, max_blocks]
  std::unique_ptr<TwinCache> cache;
  DeviceBuffer<uint8_t> dq;
  DeviceBuffer<int32_t> d_tables, d_lens;
  DeviceBuffer<uint8_t> d_out;

  explicit DecodeProblem(const DecodeCase& dc) : c(dc) {
    num_q_heads = c.num_kv_heads * c.group;
    batch = static_cast<int64_t>(c.seq_lens.size());
    const int d = c.head_dim;
    const int hk = c.num_kv_heads;
    int64_t total = 0;
    int64_t blocks_needed = 0;
    for (int32_t len : c.seq_lens) {
      first_token.push_back(total);
      total += len;
      const int nb = (len + c.block_size - 1) / c.block_size;
      blocks_needed += nb;
      max_blocks = std::max(max_blocks, nb);
    }
    max_blocks += 1;  // a padding column that must never be read
    const int64_t num_blocks = blocks_needed + 3;

    auto round = [&](std::vector<float>& x, DType t) {
      for (float& f : x) f = t == DType::kFloat16 ? Fp16::from_float(f).to_float() : Bf16::from_float(f).to_float();
    };
    q = testing::random_normal(static_cast<size_t>(batch) * num_q_heads * d, testing::test_seed());
    round(q, c.io);
    k = testing::random_normal(static_cast<size_t>(total) * hk * d, testing::test_seed(), 1.0f, d, 4);
    v = testing::random_normal(static_cast<size_t>(total) * hk * d, testing::test_seed());
    if (c.v_decades) {
      for (size_t b = 0; b < c.seq_lens.size(); ++b) {
        const int32_t n = c.seq_lens[b];
        for (int32_t t = 0; t < n; ++t) {
          const float gain = static_cast<float>(std::pow(10.0, c.v_decades(t, n)));
          float* row = v.data() + (first_token[b] + t) * hk * d;
          for (int64_t i = 0; i < static_cast<int64_t>(hk) * d; ++i) row[i] *= gain;
        }
      }
    }
    round(k, DType::kBFloat16);
    round(v, DType::kBFloat16);

    // Blocks handed out in random order; padding entries point far outside the pool.
    std::vector<int32_t> ids(static_cast<size_t>(num_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::mt19937_64 rng(testing::test_seed());
    std::shuffle(ids.begin(), ids.end(), rng);
    block_tables.assign(static_cast<size_t>(batch * max_blocks), 1 << 30);
    std::vector<int64_t> slots(static_cast<size_t>(total));
    size_t next = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const int32_t len = c.seq_lens[static_cast<size_t>(b)];
      const int nb = (len + c.block_size - 1) / c.block_size;
      for (int i = 0; i < nb; ++i) block_tables[static_cast<size_t>(b * max_blocks + i)] = ids[next++];
      for (int32_t t = 0; t < len; ++t) {
        const int64_t block = block_tables[static_cast<size_t>(b * max_blocks + t / c.block_size)];
        slots[static_cast<size_t>(first_token[static_cast<size_t>(b)] + t)] = block * c.block_size + t % c.block_size;
      }
    }

    // The cache is filled by the reference writer (bit-identical to the GPU writer, see
    // test_cache_write.cc), then mirrored to the device.
    cache = std::make_unique<TwinCache>(paged_layout(c.storage, hk, c.block_size, d), num_blocks, c.storage, c.granularity);
    cache->calibrate(k, v);
    cache->fill(0);
    if (total > 0) {
      CacheWriteArgs w;
      w.key = TensorRef(k.data(), DType::kFloat32, {total, hk, d});
      w.value = TensorRef(v.data(), DType::kFloat32, {total, hk, d});
      w.slot_mapping = TensorRef(slots.data(), DType::kInt64, {total});
      w.cache = cache->host_layer();
      reference::write_kv_cache(w);
    }
    cache->upload();

    const std::vector<uint8_t> q_bytes = c.io == DType::kFloat16
                                             ? testing::bytes_of(testing::convert_from_float<Fp16>(q))
                                             : testing::bytes_of(testing::convert_from_float<Bf16>(q));
    dq = DeviceBuffer<uint8_t>(q_bytes);
    d_tables = DeviceBuffer<int32_t>(block_tables);
    d_lens = DeviceBuffer<int32_t>(c.seq_lens);
    d_out = DeviceBuffer<uint8_t>(q_bytes.size());
  }

  float softmax_scale() const { return 1.0f / std::sqrt(static_cast<float>(c.head_dim)); }

  DecodeArgs device_args() const {
    DecodeArgs a;
    const int d = c.head_dim;
    a.q = TensorRef(dq.get(), c.io, {batch, num_q_heads, d}, Device::kCuda);
    a.cache = cache->device_layer();
    a.block_tables = TensorRef(d_tables.get(), DType::kInt32, {batch, max_blocks}, Device::kCuda);
    a.seq_lens = TensorRef(d_lens.get(), DType::kInt32, {batch}, Device::kCuda);
    a.out = TensorRef(d_out.get(), c.io, {batch, num_q_heads, d}, Device::kCuda);
    a.softmax_scale = softmax_scale();
    return a;
  }

  // CPU reference over the same cache contents, output rounded to the same dtype as the GPU's.
  std::vector<float> reference_output() {
    const int d = c.head_dim;
    std::vector<uint16_t> q16(q.size()), out16(q.size());
    for (size_t i = 0; i < q.size(); ++i) {
      q16[i] = c.io == DType::kFloat16 ? Fp16::from_float(q[i]).bits : Bf16::from_float(q[i]).bits;
    }
    DecodeArgs a;
    a.q = TensorRef(q16.data(), c.io, {batch, num_q_heads, d});
    a.cache = cache->host_layer();
    a.block_tables = TensorRef(block_tables.data(), DType::kInt32, {batch, max_blocks});
    a.seq_lens = TensorRef(const_cast<int32_t*>(c.seq_lens.data()), DType::kInt32, {batch});
    a.out = TensorRef(out16.data(), c.io, {batch, num_q_heads, d});
    a.softmax_scale = softmax_scale();
    reference::paged_decode(a);
    return to_float16(out16);
  }

  std::vector<float> to_float16(const std::vector<uint16_t>& x) const {
    std::vector<float> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = c.io == DType::kFloat16 ? Fp16{x[i]}.to_float() : Bf16{x[i]}.to_float();
    return out;
  }

  std::vector<float> gpu_output() const {
    const std::vector<uint8_t> bytes = d_out.download();
    std::vector<uint16_t> x(bytes.size() / 2);
    std::memcpy(x.data(), bytes.data(), bytes.size());
    return to_float16(x);
  }

  // Float64 attention over the unquantized K/V: the truth both implementations are measured against.
  std::vector<double> exact_output() const {
    const int d = c.head_dim;
    const int hk = c.num_kv_heads;
    std::vector<double> out(q.size(), 0.0);
    auto work = [&](int64_t b, int h) {
      const int32_t len = c.seq_lens[static_cast<size_t>(b)];
      if (len == 0) return;
      const int kvh = h / c.group;
      const float* qr = q.data() + (b * num_q_heads + h) * d;
      std::vector<double> s(static_cast<size_t>(len));
      double mx = -INFINITY;
      for (int32_t t = 0; t < len; ++t) {
        const float* kr = k.data() + ((first_token[static_cast<size_t>(b)] + t) * hk + kvh) * d;
        double dot = 0.0;
        for (int i = 0; i < d; ++i) dot += static_cast<double>(qr[i]) * kr[i];
        s[static_cast<size_t>(t)] = dot * softmax_scale();
        mx = std::max(mx, s[static_cast<size_t>(t)]);
      }
      double sum = 0.0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      double* o = out.data() + (b * num_q_heads + h) * d;
      for (int32_t t = 0; t < len; ++t) {
        const float* vr = v.data() + ((first_token[static_cast<size_t>(b)] + t) * hk + kvh) * d;
        const double p = s[static_cast<size_t>(t)] / sum;
        for (int i = 0; i < d; ++i) o[i] += p * vr[i];
      }
    };
    std::vector<std::pair<int64_t, int>> jobs;
    for (int64_t b = 0; b < batch; ++b) {
      for (int h = 0; h < num_q_heads; ++h) jobs.emplace_back(b, h);
    }
    const unsigned n = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < n; ++t) {
      pool.emplace_back([&, t] {
        for (size_t j = t; j < jobs.size(); j += n) work(jobs[j].first, jobs[j].second);
      });
    }
    for (auto& th : pool) th.join();
    return out;
  }

  // Per sequence: relative L2 error of `got` against the float64 truth.
  std::vector<double> errors(const std::vector<float>& got, const std::vector<double>& exact) const {
    const size_t row = static_cast<size_t>(num_q_heads) * c.head_dim;
    std::vector<double> e(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      const size_t off = static_cast<size_t>(b) * row;
      std::vector<double> g(got.begin() + static_cast<int64_t>(off), got.begin() + static_cast<int64_t>(off + row));
      std::vector<double> x(exact.begin() + static_cast<int64_t>(off), exact.begin() + static_cast<int64_t>(off + row));
      e[static_cast<size_t>(b)] = testing::relative_l2_error(g, x);
    }
    return e;
  }

  // The check every decode test makes of the GPU output `got` of `plan`: no NaN or unwritten
  // (poisoned) element; an empty sequence's row is zero; every other sequence's error against
  // float64 attention is at most 2x the CPU reference's on the same cache, + kAbsTol.
  void expect_within_bound(const std::vector<float>& got, const cuda::DecodePlan& plan) {
    const std::vector<double> exact = exact_output();
    ASSERT_EQ(testing::count_nan(got), 0u) << "unwritten (poisoned) or NaN output elements";
    const std::vector<double> gpu_err = errors(got, exact);
    const std::vector<double> ref_err = errors(reference_output(), exact);
    const size_t row = static_cast<size_t>(num_q_heads) * c.head_dim;
    for (int64_t b = 0; b < batch; ++b) {
      const size_t i = static_cast<size_t>(b);
      if (c.seq_lens[i] == 0) {
        for (size_t j = 0; j < row; ++j) ASSERT_EQ(got[i * row + j], 0.0f) << "empty sequence " << b;
        continue;
      }
      EXPECT_LE(gpu_err[i], 2.0 * ref_err[i] + kAbsTol)
          << "sequence " << b << " (len " << c.seq_lens[i] << ", " << plan.num_splits(b) << " parts): GPU error "
          << gpu_err[i] << " vs reference error " << ref_err[i];
    }
  }
};

// Runs one case through the plan/run API and checks it against both references.
void check_case(const DecodeCase& c, const cuda::DecodePlanOptions& options = {}) {
  SCOPED_TRACE(name_of(c));
  DecodeProblem p(c);
  p.d_out.poison();
  const DecodeArgs args = p.device_args();
  const cuda::DecodePlan plan(args, c.seq_lens, options);
  plan.run(args);
  cuda::check_errors();
  p.expect_within_bound(p.gpu_output(), plan);
}

struct Format {
  DType storage;
  ScaleGranularity granularity;
};

// A case of format f with the given head dim, block size and lengths (the other fields default).
DecodeCase case_of(const Format& f, int head_dim, int block_size, std::vector<int32_t> seq_lens) {
  DecodeCase c;
  c.storage = f.storage;
  c.granularity = f.granularity;
  c.head_dim = head_dim;
  c.block_size = block_size;
  c.seq_lens = std::move(seq_lens);
  return c;
}

const Format kFormats[] = {
    {DType::kBFloat16, ScaleGranularity::kPerTensor}, {DType::kFloat16, ScaleGranularity::kPerTensor},
    {DType::kFp8E4M3, ScaleGranularity::kPerTensor},  {DType::kFp8E4M3, ScaleGranularity::kPerHead},
    {DType::kFp8E4M3, ScaleGranularity::kPerToken},   {DType::kFp8E5M2, ScaleGranularity::kPerTensor},
    {DType::kFp8E5M2, ScaleGranularity::kPerHead},    {DType::kFp8E5M2, ScaleGranularity::kPerToken},
};

// Every dtype x granularity x head dim x GQA ratio x block size, one mixed batch each: lengths 1,
// block_size - 1, block_size, block_size + 1, a few hundred and 4097.
TEST(PagedDecode, MatchesReferenceAcrossFormatsShapesAndLengths) {
  FP8KV_REQUIRE_GPU();
  for (const Format& f : kFormats) {
    for (int d : {64, 128, 256}) {
      for (int group : {1, 4, 8}) {
        for (int bs : {16, 64}) {
          DecodeCase c = case_of(f, d, bs, {1, bs - 1, bs, bs + 1, 333, 4097});
          c.group = group;
          check_case(c);
        }
      }
    }
  }
}

TEST(PagedDecode, Fp16InputAndOutput) {
  FP8KV_REQUIRE_GPU();
  for (const Format& f : kFormats) {
    DecodeCase c = case_of(f, 128, 16, {17, 1000});
    c.io = DType::kFloat16;
    check_case(c);
  }
}

TEST(PagedDecode, LongContext131072) {
  FP8KV_REQUIRE_GPU();
  for (const Format& f : {Format{DType::kFp8E4M3, ScaleGranularity::kPerTensor},
                          Format{DType::kFp8E4M3, ScaleGranularity::kPerToken},
                          Format{DType::kFp8E5M2, ScaleGranularity::kPerHead},
                          Format{DType::kBFloat16, ScaleGranularity::kPerTensor}}) {
    for (int bs : {16, 64}) {
      DecodeCase c = case_of(f, 128, bs, {131072});
      c.num_kv_heads = 1;
      c.group = 4;
      check_case(c);
    }
  }
}

// Per-token V scales that span six decades within a sequence, rising, falling and at random: the
// tensor-core P.V keeps its accumulator relative to a reference scale that moves only when a token's
// scale exceeds 1024x it, so these exercise the moves, long stretches without one, and probabilities
// weighted by up to 1024 in fp16.
TEST(PagedDecode, PerTokenScalesSpanningDecades) {
  FP8KV_REQUIRE_GPU();
  const std::function<double(int32_t, int32_t)> profiles[] = {
      [](int32_t t, int32_t n) { return -3.0 + 6.0 * t / std::max(1, n - 1); },
      [](int32_t t, int32_t n) { return 3.0 - 6.0 * t / std::max(1, n - 1); },
      [](int32_t t, int32_t) { return -3.0 + 6.0 * ((static_cast<uint32_t>(t) * 2654435761u) >> 8) / double(1 << 24); },
  };
  for (DType storage : {DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (int d : {64, 128, 256}) {
      for (int group : {1, 8}) {
        for (const auto& profile : profiles) {
          DecodeCase c;
          c.storage = storage;
          c.granularity = ScaleGranularity::kPerToken;
          c.head_dim = d;
          c.group = group;
          c.seq_lens = {1, 17, 333, 4097};
          c.v_decades = profile;
          check_case(c);
        }
      }
    }
  }
}

TEST(PagedDecode, EmptySequencesGiveZeroRows) {
  FP8KV_REQUIRE_GPU();
  DecodeCase c;
  c.seq_lens = {0, 5, 0, 2000};
  check_case(c);
  c.seq_lens = {0};
  check_case(c);
}

TEST(PagedDecode, SplitCountsFromOptions) {
  FP8KV_REQUIRE_GPU();
  DecodeCase c;
  c.seq_lens = {3000, 1, 7000};
  cuda::DecodePlanOptions one_split;
  one_split.max_splits = 1;
  check_case(c, one_split);
  // Many short splits: the merge path at its busiest.
  c.seq_lens = {20000};
  check_case(c);
}

// Block sizes 128 and 256 (the other tests use 16 and 64): a block's warps share pages, sequences
// end inside pages, and split ranges start at multiples of 128 keys, so at block size 256 inside a
// page.
TEST(PagedDecode, LargeBlocksAndPageSpans) {
  FP8KV_REQUIRE_GPU();
  const Format formats[] = {{DType::kFp8E4M3, ScaleGranularity::kPerToken},
                            {DType::kBFloat16, ScaleGranularity::kPerTensor},
                            {DType::kFp8E5M2, ScaleGranularity::kPerHead}};
  for (const Format& f : formats) {
    for (int block_size : {128, 256}) {
      for (int d : {64, 128}) {
        check_case(case_of(f, d, block_size, {1, block_size - 1, block_size + 1, 5000, 20000}));
      }
    }
  }
}

// The balanced partition of equal planned lengths (block rows of W keys over the sequences laid
// end to end, crossing from one sequence into the next), forced: the heuristic keeps it for
// batches too large for the CPU reference. 3 x 20000 keys over 2 KV heads is 130 rows of 464 keys
// on an H100. Also with device lengths below the planned length + headroom, as a replayed plan
// sees them, and its argument check.
TEST(PagedDecode, BalancedPlanOfEqualLengths) {
  FP8KV_REQUIRE_GPU();
  cuda::DecodePlanOptions balanced;
  balanced.balanced = 1;
  for (const Format& f : kFormats) {
    for (int d : {64, 128}) {
      check_case(case_of(f, d, 16, {20000, 20000, 20000}), balanced);
    }
  }
  DecodeCase c;
  c.seq_lens = {20000, 19990, 20003};
  DecodeProblem p(c);
  p.d_out.poison();
  const DecodeArgs args = p.device_args();
  cuda::DecodePlanOptions options = balanced;
  options.headroom_tokens = 64;
  const cuda::DecodePlan plan(args, std::vector<int32_t>{19950, 19950, 19950}, options);
  plan.run(args);
  cuda::check_errors();
  p.expect_within_bound(p.gpu_output(), plan);
  options.balanced = 2;
  EXPECT_THROW(cuda::DecodePlan(args, std::vector<int32_t>{19950, 19950, 19950}, options), InvalidArgument);
}

TEST(PagedDecode, GraphReplayWithGrowingLengths) {
  FP8KV_REQUIRE_GPU();
  DecodeCase c;
  c.seq_lens = {700, 3000};
  DecodeProblem p(c);
  const DecodeArgs args = p.device_args();
  cuda::DecodePlanOptions options;
  options.headroom_tokens = 64;
  // The plan is made for shorter sequences; the cache already holds the longer ones.
  const std::vector<int32_t> planned = {700 - 40, 3000 - 50};
  const cuda::DecodePlan plan(args, planned, options);
  cudaStream_t stream;
  FP8KV_CUDA_CHECK(cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  FP8KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  plan.run(args, stream);
  FP8KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  FP8KV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  p.d_out.poison();
  FP8KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  FP8KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  cuda::check_errors();
  p.expect_within_bound(p.gpu_output(), plan);

  // Past planned + headroom: reported, never read out of bounds.
  const std::vector<int32_t> too_long = {700, 3000 + 100};
  p.d_lens.upload(too_long);
  FP8KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  FP8KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  EXPECT_THROW(cuda::check_errors(), InvalidArgument);
  FP8KV_CUDA_CHECK(cudaGraphExecDestroy(exec));
  FP8KV_CUDA_CHECK(cudaGraphDestroy(graph));
  FP8KV_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(PagedDecode, BadDeviceBlockIdIsReported) {
  FP8KV_REQUIRE_GPU();
  DecodeCase c;
  c.seq_lens = {100};
  DecodeProblem p(c);
  p.block_tables[2] = static_cast<int32_t>(p.cache->num_blocks);  // one past the pool
  p.d_tables.upload(p.block_tables);
  cuda::paged_decode(p.device_args());
  try {
    cuda::check_errors();
    FAIL() << "expected InvalidArgument for block_tables";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), "block_tables");
  }
}

TEST(PagedDecode, RejectsBadArguments) {
  FP8KV_REQUIRE_GPU();
  DecodeCase c;
  c.seq_lens = {10, 20};
  DecodeProblem p(c);
  DecodeArgs a = p.device_args();
  a.softmax_scale = 0.0f;
  EXPECT_THROW(cuda::paged_decode(a), InvalidArgument);
  a = p.device_args();
  EXPECT_THROW(cuda::DecodePlan(a, std::vector<int32_t>{10}), InvalidArgument);  // host lens of the wrong size
  EXPECT_THROW(cuda::DecodePlan(a, std::vector<int32_t>{10, 1 << 20}), InvalidArgument);  // beyond the table
  const cuda::DecodePlan plan(a, c.seq_lens);
  DecodeProblem other(DecodeCase{DType::kBFloat16, ScaleGranularity::kPerTensor, 128, 2, 4, 16, {10, 20}});
  EXPECT_THROW(plan.run(other.device_args()), InvalidArgument);  // a cache format the plan was not made for
}

}  // namespace
}  // namespace fp8kv

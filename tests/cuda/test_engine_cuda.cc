// The CUDA engine backend on the golden checkpoints: against transformers' logits and the CPU
// backend, greedy decoding, and FP8 KV against BF16 KV (mean KL of the next-token distributions
// and greedy agreement, printed as "[engine-cuda]" lines for the report).
#include <gtest/gtest.h>

#include <cmath>

#include "common/test_utils.h"
#include "cuda/gpu_test_utils.h"
#include "engine/golden_utils.h"
#include "fp8kv/engine/engine.h"

namespace fp8kv::engine {
namespace {

class EngineCudaTest : public ::testing::TestWithParam<std::string> {};

// bf16 activations (as transformers runs a bf16 model) round every layer's outputs to 2^-8
// relative on top of the bf16 cache's rounding; over two layers the logits' normalised error is a
// few u. Bound: 8u (u = 2^-8) normalised L2, against transformers' float32 logits and against the
// CPU backend; a wrong kernel or dispatch path moves logits by O(1).
constexpr double kU = 1.0 / 256;

TEST_P(EngineCudaTest, MatchesTransformersAndCpuBackend) {
  FP8KV_REQUIRE_GPU();
  const auto [golden, config, checkpoint] = open_golden_checkpoint(GetParam());
  auto cuda = make_cuda_backend();
  auto cpu = make_cpu_backend();
  Model gpu_model(config, checkpoint, *cuda);
  Model cpu_model(config, checkpoint, *cpu);
  const std::vector<float> cpu_logits = teacher_forced_logits(cpu_model, golden.input_ids, DType::kBFloat16, 64);
  for (DType kv : {DType::kBFloat16, DType::kFp8E4M3, DType::kFp8E5M2}) {
    for (int chunk : {64, 5, 1}) {
      const std::vector<float> got = teacher_forced_logits(gpu_model, golden.input_ids, kv, chunk);
      const double rel_golden = testing::relative_l2_error(got, golden.logits);
      const double rel_cpu = testing::relative_l2_error(got, cpu_logits);
      const double max_err = testing::max_abs_error(got, golden.logits);
      std::printf("[engine-cuda] %s %s cache chunk %d: vs transformers rel L2 %.3g max %.3g; vs CPU backend (bf16 "
                  "cache) rel L2 %.3g\n",
                  GetParam().c_str(), kv_cache_dtype_name(kv), chunk, rel_golden, max_err, rel_cpu);
      // FP8 caches add their own quantisation (E4M3 2^-4, E5M2 2^-3 relative per element).
      const double bound = kv == DType::kBFloat16 ? 8 * kU : kv == DType::kFp8E4M3 ? 8.0 / 16 : 8.0 / 8;
      EXPECT_LE(rel_golden, bound);
      EXPECT_LE(rel_cpu, bound);
    }
  }
}

TEST_P(EngineCudaTest, GreedyDecodingMatchesTransformers) {
  FP8KV_REQUIRE_GPU();
  const auto [golden, config, checkpoint] = open_golden_checkpoint(GetParam());
  auto cuda = make_cuda_backend();
  Model model(config, checkpoint, *cuda);
  const std::vector<int32_t> generated = free_running_greedy(model, golden);
  const size_t agree = agreeing_prefix(generated, golden.greedy);
  std::printf("[engine-cuda] %s: free-running greedy (bf16 cache) agrees with transformers on %zu of %zu tokens\n",
              GetParam().c_str(), agree, generated.size());
  // A step whose top-2 margin is below the logit error bound may legitimately pick the other token.
  const double bound = 8 * kU * max_abs(golden.logits);
  if (agree < generated.size()) {
    EXPECT_LT(golden.margins[agree], bound) << "diverged at step " << agree << " with top-2 margin "
                                            << golden.margins[agree];
  }
}

// FP8 KV against BF16 KV on the same token sequences (prompt + transformers' greedy tokens,
// teacher-forced), through the decode kernel (chunk 1) and the prefill path (whole prompt).
TEST_P(EngineCudaTest, Fp8KvAgainstBf16Kv) {
  FP8KV_REQUIRE_GPU();
  const auto [golden, config, checkpoint] = open_golden_checkpoint(GetParam());
  auto cuda = make_cuda_backend();
  Model model(config, checkpoint, *cuda);
  const std::vector<int32_t> tokens = golden.teacher_forced_tokens();
  const int64_t vocab = config.vocab_size, n = static_cast<int64_t>(tokens.size());
  for (int chunk : {1, 64}) {
    const std::vector<float> ref = teacher_forced_logits(model, tokens, DType::kBFloat16, chunk);
    for (DType kv : {DType::kFp8E4M3, DType::kFp8E5M2}) {
      const std::vector<float> got = teacher_forced_logits(model, tokens, kv, chunk);
      double kl = 0.0;
      int64_t agree = 0;
      for (int64_t i = 0; i < n; ++i) {
        kl += kl_divergence(log_softmax(ref.data() + i * vocab, vocab), log_softmax(got.data() + i * vocab, vocab));
        agree += argmax(ref.data() + i * vocab, vocab) == argmax(got.data() + i * vocab, vocab);
      }
      std::printf("[engine-cuda] %s %s (per-token scales) vs bf16 KV, chunk %d: mean KL %.3g over %lld positions, "
                  "greedy agreement %lld/%lld\n",
                  GetParam().c_str(), kv_cache_dtype_name(kv), chunk, kl / static_cast<double>(n),
                  static_cast<long long>(n), static_cast<long long>(agree), static_cast<long long>(n));
      EXPECT_LT(kl / static_cast<double>(n), kv == DType::kFp8E4M3 ? 0.01 : 0.05);
      // These random-weight models' top-2 logit margins are ~1e-3 (golden.json), so greedy
      // agreement mostly measures how many margins the cache's rounding can flip: it scales with
      // the format's unit roundoff (E4M3 2^-4, E5M2 2^-3). Measured on the H100: E4M3 48-51 of
      // 53-54, E5M2 40-44; the floors sit below those, the KL bound above is the main check.
      EXPECT_GE(agree, kv == DType::kFp8E4M3 ? n * 8 / 10 : n * 7 / 10);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, EngineCudaTest, ::testing::Values("tiny-qwen3", "tiny-llama"));

}  // namespace
}  // namespace fp8kv::engine

// Golden test: the engine's CPU backend against transformers on tiny random-weight checkpoints that
// transformers itself wrote (tests/data/README.md). The golden logits are transformers' float32
// forward over the bf16 weights; the CPU backend runs float32 too (weights converted exactly from
// bf16), so the only difference by design is the BF16 KV cache: K and V are rounded to bf16 (a
// relative error of at most 2^-9 each) before attention, as a bf16 serving stack stores them.
#include <gtest/gtest.h>

#include <cmath>

#include "common/test_utils.h"
#include "engine/golden_utils.h"
#include "fp8kv/engine/engine.h"

namespace fp8kv::engine {
namespace {

class GoldenTest : public ::testing::TestWithParam<std::string> {};

// Tolerance, from the cache format's unit roundoff u (bf16 2^-8, fp16 2^-11): rounding K and V
// to the cache format perturbs attention outputs by about u relative, and the logits by about u
// through two layers. We allow a normalised L2 error of 2u and a max abs error of 2u * max|logit|.
// Measured on these checkpoints: bf16 relative L2 0.0032 (0.8u), max 0.021; fp16 0.0004 (0.8u),
// max 0.0027. The error falls 8x with fp16's 3 extra bits, so it is the cache rounding and nothing
// else; a wrong norm weight, RoPE variant, bias or GQA mapping moves logits by O(1).
double unit_roundoff(DType kv) { return kv == DType::kFloat16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); }

TEST_P(GoldenTest, LogitsMatchTransformers) {
  const auto [golden, config, checkpoint] = open_golden_checkpoint(GetParam());
  auto backend = make_cpu_backend();
  Model model(config, checkpoint, *backend);
  for (DType kv : {DType::kBFloat16, DType::kFloat16}) {
    const double u = unit_roundoff(kv);
    for (int chunk : {static_cast<int>(golden.input_ids.size()), 5}) {
      const std::vector<float> got = teacher_forced_logits(model, golden.input_ids, kv, chunk);
      ASSERT_EQ(got.size(), golden.logits.size());
      const double max_err = testing::max_abs_error(got, golden.logits);
      const double rel = testing::relative_l2_error(got, golden.logits);
      std::printf("[golden] %s %s cache, chunk %d: max |logit error| %.3g, relative L2 %.3g\n", GetParam().c_str(),
                  kv_cache_dtype_name(kv), chunk, max_err, rel);
      EXPECT_LE(max_err, 2 * u * max_abs(golden.logits));
      EXPECT_LE(rel, 2 * u);
    }
  }
}

// Greedy decoding through the engine (prefill, then one decode step per token) gives
// transformers' tokens. A step whose top-2 margin in the golden logits is below our logit error
// bound may legitimately pick the other token; the check is teacher-forced for those, so one
// near-tie cannot cascade.
TEST_P(GoldenTest, GreedyDecodingMatchesTransformers) {
  const auto [golden, config, checkpoint] = open_golden_checkpoint(GetParam());
  auto backend = make_cpu_backend();
  Model model(config, checkpoint, *backend);
  // The bf16 logit error bound of LogitsMatchTransformers.
  const double bound = 2 * unit_roundoff(DType::kBFloat16) * max_abs(golden.logits);

  const std::vector<int32_t> generated = free_running_greedy(model, golden);
  ASSERT_EQ(generated.size(), golden.greedy.size());
  const size_t agree = agreeing_prefix(generated, golden.greedy);
  std::printf("[golden] %s: free-running greedy agrees on %zu of %zu tokens\n", GetParam().c_str(), agree,
              generated.size());
  if (agree < generated.size()) {
    EXPECT_LT(golden.margins[agree], 2 * bound)
        << "diverged at step " << agree << " where transformers' top-2 margin is " << golden.margins[agree];
  }

  // Teacher-forced: every step's argmax over the golden prefix.
  const std::vector<float> logits = teacher_forced_logits(model, golden.teacher_forced_tokens(), DType::kBFloat16, 16);
  const int64_t vocab = config.vocab_size;
  for (size_t i = 0; i < golden.greedy.size(); ++i) {
    const int64_t row = static_cast<int64_t>(golden.input_ids.size() + i) - 1;
    const int32_t pick = argmax(logits.data() + row * vocab, vocab);
    if (golden.margins[i] >= 2 * bound) {
      EXPECT_EQ(pick, golden.greedy[i]) << "step " << i << ", margin " << golden.margins[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, GoldenTest, ::testing::Values("tiny-qwen3", "tiny-llama"));

}  // namespace
}  // namespace fp8kv::engine

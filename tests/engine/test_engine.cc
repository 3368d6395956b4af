// The serving loop: continuous batching, chunked prefill and preemption give every request the
// tokens it gets when run alone; the KV-format rules; sampling.
#include <gtest/gtest.h>

#include <random>

#include "common/test_utils.h"
#include "fp8kv/engine/engine.h"
#include "fp8kv/error.h"

namespace fp8kv::engine {
namespace {

ModelConfig tiny_config(Architecture arch) {
  ModelConfig c;
  c.architecture = arch;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.num_layers = 2;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.vocab_size = 512;
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 10000.0;
  c.rope.rotary_dim = 64;
  c.qk_norm = arch == Architecture::kQwen3;
  c.qkv_bias = arch == Architecture::kQwen2;
  c.tie_word_embeddings = arch != Architecture::kLlama;
  c.dtype = DType::kBFloat16;
  c.max_position = 1024;
  c.eos_token_ids = {1};
  return c;
}

KvCacheFormat format_for(DType dtype) {
  KvCacheFormat f;
  f.dtype = dtype;
  f.granularity = ScaleGranularity::kPerToken;
  return f;
}

struct Prompt {
  std::vector<int32_t> ids;
  SamplingParams sampling;
};

std::vector<Prompt> random_prompts(int count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> length(5, 60), token(2, 511), new_tokens(8, 24);
  std::vector<Prompt> prompts(static_cast<size_t>(count));
  for (Prompt& p : prompts) {
    p.ids.resize(static_cast<size_t>(length(rng)));
    for (int32_t& t : p.ids) t = token(rng);
    p.sampling.max_new_tokens = new_tokens(rng);
    p.sampling.ignore_eos = true;
  }
  return prompts;
}

class EngineTest : public ::testing::TestWithParam<std::tuple<Architecture, DType>> {};

TEST_P(EngineTest, ConcurrentRequestsThroughSmallCacheMatchRunningAlone) {
  const auto [arch, dtype] = GetParam();
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto backend = make_cpu_backend();
  const ModelConfig config = tiny_config(arch);
  Model model = Model::random(config, *backend, seed, config.max_position);
  const std::vector<Prompt> prompts = random_prompts(12, seed + 1);

  std::vector<std::vector<int32_t>> alone;
  {
    KvCache cache = make_kv_cache(config, format_for(dtype), 64, 16, Device::kCpu);
    for (const Prompt& p : prompts) {
      Engine engine(model, cache);
      engine.add_request(p.ids, p.sampling);
      const auto out = engine.run_to_completion();
      ASSERT_EQ(out.size(), 1u);
      EXPECT_EQ(out[0].num_preemptions, 0);
      EXPECT_EQ(static_cast<int32_t>(out[0].tokens.size()), p.sampling.max_new_tokens);
      alone.push_back(out[0].tokens);
    }
  }

  // 8 blocks x 16 = 128 tokens: every request fits alone (at most 84 tokens), a few at once do
  // not, so requests wait and get preempted; a 24-token budget chunks every prompt's prefill.
  KvCache small = make_kv_cache(config, format_for(dtype), 8, 16, Device::kCpu);
  EngineOptions options;
  options.max_num_batched_tokens = 24;
  options.max_num_seqs = 8;
  Engine engine(model, small, options);
  for (const Prompt& p : prompts) engine.add_request(p.ids, p.sampling);
  int64_t max_running = 0;
  const auto outputs = engine.run_to_completion([&](const EngineStats& s) { max_running = std::max(max_running, s.running); });
  ASSERT_EQ(outputs.size(), prompts.size());
  EXPECT_GT(engine.stats().preemptions, 0) << "the cache was meant to be too small for the batch";
  EXPECT_GT(max_running, 1) << "requests were meant to share steps";
  int64_t preemptions = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    EXPECT_EQ(outputs[i].id, static_cast<int64_t>(i));
    EXPECT_EQ(outputs[i].prompt, prompts[i].ids);
    EXPECT_EQ(outputs[i].tokens, alone[i]) << "request " << i << " (preempted " << outputs[i].num_preemptions
                                           << " times)";
    EXPECT_EQ(outputs[i].finish_reason, FinishReason::kLength);
    preemptions += outputs[i].num_preemptions;
  }
  EXPECT_EQ(preemptions, engine.stats().preemptions);
  EXPECT_EQ(small.allocator().num_free_blocks(), small.allocator().num_blocks()) << "every block was returned";
}

INSTANTIATE_TEST_SUITE_P(Formats, EngineTest,
                         ::testing::Combine(::testing::Values(Architecture::kLlama, Architecture::kQwen2,
                                                              Architecture::kQwen3),
                                            ::testing::Values(DType::kBFloat16, DType::kFp8E4M3, DType::kFp8E5M2)));

// A prompt's logits do not depend on how its prefill is split: whole, in chunks, or token by token.
TEST(ModelTest, ChunkedPrefillAndDecodeMatchWholePrefill) {
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  auto backend = make_cpu_backend();
  const ModelConfig config = tiny_config(Architecture::kQwen3);
  Model model = Model::random(config, *backend, seed, config.max_position);
  std::vector<int32_t> tokens(41);
  std::mt19937_64 rng(seed);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % 512);

  auto run = [&](int chunk) {
    KvCache cache = make_kv_cache(config, format_for(DType::kBFloat16), 8, 16, Device::kCpu);
    const SequenceId seq = cache.allocator().create_sequence();
    std::vector<float> last(static_cast<size_t>(config.vocab_size));
    DeviceTensor logits(Device::kCpu, DType::kFloat32, {1, config.vocab_size});
    for (int32_t start = 0; start < static_cast<int32_t>(tokens.size()); start += chunk) {
      const int32_t n = std::min<int32_t>(chunk, static_cast<int32_t>(tokens.size()) - start);
      const AppendResult a = cache.allocator().append_tokens(seq, n);
      StepBatch batch;
      batch.add_sequence(std::vector<int32_t>(tokens.begin() + start, tokens.begin() + start + n), start, a.slots,
                         cache.allocator().block_table(seq), true);
      batch.finalize();
      model.forward(batch, cache, logits.ref());
    }
    backend->copy_to_host(last.data(), logits.ref());
    return last;
  };
  const std::vector<float> whole = run(41), chunks = run(7), decode = run(1);
  // The CPU backend is batch-invariant (fixed GEMM tiles, per-row norms, float64 attention per
  // query row): the same token gets the same logits whatever else shares its step.
  EXPECT_EQ(chunks, whole);
  EXPECT_EQ(decode, whole);
}

TEST(EngineTest, RejectsRequestsThatCannotFit) {
  auto backend = make_cpu_backend();
  const ModelConfig config = tiny_config(Architecture::kLlama);
  Model model = Model::random(config, *backend, 7, config.max_position);
  KvCache cache = make_kv_cache(config, format_for(DType::kBFloat16), 2, 16, Device::kCpu);
  Engine engine(model, cache);
  SamplingParams s;
  s.max_new_tokens = 8;
  EXPECT_THROW(engine.add_request(std::vector<int32_t>(30, 3), s), InvalidArgument);  // 38 > 32 tokens
  EXPECT_THROW(engine.add_request({}, s), InvalidArgument);
  EXPECT_THROW(engine.add_request({3, 600}, s), InvalidArgument);
  s.top_p = 0.0f;
  EXPECT_THROW(engine.add_request({3}, s), InvalidArgument);
}

TEST(EngineTest, StopTokensEndGeneration) {
  auto backend = make_cpu_backend();
  const ModelConfig config = tiny_config(Architecture::kLlama);
  Model model = Model::random(config, *backend, 11, config.max_position);
  KvCache cache = make_kv_cache(config, format_for(DType::kBFloat16), 16, 16, Device::kCpu);
  SamplingParams s;
  s.max_new_tokens = 20;
  s.ignore_eos = true;
  std::vector<int32_t> free_run;
  {
    Engine engine(model, cache);
    engine.add_request({5, 6, 7}, s);
    free_run = engine.run_to_completion()[0].tokens;
  }
  s.stop_token_ids = {free_run[4]};
  Engine engine(model, cache);
  engine.add_request({5, 6, 7}, s);
  const RequestOutput out = engine.run_to_completion()[0];
  const size_t first = static_cast<size_t>(std::find(free_run.begin(), free_run.end(), free_run[4]) - free_run.begin());
  EXPECT_EQ(out.finish_reason, FinishReason::kStop);
  EXPECT_EQ(out.tokens, std::vector<int32_t>(free_run.begin(), free_run.begin() + static_cast<int64_t>(first) + 1));
}

TEST(SamplingTest, GreedyTemperatureAndTopP) {
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};
  EXPECT_EQ(argmax(logits.data(), 5), 1);  // lowest index on ties
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.01f;  // only the most likely token (the first of the tie) survives
  std::mt19937_64 rng(3);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample(logits.data(), 5, p, rng), 1);
  p.top_p = 1.0f;
  std::mt19937_64 a(9), b(9);
  std::vector<int> counts(5, 0);
  for (int i = 0; i < 2000; ++i) {
    const int32_t x = sample(logits.data(), 5, p, a);
    EXPECT_EQ(x, sample(logits.data(), 5, p, b)) << "same seed, same draws";
    ++counts[static_cast<size_t>(x)];
  }
  // Token 1 has probability e^2 / (1 + 2e^2 + e + e^-1) = 0.37; token 4 0.019.
  EXPECT_NEAR(counts[1] / 2000.0, 0.37, 0.05);
  EXPECT_NEAR(counts[4] / 2000.0, 0.019, 0.015);
  const std::vector<float> nan_logits = {0.0f, NAN};
  EXPECT_THROW(argmax(nan_logits.data(), 2), InvalidArgument);
  const auto lp = log_softmax(logits.data(), 5);
  EXPECT_NEAR(kl_divergence(lp, lp), 0.0, 1e-15);
}

TEST(KvFormatTest, ResolvesDtypeAndScales) {
  ModelConfig config = tiny_config(Architecture::kLlama);
  KvCacheFormat f = resolve_kv_cache_format(config, nullptr, "auto", "");
  EXPECT_EQ(f.dtype, DType::kBFloat16);
  f = resolve_kv_cache_format(config, nullptr, "fp8", "");
  EXPECT_EQ(f.dtype, DType::kFp8E4M3);
  EXPECT_EQ(f.granularity, ScaleGranularity::kPerToken) << "no calibrated scales: dynamic per-token, never 1.0";
  f = resolve_kv_cache_format(config, nullptr, "fp8_e5m2", "per_token");
  EXPECT_EQ(f.dtype, DType::kFp8E5M2);
  EXPECT_THROW(resolve_kv_cache_format(config, nullptr, "fp8", "per_tensor"), InvalidArgument);
  EXPECT_THROW(resolve_kv_cache_format(config, nullptr, "fp8", "per_row"), InvalidArgument);
  EXPECT_THROW(resolve_kv_cache_format(config, nullptr, "int4", ""), InvalidArgument);
  config.declares_fp8_kv_cache = true;
  f = resolve_kv_cache_format(config, nullptr, "auto", "");
  EXPECT_EQ(f.dtype, DType::kFp8E4M3);
  EXPECT_EQ(f.granularity, ScaleGranularity::kPerToken);
  config.declares_fp8_kv_cache = false;
  config.dtype = DType::kFloat32;
  EXPECT_EQ(resolve_kv_cache_format(config, nullptr, "auto", "").dtype, DType::kBFloat16);
}

}  // namespace
}  // namespace fp8kv::engine

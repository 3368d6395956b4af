// Turning next-token logits into tokens: greedy, temperature and nucleus (top-p) sampling.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace fp8kv::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax, lowest index on ties)
  float top_p = 1.0f;        // keep the smallest set of tokens whose probability reaches top_p
  uint64_t seed = 0;         // each request draws from its own generator: output independent of batching
  int32_t max_new_tokens = 16;
  std::vector<int32_t> stop_token_ids;  // generation ends after emitting one of these
  bool ignore_eos = false;              // keep going past the model's EOS tokens

  bool greedy() const { return temperature <= 0.0f; }
  // Throws InvalidArgument naming the field (temperature >= 0 and finite, top_p in (0, 1],
  // max_new_tokens >= 1).
  void validate() const;
};

// Index of the largest logit (lowest index on ties). NaN logits are an error.
int32_t argmax(const float* logits, int64_t vocab);

// Samples one token from `logits` [vocab] with the params' temperature and top-p.
int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params, std::mt19937_64& rng);

// log-softmax of `logits` in float64 (for KL divergence between two runs' next-token distributions).
std::vector<double> log_softmax(const float* logits, int64_t vocab);
// KL(p || q) from two log-probability vectors.
double kl_divergence(const std::vector<double>& log_p, const std::vector<double>& log_q);

}  // namespace fp8kv::engine

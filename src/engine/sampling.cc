#include "fp8kv/engine/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "fp8kv/error.h"

namespace fp8kv::engine {

void SamplingParams::validate() const {
  FP8KV_REQUIRE(std::isfinite(temperature) && temperature >= 0.0f, "temperature", "must be finite and >= 0, got ",
                temperature);
  FP8KV_REQUIRE(top_p > 0.0f && top_p <= 1.0f, "top_p", "must be in (0, 1], got ", top_p);
  FP8KV_REQUIRE(max_new_tokens >= 1, "max_new_tokens", "must be >= 1, got ", max_new_tokens);
}

int32_t argmax(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    FP8KV_REQUIRE(!std::isnan(logits[i]), "logits", "NaN at index ", i);
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

int32_t sample(const float* logits, int64_t vocab, const SamplingParams& params, std::mt19937_64& rng) {
  if (params.greedy()) return argmax(logits, vocab);
  const int32_t top = argmax(logits, vocab);
  // Probabilities in float64, relative to the largest logit so that exp never overflows.
  std::vector<double> prob(static_cast<size_t>(vocab));
  double total = 0.0;
  for (int64_t i = 0; i < vocab; ++i) {
    prob[static_cast<size_t>(i)] = std::exp((static_cast<double>(logits[i]) - logits[top]) / params.temperature);
    total += prob[static_cast<size_t>(i)];
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  int64_t keep = vocab;
  if (params.top_p < 1.0f) {
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return prob[static_cast<size_t>(a)] > prob[static_cast<size_t>(b)] ||
             (prob[static_cast<size_t>(a)] == prob[static_cast<size_t>(b)] && a < b);
    });
    double mass = 0.0;
    for (keep = 0; keep < vocab;) {
      mass += prob[static_cast<size_t>(order[static_cast<size_t>(keep)])] / total;
      ++keep;
      if (mass >= params.top_p) break;
    }
  }
  double kept = 0.0;
  for (int64_t i = 0; i < keep; ++i) kept += prob[static_cast<size_t>(order[static_cast<size_t>(i)])];
  const double target = std::uniform_real_distribution<double>(0.0, kept)(rng);
  double acc = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += prob[static_cast<size_t>(order[static_cast<size_t>(i)])];
    if (target < acc) return order[static_cast<size_t>(i)];
  }
  return order[static_cast<size_t>(keep - 1)];
}

std::vector<double> log_softmax(const float* logits, int64_t vocab) {
  double top = logits[argmax(logits, vocab)];
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - top);
  const double log_z = top + std::log(sum);
  std::vector<double> out(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) out[static_cast<size_t>(i)] = static_cast<double>(logits[i]) - log_z;
  return out;
}

double kl_divergence(const std::vector<double>& log_p, const std::vector<double>& log_q) {
  FP8KV_REQUIRE(log_p.size() == log_q.size(), "log_q", "must have as many entries as log_p");
  double kl = 0.0;
  for (size_t i = 0; i < log_p.size(); ++i) kl += std::exp(log_p[i]) * (log_p[i] - log_q[i]);
  return kl;
}

}  // namespace fp8kv::engine

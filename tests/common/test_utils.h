// Helpers shared by the test suites: seeded random inputs (with outlier channels, as real keys
// have) and normalised error metrics. Header-only so every test binary can include it.
#pragma once

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

namespace fp8kv::testing {

// Fresh seed per call site and run unless FP8KV_TEST_SEED is set: every run sees new inputs, and a
// failure prints the seed to reproduce it.
inline uint64_t test_seed() {
  static const uint64_t base = [] {
    const char* fixed = std::getenv("FP8KV_TEST_SEED");
    const uint64_t seed = fixed ? std::strtoull(fixed, nullptr, 10) : static_cast<uint64_t>(std::random_device{}());
    // ctest runs every test in its own process and shows this line when the test fails.
    std::fprintf(stderr, "fp8kv tests: random inputs from FP8KV_TEST_SEED=%llu\n", static_cast<unsigned long long>(seed));
    return seed;
  }();
  static uint64_t counter = 0;
  return base + 0x9E3779B97F4A7C15ull * ++counter;
}

// N(0, stddev) values; `outlier_channels` channels of every row of length `row` get `outlier_gain`
// times larger values (the shape of real attention keys).
inline std::vector<float> random_normal(size_t count, uint64_t seed, float stddev = 1.0f, int64_t row = 0,
                                        int outlier_channels = 0, float outlier_gain = 100.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> out(count);
  for (auto& x : out) x = normal(rng);
  if (row > 0 && outlier_channels > 0) {
    // Distinct channels: a channel picked twice would be outlier_gain^2 larger (10^4 at the default),
    // which overflowed fp16 inputs to infinity (a cache-write test then met a NaN quotient).
    std::vector<int64_t> channels;
    std::uniform_int_distribution<int64_t> pick(0, row - 1);
    while (static_cast<int64_t>(channels.size()) < std::min<int64_t>(outlier_channels, row)) {
      const int64_t c = pick(rng);
      if (std::find(channels.begin(), channels.end(), c) == channels.end()) channels.push_back(c);
    }
    for (size_t base = 0; base + static_cast<size_t>(row) <= count; base += static_cast<size_t>(row)) {
      for (int64_t c : channels) out[base + static_cast<size_t>(c)] *= outlier_gain;
    }
  }
  return out;
}

// ||a - b||_2 / ||ref||_2 style errors, accumulated in double. NaN anywhere makes the result NaN,
// which fails every bound (NaN never passes).
template <typename A, typename B>
double l2_error(const A& a, const B& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    sum += d * d;
  }
  return std::sqrt(sum);
}

template <typename A>
double l2_norm(const A& a) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * static_cast<double>(a[i]);
  return std::sqrt(sum);
}

template <typename A, typename B>
double relative_l2_error(const A& got, const B& ref) {
  return l2_error(got, ref) / std::max(l2_norm(ref), 1e-30);
}

template <typename A, typename B>
double max_abs_error(const A& got, const B& ref) {
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - static_cast<double>(ref[i]));
    if (std::isnan(d)) return NAN;
    worst = std::max(worst, d);
  }
  return worst;
}

}  // namespace fp8kv::testing

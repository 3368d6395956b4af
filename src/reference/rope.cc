// Rotary embedding: the cos|sin table and its application, as Hugging Face transformers computes
// them for Llama and Qwen (rotate-half pairing, optional Llama-3 frequency scaling).
#include <cmath>
#include <vector>

#include "fp8kv/error.h"
#include "fp8kv/reference.h"

namespace fp8kv {
namespace {

// transformers builds inv_freq and the angles in float32 (the rotary module runs with autocast
// off); each step below is the same float32 operation, so the table matches the one the model
// was trained and evaluated with, including the float32 rounding of position * inv_freq at long
// contexts. Only pow, cos and sin are evaluated in double and rounded once (correctly rounded,
// where torch's float32 versions may differ by an ulp).
std::vector<float> inverse_frequencies(const RopeConfig& c) {
  const int half = c.rotary_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(c.rotary_dim);
    const float base_pow = static_cast<float>(std::pow(c.theta, static_cast<double>(exponent)));
    inv[static_cast<size_t>(i)] = 1.0f / base_pow;
  }
  if (c.llama3_factor == 0.0) return inv;
  // transformers' _compute_llama3_parameters: long wavelengths are slowed down by `factor`,
  // short ones kept, and the band between interpolated smoothly.
  const float factor = static_cast<float>(c.llama3_factor);
  const float low = static_cast<float>(c.llama3_low_freq_factor);
  const float high = static_cast<float>(c.llama3_high_freq_factor);
  const float old_context = static_cast<float>(c.llama3_original_max_position);
  const float low_freq_wavelen = static_cast<float>(c.llama3_original_max_position / c.llama3_low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(c.llama3_original_max_position / c.llama3_high_freq_factor);
  const float two_pi = static_cast<float>(2.0 * M_PI);
  for (float& f : inv) {
    const float wavelen = two_pi / f;
    const float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = (old_context / wavelen - low) / (high - low);
      f = (1.0f - smooth) * scaled / factor + smooth * scaled;
    } else {
      f = scaled;
    }
  }
  return inv;
}

}  // namespace

std::vector<float> build_rope_table(const RopeConfig& config, int max_position) {
  FP8KV_REQUIRE(config.rotary_dim > 0 && config.rotary_dim % 2 == 0, "rope.rotary_dim", "must be even and > 0, got ",
                config.rotary_dim);
  FP8KV_REQUIRE(std::isfinite(config.theta) && config.theta > 1.0, "rope.theta", "must be finite and > 1, got ",
                config.theta);
  FP8KV_REQUIRE(max_position > 0, "max_position", "must be > 0, got ", max_position);
  if (config.llama3_factor != 0.0) {
    FP8KV_REQUIRE(std::isfinite(config.llama3_factor) && config.llama3_factor >= 1.0, "rope_scaling.factor",
                  "must be >= 1, got ", config.llama3_factor);
    FP8KV_REQUIRE(config.llama3_high_freq_factor > config.llama3_low_freq_factor && config.llama3_low_freq_factor > 0,
                  "rope_scaling.high_freq_factor", "must exceed low_freq_factor > 0, got high ",
                  config.llama3_high_freq_factor, ", low ", config.llama3_low_freq_factor);
    FP8KV_REQUIRE(config.llama3_original_max_position > 0, "rope_scaling.original_max_position_embeddings",
                  "must be > 0, got ", config.llama3_original_max_position);
  }
  const std::vector<float> inv = inverse_frequencies(config);
  const int rd = config.rotary_dim;
  const int half = rd / 2;
  std::vector<float> table(static_cast<size_t>(max_position) * static_cast<size_t>(rd));
  for (int p = 0; p < max_position; ++p) {
    float* row = table.data() + static_cast<size_t>(p) * static_cast<size_t>(rd);
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(p) * inv[static_cast<size_t>(i)];
      row[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      row[half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  return table;
}

namespace reference {

void apply_rope(float* x, int64_t num_tokens, int num_heads, int head_dim, const int32_t* positions,
                const float* cos_sin, int rotary_dim) {
  const int half = rotary_dim / 2;
  for (int64_t t = 0; t < num_tokens; ++t) {
    const float* cs = cos_sin + static_cast<int64_t>(positions[t]) * rotary_dim;
    for (int h = 0; h < num_heads; ++h) {
      float* row = x + (t * num_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        // The operation order a kernel uses too (each product rounded, no FMA): bit-exact match.
        const float x1 = row[i];
        const float x2 = row[i + half];
        row[i] = x1 * cs[i] - x2 * cs[half + i];
        row[i + half] = x2 * cs[i] + x1 * cs[half + i];
      }
    }
  }
}

}  // namespace reference
}  // namespace fp8kv

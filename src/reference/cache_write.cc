// reference::write_kv_cache: the definition of how a K/V token is stored.
#include <cmath>
#include <vector>

#include "fp8kv/reference.h"
#include "reference/common.h"

namespace fp8kv::reference {
namespace {

// Converts one row of head_dim float channels into the pool at `offset`. `scale` is the
// dequantization scale (ignored for 16-bit storage): stored = satfinite_rne(x / scale), a NaN
// quotient +NaN (scales.h).
void store_row(void* pool, DType dtype, int64_t offset, const float* row, int head_dim, float scale) {
  for (int c = 0; c < head_dim; ++c) {
    const float x = is_fp8(dtype) ? detail::quantize_quotient(row[c], scale) : row[c];
    detail::store(pool, dtype, offset + c, x);
  }
}

// amax of one row; NaN is skipped (as fmaxf skips it on the GPU) and then stays NaN when stored.
float row_amax(const float* row, int head_dim) {
  float amax = 0.0f;
  for (int c = 0; c < head_dim; ++c) {
    const float a = std::fabs(row[c]);
    amax = a > amax ? a : amax;
  }
  return amax;
}

}  // namespace

void write_kv_cache(const CacheWriteArgs& args) {
  detail::require_cpu(args.cache.device, "cache");
  validate(args);
  const PagedKvLayer& cache = args.cache;
  const PagedLayout& layout = cache.layout;
  const int heads = layout.num_kv_heads;
  const int d = layout.head_dim;
  const int64_t n = args.key.size(0);
  const int64_t* slots = args.slot_mapping.ptr<const int64_t>();
  const float fp8_max_value = fp8_max(cache.dtype);
  std::vector<float> k(static_cast<size_t>(heads * d)), v(static_cast<size_t>(heads * d));
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] < 0) continue;
    for (int64_t i = 0; i < heads * d; ++i) {
      k[static_cast<size_t>(i)] = detail::load(args.key.data, args.key.dtype, t * heads * d + i);
      v[static_cast<size_t>(i)] = detail::load(args.value.data, args.value.dtype, t * heads * d + i);
    }
    if (args.rope.cos_sin.defined()) {
      apply_rope(k.data(), 1, heads, d, args.positions.ptr<const int32_t>() + t, args.rope.cos_sin.ptr<const float>(),
                 static_cast<int>(args.rope.cos_sin.size(1)));
    }
    const int64_t block = layout.slot_block(slots[t]);
    const int position = layout.slot_position(slots[t]);
    for (int h = 0; h < heads; ++h) {
      const float* k_row = k.data() + h * d;
      const float* v_row = v.data() + h * d;
      float k_scale = 1.0f, v_scale = 1.0f;
      if (cache.has_token_scales()) {
        k_scale = scale_from_amax(row_amax(k_row, d), fp8_max_value);
        v_scale = scale_from_amax(row_amax(v_row, d), fp8_max_value);
        cache.k_token_scale[layout.token_scale_offset(block, h, position)] = k_scale;
        cache.v_token_scale[layout.token_scale_offset(block, h, position)] = v_scale;
      } else if (is_fp8(cache.dtype)) {
        k_scale = stored_scale(cache.granularity, cache.k_scale, nullptr, layout, block, h, position);
        v_scale = stored_scale(cache.granularity, cache.v_scale, nullptr, layout, block, h, position);
      }
      const int64_t offset = layout.token_offset(block, h, position);
      store_row(cache.k, cache.dtype, offset, k_row, d, k_scale);
      store_row(cache.v, cache.dtype, offset, v_row, d, v_scale);
    }
  }
}

}  // namespace fp8kv::reference

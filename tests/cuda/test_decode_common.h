// A paged cache held twice, on the host (for the CPU reference) and on the device (for the
// kernels), for the cache-write and decode tests.
#pragma once

#include <cstdint>
#include <vector>

#include "fp8kv/paged_cache.h"
#include "gpu_test_utils.h"

namespace fp8kv::testing {

struct TwinCache {
  PagedLayout layout;
  int64_t num_blocks = 0;
  DType dtype = DType::kFp8E4M3;
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;

  std::vector<uint8_t> k, v;             // the pools' storage bytes (layout: paged_cache.h)
  std::vector<float> k_token, v_token;   // per_token scales, num_blocks * num_kv_heads * block_size
  std::vector<float> k_scale, v_scale;   // [1] / [num_kv_heads] (per_tensor / per_head)
  DeviceBuffer<uint8_t> dk, dv;
  DeviceBuffer<float> dk_token, dv_token, dk_scale, dv_scale;

  TwinCache(PagedLayout layout_, int64_t num_blocks_, DType dtype_, ScaleGranularity granularity_)
      : layout(layout_), num_blocks(num_blocks_), dtype(dtype_), granularity(granularity_) {
    const size_t elements = static_cast<size_t>(num_blocks * layout.block_elements());
    k.assign(elements * dtype_size(dtype), 0);
    v.assign(elements * dtype_size(dtype), 0);
    dk = DeviceBuffer<uint8_t>(k.size());
    dv = DeviceBuffer<uint8_t>(v.size());
    if (has_token_scales()) {
      const size_t n = static_cast<size_t>(num_blocks) * layout.num_kv_heads * layout.block_size;
      k_token.assign(n, 0.0f);
      v_token.assign(n, 0.0f);
      dk_token = DeviceBuffer<float>(n);
      dv_token = DeviceBuffer<float>(n);
    } else if (is_fp8(dtype)) {
      const size_t n = granularity == ScaleGranularity::kPerHead ? static_cast<size_t>(layout.num_kv_heads) : 1;
      k_scale.assign(n, 1.0f);
      v_scale.assign(n, 1.0f);
      dk_scale = DeviceBuffer<float>(n);
      dv_scale = DeviceBuffer<float>(n);
    }
  }

  bool has_token_scales() const { return is_fp8(dtype) && granularity == ScaleGranularity::kPerToken; }

  // Static scales from the amax of the data they will quantize (per tensor or per KV head).
  // `k_rows`/`v_rows`: [num_tokens, num_kv_heads, head_dim] float.
  void calibrate(const std::vector<float>& k_rows, const std::vector<float>& v_rows) {
    if (!is_fp8(dtype) || has_token_scales()) return;
    const int heads = layout.num_kv_heads;
    const int d = layout.head_dim;
    std::vector<float> k_amax(k_scale.size(), 0.0f), v_amax(v_scale.size(), 0.0f);
    for (size_t i = 0; i < k_rows.size(); ++i) {
      const size_t slot = granularity == ScaleGranularity::kPerHead ? (i / static_cast<size_t>(d)) % heads : 0;
      k_amax[slot] = std::max(k_amax[slot], std::fabs(k_rows[i]));
      v_amax[slot] = std::max(v_amax[slot], std::fabs(v_rows[i]));
    }
    for (size_t s = 0; s < k_scale.size(); ++s) {
      k_scale[s] = scale_from_amax(k_amax[s], fp8_max(dtype));
      v_scale[s] = scale_from_amax(v_amax[s], fp8_max(dtype));
    }
  }

  // Fills both pools (host and device) with the same bytes, e.g. a pattern the test can recognise.
  void fill(uint8_t byte) {
    std::fill(k.begin(), k.end(), byte);
    std::fill(v.begin(), v.end(), byte);
    std::fill(k_token.begin(), k_token.end(), -1.0f);
    std::fill(v_token.begin(), v_token.end(), -1.0f);
    upload();
  }

  void upload() {
    dk.upload(k);
    dv.upload(v);
    if (has_token_scales()) {
      dk_token.upload(k_token);
      dv_token.upload(v_token);
    }
    if (!k_scale.empty()) {
      dk_scale.upload(k_scale);
      dv_scale.upload(v_scale);
    }
  }

  PagedKvLayer host_layer() {
    PagedKvLayer c;
    c.layout = layout;
    c.num_blocks = num_blocks;
    c.dtype = dtype;
    c.granularity = granularity;
    c.device = Device::kCpu;
    c.k = k.data();
    c.v = v.data();
    if (has_token_scales()) {
      c.k_token_scale = k_token.data();
      c.v_token_scale = v_token.data();
    }
    if (!k_scale.empty()) {
      c.k_scale = k_scale.data();
      c.v_scale = v_scale.data();
    }
    return c;
  }

  PagedKvLayer device_layer() const {
    PagedKvLayer c;
    c.layout = layout;
    c.num_blocks = num_blocks;
    c.dtype = dtype;
    c.granularity = granularity;
    c.device = Device::kCuda;
    c.k = dk.get();
    c.v = dv.get();
    if (has_token_scales()) {
      c.k_token_scale = dk_token.get();
      c.v_token_scale = dv_token.get();
    }
    if (!k_scale.empty()) {
      c.k_scale = dk_scale.get();
      c.v_scale = dv_scale.get();
    }
    return c;
  }
};

inline const char* short_name(ScaleGranularity g) {
  return g == ScaleGranularity::kPerTensor ? "tensor" : g == ScaleGranularity::kPerHead ? "head" : "token";
}

}  // namespace fp8kv::testing

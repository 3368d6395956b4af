#include "fp8kv/kv_cache.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "core/device_memory.h"
#include "fp8kv/error.h"

namespace fp8kv {

// ---- Buffer ------------------------------------------------------------------------------------

Buffer::Buffer(Device device, size_t bytes) : bytes_(bytes), device_(device) {
  if (bytes == 0) return;
  if (device == Device::kCuda) {
    data_ = detail::device_malloc(bytes);
    return;
  }
  // calloc: zero-filled (an unwritten slot never holds NaN bits) and, for a large cache, the
  // zero pages are only touched when used.
  data_ = std::calloc(bytes, 1);
  if (data_ == nullptr) throw Error("fp8kv: host allocation of " + std::to_string(bytes) + " bytes failed");
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& other) noexcept : data_(other.data_), bytes_(other.bytes_), device_(other.device_) {
  other.data_ = nullptr;
  other.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    device_ = other.device_;
  }
  return *this;
}

void Buffer::release() {
  if (data_ == nullptr) return;
  if (device_ == Device::kCuda) {
    detail::device_free(data_);
  } else {
    std::free(data_);
  }
  data_ = nullptr;
  bytes_ = 0;
}

// ---- KvCache -----------------------------------------------------------------------------------

namespace {

const KvCacheSpec& validated(const KvCacheSpec& spec) {
  spec.validate();
  return spec;
}

void copy_in(const Buffer& dst, const void* src, size_t bytes) {
  if (dst.device() == Device::kCuda) {
    detail::copy_to_device(dst.data(), src, bytes);
  } else {
    std::memcpy(dst.data(), src, bytes);
  }
}

// Copies the first `row_bytes` of each of `rows` rows spaced `pitch` apart, within one buffer.
void copy_rows(const Buffer& buffer, size_t dst_offset, size_t src_offset, size_t pitch, size_t row_bytes,
               size_t rows) {
  char* base = static_cast<char*>(buffer.data());
  if (buffer.device() == Device::kCuda) {
    detail::copy_rows_on_device(base + dst_offset, base + src_offset, pitch, row_bytes, rows);
    return;
  }
  for (size_t r = 0; r < rows; ++r) std::memcpy(base + dst_offset + r * pitch, base + src_offset + r * pitch, row_bytes);
}

}  // namespace

KvCache::KvCache(const KvCacheSpec& spec, Device device)
    : spec_(validated(spec)), device_(device), allocator_(spec.num_blocks, spec.block_size) {
  const size_t pool_bytes =
      static_cast<size_t>(spec_.num_blocks) * static_cast<size_t>(spec_.layout().block_elements()) * dtype_size(spec_.dtype);
  const size_t token_scale_bytes =
      spec_.has_token_scales()
          ? static_cast<size_t>(spec_.num_blocks) * static_cast<size_t>(spec_.num_kv_heads) * spec_.block_size * sizeof(float)
          : 0;
  const int64_t static_count = static_scale_count(spec_.dtype, spec_.granularity, spec_.num_kv_heads);
  const std::vector<float> ones(static_cast<size_t>(static_count), 1.0f);
  for (int l = 0; l < spec_.num_layers; ++l) {
    k_pools_.emplace_back(device_, pool_bytes);
    v_pools_.emplace_back(device_, pool_bytes);
    k_token_scales_.emplace_back(device_, token_scale_bytes);
    v_token_scales_.emplace_back(device_, token_scale_bytes);
    k_static_.emplace_back(device_, ones.size() * sizeof(float));
    v_static_.emplace_back(device_, ones.size() * sizeof(float));
    if (!ones.empty()) {
      copy_in(k_static_.back(), ones.data(), ones.size() * sizeof(float));
      copy_in(v_static_.back(), ones.data(), ones.size() * sizeof(float));
    }
  }
}

PagedKvLayer KvCache::layer(int index) {
  FP8KV_REQUIRE(index >= 0 && index < spec_.num_layers, "layer", "must be in [0, ", spec_.num_layers, "), got ",
                index);
  const size_t l = static_cast<size_t>(index);
  PagedKvLayer view;
  view.layout = spec_.layout();
  view.num_blocks = spec_.num_blocks;
  view.dtype = spec_.dtype;
  view.granularity = spec_.granularity;
  view.device = device_;
  view.k = k_pools_[l].data();
  view.v = v_pools_[l].data();
  view.k_token_scale = static_cast<float*>(k_token_scales_[l].data());
  view.v_token_scale = static_cast<float*>(v_token_scales_[l].data());
  view.k_scale = static_cast<const float*>(k_static_[l].data());
  view.v_scale = static_cast<const float*>(v_static_[l].data());
  return view;
}

void KvCache::set_static_scales(int layer, const float* k_scales, const float* v_scales, int64_t count) {
  FP8KV_REQUIRE(layer >= 0 && layer < spec_.num_layers, "layer", "must be in [0, ", spec_.num_layers, "), got ",
                layer);
  const int64_t expected = static_scale_count(spec_.dtype, spec_.granularity, spec_.num_kv_heads);
  FP8KV_REQUIRE(count == expected, "count", "a ", kv_cache_dtype_name(spec_.dtype), " ",
                scale_granularity_name(spec_.granularity), " cache with ", spec_.num_kv_heads,
                " KV heads takes ", expected, " static scales per pool, got ", count);
  validate_scales(k_scales, count, "k_scales");
  validate_scales(v_scales, count, "v_scales");
  if (count == 0) return;
  copy_in(k_static_[static_cast<size_t>(layer)], k_scales, static_cast<size_t>(count) * sizeof(float));
  copy_in(v_static_[static_cast<size_t>(layer)], v_scales, static_cast<size_t>(count) * sizeof(float));
}

void KvCache::apply_copies(const std::vector<BlockCopy>& copies) {
  const size_t elem = dtype_size(spec_.dtype);
  const size_t heads = static_cast<size_t>(spec_.num_kv_heads);
  const size_t bs = static_cast<size_t>(spec_.block_size);
  const size_t row_elements = bs * static_cast<size_t>(spec_.head_dim);  // one head of one block
  for (const BlockCopy& c : copies) {
    FP8KV_REQUIRE(c.src >= 0 && c.src < spec_.num_blocks && c.dst >= 0 && c.dst < spec_.num_blocks, "copies",
                  "block ids must be in [0, ", spec_.num_blocks, "), got src ", c.src, " dst ", c.dst);
    FP8KV_REQUIRE(c.num_tokens >= 0 && c.num_tokens <= spec_.block_size, "copies", "num_tokens must be in [0, ",
                  spec_.block_size, "], got ", c.num_tokens);
  }
  for (const BlockCopy& c : copies) {
    const size_t tokens = static_cast<size_t>(c.num_tokens);
    if (tokens == 0) continue;
    for (int l = 0; l < spec_.num_layers; ++l) {
      const size_t i = static_cast<size_t>(l);
      // Each head's run inside a block starts with positions 0..tokens-1: one row per head.
      const size_t pitch = row_elements * elem;
      for (const Buffer* pool : {&k_pools_[i], &v_pools_[i]}) {
        copy_rows(*pool, static_cast<size_t>(c.dst) * heads * pitch, static_cast<size_t>(c.src) * heads * pitch, pitch,
                  tokens * static_cast<size_t>(spec_.head_dim) * elem, heads);
      }
      if (!spec_.has_token_scales()) continue;
      const size_t scale_pitch = bs * sizeof(float);
      for (const Buffer* scales : {&k_token_scales_[i], &v_token_scales_[i]}) {
        copy_rows(*scales, static_cast<size_t>(c.dst) * heads * scale_pitch,
                  static_cast<size_t>(c.src) * heads * scale_pitch, scale_pitch, tokens * sizeof(float), heads);
      }
    }
  }
}

size_t KvCache::allocated_bytes() const {
  size_t total = 0;
  for (const auto* buffers : {&k_pools_, &v_pools_, &k_token_scales_, &v_token_scales_, &k_static_, &v_static_}) {
    for (const Buffer& b : *buffers) total += b.size();
  }
  return total;
}

}  // namespace fp8kv

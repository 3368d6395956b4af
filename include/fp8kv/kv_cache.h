// A paged KV cache that owns its memory: every layer's K and V pools, per-token scale buffers,
// static (per-tensor / per-head) scales, and the block allocator. Memory lives on the host or on a
// CUDA device; allocated_bytes() is exactly what was allocated and equals the planner's figure.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "fp8kv/block_allocator.h"
#include "fp8kv/paged_cache.h"

namespace fp8kv {

// An owned byte buffer on the host or on a CUDA device. Device allocation needs a CUDA build;
// without one it throws Unsupported.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device device, size_t bytes);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void release();
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_ = Device::kCpu;
};

class KvCache {
 public:
  // Allocates spec.num_blocks blocks for every layer. Static scales start at 1.0 and must be set
  // (set_static_scales) for per_tensor / per_head FP8 unless 1.0 is really meant.
  KvCache(const KvCacheSpec& spec, Device device = Device::kCpu);

  const KvCacheSpec& spec() const { return spec_; }
  Device device() const { return device_; }
  PagedKvLayer layer(int index);
  BlockAllocator& allocator() { return allocator_; }
  const BlockAllocator& allocator() const { return allocator_; }

  // Sets layer `layer`'s K and V static scales (count = static_scale_count(...)); validated.
  // Host pointers; copied to the cache's device.
  void set_static_scales(int layer, const float* k_scales, const float* v_scales, int64_t count);

  // Applies block copies (from copy-on-write) to every layer's pools and token scales.
  void apply_copies(const std::vector<BlockCopy>& copies);

  // Every byte this cache allocated: pools, per-token scales, static scales.
  size_t allocated_bytes() const;

 private:
  KvCacheSpec spec_;
  Device device_;
  BlockAllocator allocator_;
  std::vector<Buffer> k_pools_, v_pools_, k_token_scales_, v_token_scales_, k_static_, v_static_;
};

}  // namespace fp8kv

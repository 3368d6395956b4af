// The paged KV cache: its layout, written once, and the view that the CPU reference and the CUDA
// kernels both index through.
//
// Layout of one layer's K pool (the V pool is identical), "HND" / head-major inside a block:
//
//     k[num_blocks][num_kv_heads][block_size][head_dim]      element type = storage dtype
//
// A sequence's tokens live in the blocks its block table lists; token t of a sequence is at
// block_table[t / block_size], position t % block_size. A *slot* is block * block_size + position
// and is what writers receive (slot < 0 means "padding token, skip").
//
// Why head-major: the decode kernel assigns one KV head to a group of threads, and for that head a
// block is one contiguous run of block_size * head_dim elements (2 KiB for bs=16, d=128, FP8), so
// every thread reads 16-byte vectors and a warp reads whole 512-byte rows; the query heads sharing
// the KV head (GQA) reuse each loaded vector from registers. The prefill kernel's TMA loads a
// [block_size, head_dim] tile of one head as one box.
//
// Per-token scales (ScaleGranularity::kPerToken) sit beside the pages in the same order:
//
//     k_token_scale[num_blocks][num_kv_heads][block_size]    float32
//
// Static scales (per_tensor: float[1], per_head: float[num_kv_heads]) are per layer.
#pragma once

#include <cstdint>

#include "fp8kv/dtype.h"
#include "fp8kv/macros.h"
#include "fp8kv/scales.h"
#include "fp8kv/tensor.h"

namespace fp8kv {

constexpr int kMinBlockSize = 8;
constexpr int kMaxBlockSize = 256;

// Index arithmetic for one layer's pools. Shared verbatim by the reference and the kernels.
struct PagedLayout {
  int32_t num_kv_heads = 0;
  int32_t block_size = 0;
  int32_t head_dim = 0;

  FP8KV_HOST_DEVICE int64_t block_elements() const {
    return static_cast<int64_t>(num_kv_heads) * block_size * head_dim;
  }
  // Element offset of (block, head, position in block, channel) in the K or V pool.
  FP8KV_HOST_DEVICE int64_t element_offset(int64_t block, int head, int position, int channel) const {
    return ((block * num_kv_heads + head) * block_size + position) * head_dim + channel;
  }
  // Offset of the first channel of a token: its head_dim channels follow contiguously.
  FP8KV_HOST_DEVICE int64_t token_offset(int64_t block, int head, int position) const {
    return element_offset(block, head, position, 0);
  }
  // Offset of a token's scale in a per-token scale buffer.
  FP8KV_HOST_DEVICE int64_t token_scale_offset(int64_t block, int head, int position) const {
    return (block * num_kv_heads + head) * block_size + position;
  }
  FP8KV_HOST_DEVICE int64_t slot_block(int64_t slot) const { return slot / block_size; }
  FP8KV_HOST_DEVICE int slot_position(int64_t slot) const { return static_cast<int>(slot % block_size); }
};

// Shape and format of a whole cache (all layers). Validated by validate().
struct KvCacheSpec {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;
  int64_t num_blocks = 0;
  DType dtype = DType::kFp8E4M3;  // storage: kBFloat16, kFloat16, kFp8E4M3, kFp8E5M2
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;  // ignored for 16-bit storage

  PagedLayout layout() const { return PagedLayout{num_kv_heads, block_size, head_dim}; }
  bool has_token_scales() const { return is_fp8(dtype) && granularity == ScaleGranularity::kPerToken; }
  // Throws InvalidArgument naming the field (block_size a power of two in [8, 256], positive
  // sizes, head_dim a multiple of 16 so that rows are whole 16-byte vectors in FP8, ...).
  void validate() const;
};

// One layer of a paged cache, as the kernels and the reference see it. Non-owning.
struct PagedKvLayer {
  PagedLayout layout;
  int64_t num_blocks = 0;
  DType dtype = DType::kFp8E4M3;
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;
  Device device = Device::kCpu;

  void* k = nullptr;  // [num_blocks, num_kv_heads, block_size, head_dim]
  void* v = nullptr;  // [num_blocks, num_kv_heads, block_size, head_dim]
  // per_token only: [num_blocks, num_kv_heads, block_size] float32, written with the tokens.
  float* k_token_scale = nullptr;
  float* v_token_scale = nullptr;
  // per_tensor: [1]; per_head: [num_kv_heads]; null for per_token and 16-bit storage.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  bool has_token_scales() const { return is_fp8(dtype) && granularity == ScaleGranularity::kPerToken; }
  // Throws InvalidArgument("cache", ...) if pointers are missing for the dtype/granularity.
  void validate(const char* argument = "cache") const;
};

// Dequantization scale of (head, token) for one pool, whatever the granularity. Host and device.
FP8KV_HOST_DEVICE float stored_scale(ScaleGranularity g, const float* static_scale, const float* token_scale,
                                     const PagedLayout& layout, int64_t block, int head, int position) {
  switch (g) {
    case ScaleGranularity::kPerTensor: return static_scale[0];
    case ScaleGranularity::kPerHead: return static_scale[head];
    case ScaleGranularity::kPerToken: return token_scale[layout.token_scale_offset(block, head, position)];
  }
  return 1.0f;
}

}  // namespace fp8kv

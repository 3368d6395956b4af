// The paged KV cache: its layout, written once, and the view that the CPU reference and the CUDA
// kernels both index through.
//
// Layout of one layer's K pool (the V pool is identical): a block of block_size tokens is stored as
// block_size / sub_block_size sub-blocks, head-major inside each sub-block:
//
//     k[num_blocks][block_size / sub_block_size][num_kv_heads][sub_block_size][head_dim]
//
// with sub_block_size = block_size for 16-bit storage (plain "HND": [num_blocks][num_kv_heads]
// [block_size][head_dim]) and min(block_size, 16) for FP8 (paged_layout() chooses). A sequence's
// tokens live in the blocks its block table lists; token t of a sequence is at
// block_table[t / block_size], position t % block_size. A *slot* is block * block_size + position
// and is what writers receive (slot < 0 means "padding token, skip").
//
// Why head-major: the decode kernel assigns one KV head to a group of threads, and for that head a
// sub-block is one contiguous run of sub_block_size * head_dim elements (2 KiB for 16 tokens,
// d=128, FP8), so every thread reads 16-byte vectors and a warp reads whole 512-byte rows; the
// query heads sharing the KV head (GQA) reuse each loaded vector from registers. The prefill
// kernel's TMA loads a [sub_block_size, head_dim] tile of one head as one box.
// Why FP8 sub-blocks of 16 tokens: measured on the H100, FP8 decode over 64-token blocks ran 6-18%
// slower than over 16-token blocks when a head's data was one 8 KiB run per 64 KiB block, and at
// 16-token blocks' speed with the same blocks stored as 16-token sub-blocks; BF16 decode is the
// other way round (faster with whole-block runs), so 16-bit storage keeps plain HND.
//
// Per-token scales (ScaleGranularity::kPerToken) sit beside the pages in the same order:
//
//     k_token_scale[num_blocks][block_size / sub_block_size][num_kv_heads][sub_block_size]    float32
//
// (as sub-blocks for FP8 blocks of more than 16 tokens: a 16-token tile's scales for one head are
// 64 contiguous bytes, and the heads' rows of one sub-block share 128-byte lines, as at block size
// 16, where the decode blocks of neighbouring heads read them at about the same time).
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

// FP8 pools of blocks larger than this store them as sub-blocks of this many tokens.
constexpr int kFp8SubBlockSize = 16;

// Index arithmetic for one layer's pools. Shared verbatim by the reference and the kernels.
// Build it with paged_layout() (which picks sub_block_size for the storage dtype);
// PagedKvLayer::validate() checks all sizes.
// The two 16-bit sizes keep the struct at 12 bytes: the decode kernel's parameter block embeds it,
// and a 16-byte layout moved the fields after it, which took ptxas from 128 to 132-137 registers
// in the FP8 head-dim-128 decode kernels (3 instead of 4 blocks per SM; batch 128 x 4k 1.2% slower
// on the H100).
struct PagedLayout {
  int32_t num_kv_heads = 0;
  int16_t block_size = 0;
  int16_t sub_block_size = 0;  // block_size for 16-bit storage, min(block_size, 16) for FP8
  int32_t head_dim = 0;

  FP8KV_HOST_DEVICE int64_t block_elements() const {
    return static_cast<int64_t>(num_kv_heads) * block_size * head_dim;
  }
  // A token's row inside its block, in the pools' order: a row is the token's head_dim channels in
  // the K or V pool, or its one scale in a per-token scale buffer. With position = s *
  // sub_block_size + r this is
  //   (s * num_kv_heads + head) * sub_block_size + r,
  // written without a division: position covers s * sub_block_size + r rows, and (position rounded
  // down to its sub-block) * (num_kv_heads - 1) rows skip the other heads of the earlier sub-blocks
  // (zero when sub_block_size == block_size).
  FP8KV_HOST_DEVICE int32_t row_in_block(int head, int position) const {
    const int sub_block_start = position & -sub_block_size;
    return head * sub_block_size + position + sub_block_start * (num_kv_heads - 1);
  }
  // Element offset of the first channel of a token in the K or V pool: its head_dim channels follow
  // contiguously. The offset inside a block fits 32 bits (validate() bounds block_elements()).
  FP8KV_HOST_DEVICE int64_t token_offset(int64_t block, int head, int position) const {
    const int32_t in_block = row_in_block(head, position) * head_dim;
    return block * block_elements() + in_block;
  }
  FP8KV_HOST_DEVICE int64_t element_offset(int64_t block, int head, int position, int channel) const {
    return token_offset(block, head, position) + channel;
  }
  // Offset of a token's scale in a per-token scale buffer.
  FP8KV_HOST_DEVICE int64_t token_scale_offset(int64_t block, int head, int position) const {
    return block * num_kv_heads * block_size + row_in_block(head, position);
  }
  FP8KV_HOST_DEVICE int64_t slot_block(int64_t slot) const { return slot / block_size; }
  FP8KV_HOST_DEVICE int slot_position(int64_t slot) const { return static_cast<int>(slot % block_size); }
};

// The layout of a pool of `storage` elements: 16-bit storage keeps whole blocks head-major, FP8
// stores blocks of more than kFp8SubBlockSize tokens as sub-blocks of that many tokens. Throws
// InvalidArgument("block_size") unless block_size is a power of two in [kMinBlockSize,
// kMaxBlockSize].
PagedLayout paged_layout(DType storage, int num_kv_heads, int block_size, int head_dim);

// Shape and format of a whole cache (all layers). Validated by validate().
struct KvCacheSpec {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 16;
  int64_t num_blocks = 0;
  DType dtype = DType::kFp8E4M3;  // storage: kBFloat16, kFloat16, kFp8E4M3, kFp8E5M2
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;  // ignored for 16-bit storage

  PagedLayout layout() const { return paged_layout(dtype, num_kv_heads, block_size, head_dim); }
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

  void* k = nullptr;  // [num_blocks, block_size / sub_block_size, num_kv_heads, sub_block_size, head_dim]
  void* v = nullptr;  // same
  // per_token only: [num_blocks, block_size / sub_block_size, num_kv_heads, sub_block_size] float32,
  // written with the tokens.
  float* k_token_scale = nullptr;
  float* v_token_scale = nullptr;
  // per_tensor: [1]; per_head: [num_kv_heads]; null for per_token and 16-bit storage.
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;

  bool has_token_scales() const { return is_fp8(dtype) && granularity == ScaleGranularity::kPerToken; }
  // Throws InvalidArgument("cache", ...) if pointers are missing for the dtype/granularity or the
  // layout's sizes break their rules.
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

// Prefill (context) attention on Hopper tensor cores, for tensors on a CUDA device.
//
// The kernels follow FlashAttention-3: TMA loads into a multi-stage shared-memory pipeline driven
// by a producer warpgroup, two or three consumer warpgroups issuing wgmma (QGMMA for FP8, HGMMA for
// BF16), FP32 online softmax, P quantised to FP8 for the P.V product, and V transposed in shared memory
// because FP8 wgmma only reads K-major operands. They need an sm_90a device (H100/H200).
//
// Supported (everything else throws Unsupported or InvalidArgument naming the argument):
//   prefill:        q/k/v all FP8 E4M3 or all BF16; head_dim 64 or 128; any GQA ratio; causal or
//                   not; varlen through cu_seqlens_q/k (device int32); bf16 out. FP8 descales are
//                   undefined (1.0), [1] or [num_kv_heads] float32 on the device.
//   paged_prefill:  q FP8 E4M3 (use rope_quantize to produce it), cache FP8 E4M3 with any scale
//                   granularity (per-token K scales scale S's columns; per-token V scales are
//                   folded into P before it is quantised, normalised by the row's largest visible
//                   V scale in the 128-key tile, which needs two-level accumulation: it is always
//                   on with per-token scales), block_size 8..256, head_dim 64 or 128.
// Device-resident index tensors (cu_seqlens, seq_lens, block_tables) are trusted: validate()
// checks them only on the host.
#pragma once

#include <cstdint>

#include "fp8kv/attention.h"
#include "fp8kv/error.h"

namespace fp8kv::cuda {

struct PrefillOptions {
  // FP8 only. wgmma accumulates FP8 products with reduced precision; when on, the P.V product of
  // a group of K/V tiles (4 tiles of 128 keys in the dense 128 x 128 head-dim-128 kernel, one
  // tile elsewhere: 256 keys in the 128 x 256 kernel, 128 in the others) is accumulated from zero and then added to an FP32
  // register accumulator, so the reduced-precision chain is never longer than 512 keys (in CTAs
  // that read more than one_level_max_keys keys; shorter CTAs have short chains anyway).
  bool two_level_accumulation = true;
  // With two-level accumulation on, a CTA that reads at most this many keys (counted in whole
  // K/V tiles) accumulates in one level: its reduced-precision chain is that short anyway, and
  // the accumulator's error grows with the chain's length (tests/cuda/test_prefill_accuracy.cc,
  // LongContextRetrieval, H100: one-level adds 0.4% to the error over 512 keys, 0.7% over 1024,
  // 5x over 32k). Skipping the per-tile fold there makes short sequences as fast as one-level
  // (Qwen3-8B batch 1 x 512: 14.0 against 15.3 us). 0 = two-level in every CTA. Must be >= 0.
  int one_level_max_keys = 512;
  // Keys per K/V tile: 0 = chosen per launch (prefill_tiles), 128, or 256. 256-key tiles exist
  // for dense FP8 E4M3 prefill at head dim 128 only (elsewhere 256 is an InvalidArgument): fewer
  // instructions per key, but up to 128 more masked keys per query block on the causal diagonal
  // and coarser work tiles.
  int key_tile = 0;
  // Query rows per CTA: 0 = chosen per launch (prefill_tiles), 128, or 192. 192 rows (three
  // consumer warpgroups) exist for dense FP8 E4M3 prefill at head dims 64 and 128 with 128-key tiles
  // (elsewhere 192 is an InvalidArgument): a third softmax warp per SM sub-partition hides more of
  // the softmax's latency, but the query blocks are coarser.
  int query_tile = 0;
  // Used by rope_quantize: multiply Q and K by the same random-sign Hadamard matrix
  // (H * diag(signs) / sqrt(head_dim)) before quantising, which spreads outlier channels over all
  // channels. Q.K is unchanged because the matrix is orthogonal; V is not rotated.
  bool incoherent_processing = false;
  uint64_t hadamard_seed = 0x5eed5eedull;  // picks the random signs

  // Throws InvalidArgument naming the option that breaks its rule. Inline: the Python package
  // checks options on its CPU path too, where this library's CUDA code is not built.
  void validate() const {
    FP8KV_REQUIRE(one_level_max_keys >= 0, "one_level_max_keys", "must be >= 0 (0 = two-level in every CTA), got ",
                  one_level_max_keys);
    FP8KV_REQUIRE(key_tile == 0 || key_tile == 128 || key_tile == 256, "key_tile",
                  "must be 0 (chosen per launch), 128 or 256, got ", key_tile);
    FP8KV_REQUIRE(query_tile == 0 || query_tile == 128 || query_tile == 192, "query_tile",
                  "must be 0 (chosen per launch), 128 or 192, got ", query_tile);
    FP8KV_REQUIRE(query_tile != 192 || key_tile != 256, "query_tile",
                  "192-row query tiles go with 128-key tiles, got key_tile 256");
  }
};

// True if this build has a prefill kernel for the input dtype and head dim (dense or paged).
bool prefill_supported(DType dtype, int head_dim, bool paged);

// The tiles cuda::prefill(args, options) uses: query rows per CTA x keys per K/V tile.
struct PrefillTiles {
  int query = 128;
  int key = 128;
};
// Options that set a tile size are followed; what they leave at 0 is chosen. For FP8 E4M3 at head
// dim 128 the choice is 192 x 128 from 512 keys per sequence (total_k / batch) and 1024 128-row
// query blocks x query heads, or from 4096 keys and 512 blocks x heads; with 128-row query tiles
// asked for, 128 x 256 from 2048 keys and 2048 blocks x heads. At head dim 64 it is 192 x 128 from
// 2048 keys and 512 blocks x heads. Everything else gets 128 x 128. The thresholds are measured
// (H100, README "Prefill attention"): below them 128 x 128 tiles were as fast or faster.
// Throws InvalidArgument (naming "key_tile" or "query_tile") for a size no kernel has here.
PrefillTiles prefill_tiles(const PrefillArgs& args, const PrefillOptions& options = {});
// prefill_tiles(args, options).key.
int prefill_key_tile(const PrefillArgs& args, const PrefillOptions& options = {});

// Dense variable-length attention. All tensors on the same CUDA device; `stream` is a cudaStream_t.
void prefill(const PrefillArgs& args, const PrefillOptions& options = {}, void* stream = nullptr);

// Chunked prefill / prefix reuse over the FP8 paged cache (the new tokens must already be in it).
void paged_prefill(const PagedPrefillArgs& args, const PrefillOptions& options = {}, void* stream = nullptr);

// Fused RoPE + Q quantisation + K/V cache write, the step before paged_prefill:
//   q_out = fp8(rope(q) [* Hadamard] / q_scale), with q_scale computed here per KV-head group
//           (q_scale[g] = max(amax over the group's query heads and tokens, kAmaxFloor) / 448);
//   the cache receives rope(k) [* Hadamard] and v, quantised as write_kv_cache would.
struct RopeQuantizeArgs {
  TensorRef q;             // [num_tokens, num_q_heads, head_dim] bf16
  TensorRef k;             // [num_tokens, num_kv_heads, head_dim] bf16
  TensorRef v;             // [num_tokens, num_kv_heads, head_dim] bf16
  TensorRef positions;     // [num_tokens] int32
  RopeTable rope;          // [max_position, rotary_dim] float32
  TensorRef slot_mapping;  // [num_tokens] int64; < 0 = padding token, skipped
  PagedKvLayer cache;      // FP8 E4M3 cache layer
  TensorRef q_out;         // [num_tokens, num_q_heads, head_dim] fp8_e4m3
  TensorRef q_scale;       // [num_kv_heads] float32, written (the q_descale for paged_prefill)
};
void rope_quantize(const RopeQuantizeArgs& args, const PrefillOptions& options = {}, void* stream = nullptr);

// Quantises a dense bf16 tensor [num_tokens, num_heads, head_dim] to FP8 E4M3 with one scale per
// group of heads (scale has `num_groups` entries, num_heads % num_groups == 0), optionally after the
// random-sign Hadamard rotation of PrefillOptions. Used to feed prefill() from bf16 activations.
void quantize_heads(const TensorRef& x, const TensorRef& out, const TensorRef& scale, bool hadamard,
                    uint64_t hadamard_seed, void* stream = nullptr);

}  // namespace fp8kv::cuda

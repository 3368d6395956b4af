// The attention operations fp8kv provides, as plain argument structs.
//
// The same structs feed the CPU reference (include/fp8kv/reference.h) and the CUDA kernels
// (include/fp8kv/cuda.h): the device of the tensors picks the implementation. Shapes are given on
// each field. All tensors are dense and row-major.
//
// Conventions:
//   * softmax_scale multiplies q.k before the softmax (usually 1/sqrt(head_dim)).
//   * Causal masking with different query and key lengths is aligned to the bottom right, as in
//     FlashAttention: query i of a sequence with len_q queries and len_k keys sees keys
//     j <= i + (len_k - len_q).
//   * A sequence with zero keys produces an all-zero output row (defined, not an error).
//   * FP8 inputs come with descale factors (see scales.h): x ~= float(stored) * descale.
#pragma once

#include <cstdint>

#include "fp8kv/paged_cache.h"
#include "fp8kv/tensor.h"

namespace fp8kv {

// Rotary position embedding, as Llama / Qwen3 apply it in Hugging Face transformers: the "rotate
// half" (GPT-NeoX) pairing of channel i with channel i + rotary_dim/2.
// The table holds cos and sin per position so that every scaling variant (Llama-3's included) is
// computed once on the host by build_rope_table (reference.h) and read, not recomputed, by kernels.
struct RopeTable {
  TensorRef cos_sin;  // [max_position, rotary_dim] float32: cos in [:, :rotary_dim/2], sin in [:, rotary_dim/2:]
};

// Writes new K/V tokens into their slots of one layer's paged cache, converting to the cache's
// storage dtype. For per_token FP8 the scale is computed from each (token, head)'s amax; for
// per_tensor / per_head the cache's static scales are used.
struct CacheWriteArgs {
  TensorRef key;           // [num_tokens, num_kv_heads, head_dim] bf16/fp16 (float32 on CPU too)
  TensorRef value;         // [num_tokens, num_kv_heads, head_dim] same dtype as key
  TensorRef slot_mapping;  // [num_tokens] int64; slot = block * block_size + position; < 0 = skip
  PagedKvLayer cache;
  // Optional RoPE applied to K before conversion (Q is handled by the prefill path's Q quantizer).
  TensorRef positions;     // [num_tokens] int32, required iff rope.cos_sin is defined
  RopeTable rope;
};

// One query token per sequence against that sequence's pages.
struct DecodeArgs {
  TensorRef q;             // [batch, num_q_heads, head_dim] bf16/fp16 (float32 on CPU too)
  PagedKvLayer cache;
  TensorRef block_tables;  // [batch, max_blocks_per_seq] int32
  TensorRef seq_lens;      // [batch] int32: keys per sequence (0 = all-zero output)
  TensorRef out;           // [batch, num_q_heads, head_dim] bf16/fp16 (float32 on CPU too)
  float softmax_scale = 0.0f;
};

// Dense variable-length attention (the prefill of fresh prompts).
struct PrefillArgs {
  TensorRef q;             // [total_q, num_q_heads, head_dim] fp32/bf16/fp16/fp8
  TensorRef k;             // [total_k, num_kv_heads, head_dim] same dtype as q
  TensorRef v;             // [total_k, num_kv_heads, head_dim] same dtype as q
  TensorRef cu_seqlens_q;  // [batch + 1] int32, cumulative query lengths, starts at 0
  TensorRef cu_seqlens_k;  // [batch + 1] int32, cumulative key lengths, starts at 0
  TensorRef out;           // [total_q, num_q_heads, head_dim] bf16 (fp32/fp16 on CPU too)
  float softmax_scale = 0.0f;
  bool causal = true;
  // FP8 only: descale factors, float32 [1] (per tensor) or [num_kv_heads] (per KV head; for q,
  // query head h uses entry h / (num_q_heads / num_kv_heads)). Undefined means 1.0.
  TensorRef q_descale, k_descale, v_descale;
};

// Chunked prefill / prefix reuse: new query tokens attend to their sequence's pages, which hold
// the cached prefix followed by the new tokens themselves (written first with CacheWriteArgs).
// Query i of sequence b (len_q queries, seq_len keys) sees keys j <= i + (seq_len - len_q).
struct PagedPrefillArgs {
  TensorRef q;             // [total_q, num_q_heads, head_dim] fp32/bf16/fp16/fp8
  PagedKvLayer cache;
  TensorRef block_tables;  // [batch, max_blocks_per_seq] int32
  TensorRef cu_seqlens_q;  // [batch + 1] int32
  TensorRef seq_lens;      // [batch] int32: keys per sequence (prefix + new tokens), >= len_q
  TensorRef out;           // [total_q, num_q_heads, head_dim] bf16 (fp32/fp16 on CPU too)
  float softmax_scale = 0.0f;
  TensorRef q_descale;     // FP8 q only: [1] or [num_kv_heads] float32; undefined means 1.0
};

}  // namespace fp8kv

namespace fp8kv {

// Argument validation shared by every backend (called by the CPU reference and the CUDA host
// code). Checks ranks, dims, dtypes, devices, the GQA head ratio, head dims, scales; and, for the
// tensors that live on the host, their contents (block-table entries inside [0, num_blocks),
// sequence lengths inside their block tables, monotone cumulative lengths). Throws
// InvalidArgument naming the field.
void validate(const CacheWriteArgs& args);
void validate(const DecodeArgs& args);
void validate(const PrefillArgs& args);
void validate(const PagedPrefillArgs& args);

}  // namespace fp8kv

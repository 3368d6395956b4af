// The memory planner: how many KV tokens and sequences fit in a memory budget. Its byte counts are
// exactly what KvCache allocates (a test allocates the planned cache and compares).
//
// Per layer and block:   2 (K and V) * block_size * num_kv_heads * head_dim * elem_size
//   + per_token scales:  2 * block_size * num_kv_heads * 4
// Fixed per layer:       2 * static_scale_count * 4   (per_tensor: 1, per_head: num_kv_heads)
#pragma once

#include <cstdint>
#include <string>

#include "fp8kv/dtype.h"
#include "fp8kv/paged_cache.h"
#include "fp8kv/scales.h"

namespace fp8kv {

// The attention-relevant shape of a decoder-only model.
struct ModelShape {
  std::string name;
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kBFloat16;  // the model's activation dtype ("auto" storage)
  int64_t max_position = 0;       // max_position_embeddings, 0 if unknown
};

// Presets: "qwen3-0.6b", "qwen3-8b", "llama-3.1-8b", "llama-3.1-70b".
ModelShape model_preset(const std::string& name);
// Reads num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim (or hidden_size /
// heads), torch_dtype / dtype, max_position_embeddings from a Hugging Face config.json.
ModelShape model_shape_from_config(const std::string& config_json_path);
// A preset name, a config.json path, or a model directory holding config.json.
ModelShape resolve_model_shape(const std::string& name_or_path);

struct KvPlan {
  DType dtype = DType::kFp8E4M3;
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;
  int block_size = 16;
  int64_t budget_bytes = 0;
  int64_t bytes_per_token = 0;        // all layers, K and V, per-token scales included
  int64_t bytes_per_block = 0;        // bytes_per_token * block_size
  int64_t token_scale_bytes_per_token = 0;  // the per-token-scale part of bytes_per_token
  int64_t fixed_bytes = 0;            // static scales, all layers
  int64_t num_blocks = 0;
  int64_t max_tokens = 0;             // num_blocks * block_size
  int64_t total_bytes = 0;            // fixed_bytes + num_blocks * bytes_per_block: what is allocated

  // Sequences of `context` tokens that fit at once (each needs ceil(context / block_size) blocks).
  int64_t max_sequences(int64_t context) const;
};

// Throws InvalidArgument for a budget too small for one block, a bad block size, a non-storage dtype.
KvPlan plan_kv_cache(const ModelShape& model, int64_t budget_bytes, DType dtype, ScaleGranularity granularity,
                     int block_size);

// The cache `plan` sizes for `model`: KvCache(kv_cache_spec(plan, model)) allocates plan.total_bytes.
KvCacheSpec kv_cache_spec(const KvPlan& plan, const ModelShape& model);

// "40GiB", "512MiB", "1.5GB", "1073741824" -> bytes. Throws InvalidArgument(argument, ...).
int64_t parse_memory_size(const std::string& text, const std::string& argument = "memory");

}  // namespace fp8kv

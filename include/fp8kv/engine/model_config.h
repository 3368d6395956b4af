// A decoder-only model's configuration, read from a Hugging Face config.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp8kv/dtype.h"
#include "fp8kv/reference.h"

namespace fp8kv::engine {

enum class Architecture : uint8_t { kLlama, kQwen2, kQwen3 };

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;  // LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;           // config "head_dim", else hidden_size / num_attention_heads
  int vocab_size = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;            // rope_theta, rope_scaling (llama3); rotary_dim = head_dim
  bool tie_word_embeddings = false;
  bool qk_norm = false;       // Qwen3: RMSNorm over head_dim on q and k before RoPE
  bool qkv_bias = false;      // Qwen2: q/k/v projections have biases
  DType dtype = DType::kBFloat16;  // torch_dtype / dtype
  int64_t max_position = 0;
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;
  // The checkpoint declares an FP8 KV cache (quantization_config.kv_cache_scheme with
  // type "float" and num_bits 8, as llm-compressor writes it): FP8 turns on by itself.
  bool declares_fp8_kv_cache = false;
};

// Parses `<dir>/config.json`. Throws FileError naming the file and the field for a missing or
// malformed field, Unsupported for an architecture that is not one of the three above.
ModelConfig load_model_config(const std::string& model_dir);

}  // namespace fp8kv::engine

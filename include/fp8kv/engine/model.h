// A Llama-family decoder (Llama, Qwen2 with q/k/v biases, Qwen3 with QK-norm) over the paged KV
// cache, written once over the Backend operations.
//
// One forward call runs one engine step: any mix of prefill chunks and decode tokens of several
// sequences, flattened into `total_q` rows. Each sequence's new tokens are written to the cache
// first; its queries then attend to all its pages (prefix + new tokens, causal).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fp8kv/engine/backend.h"
#include "fp8kv/engine/checkpoint.h"
#include "fp8kv/engine/model_config.h"
#include "fp8kv/kv_cache.h"
#include "fp8kv/planner.h"

namespace fp8kv::engine {

// One engine step on the host, built by the scheduler.
struct StepBatch {
  std::vector<int32_t> token_ids;     // [total_q]
  std::vector<int32_t> positions;     // [total_q]: position of each token in its sequence
  std::vector<int64_t> slots;         // [total_q]: cache slot of each token
  std::vector<int32_t> cu_seqlens_q;  // [num_seqs + 1]
  std::vector<int32_t> seq_lens;      // [num_seqs]: cached prefix + new tokens
  std::vector<int32_t> block_tables;  // [num_seqs, max_blocks_per_seq], padded with 0
  int32_t max_blocks_per_seq = 0;
  std::vector<int32_t> logit_rows;    // rows of token_ids whose next-token logits are wanted

  int32_t num_seqs() const { return static_cast<int32_t>(seq_lens.size()); }
  int32_t total_q() const { return static_cast<int32_t>(token_ids.size()); }
  // Appends one sequence's chunk: `tokens` at positions start.. with their slots, and its table.
  void add_sequence(const std::vector<int32_t>& tokens, int32_t start, const std::vector<int64_t>& token_slots,
                    const std::vector<int32_t>& table, bool want_logits);
  // Pads every block table to the longest one (call once after the last add_sequence).
  void finalize();

 private:
  std::vector<std::vector<int32_t>> tables_;
};

class Model {
 public:
  // Loads and converts the weights onto `backend` (float32 on the CPU backend, bf16 on CUDA). Every
  // tensor is checked for presence and shape before the first byte is copied to the device.
  // `max_position` sizes the RoPE table (0 = the config's max_position_embeddings).
  Model(const ModelConfig& config, const Checkpoint& checkpoint, Backend& backend, int64_t max_position = 0);
  // Random weights generated on the backend's device: N(0, 0.02) matrices and unit norms (the
  // engine benchmark; no checkpoint needed).
  static Model random(const ModelConfig& config, Backend& backend, uint64_t seed, int64_t max_position);

  // Runs one step; `logits` [batch.logit_rows.size(), vocab] float32 on the backend's device.
  void forward(const StepBatch& batch, KvCache& cache, const TensorRef& logits);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return backend_; }
  int64_t max_position() const { return max_position_; }
  // Bytes of weights held on the device.
  int64_t weight_bytes() const { return weight_bytes_; }

  Model(Model&&) = default;

 private:
  struct Layer {
    DeviceTensor input_norm, q_proj, k_proj, v_proj, q_bias, k_bias, v_bias, q_norm, k_norm, o_proj;
    DeviceTensor post_norm, gate_proj, up_proj, down_proj;
  };
  Model(const ModelConfig& config, Backend& backend, int64_t max_position);
  void allocate_weights();
  void ensure_workspace(int32_t total_q, int32_t num_seqs, int32_t max_blocks, int32_t num_logits);

  ModelConfig config_;
  Backend& backend_;
  int64_t max_position_ = 0;
  int64_t weight_bytes_ = 0;
  int64_t steps_ = 0;
  DeviceTensor embed_, final_norm_, lm_head_, rope_table_;
  std::vector<Layer> layers_;

  // Step workspace, grown on demand.
  int32_t cap_q_ = 0, cap_seqs_ = 0, cap_blocks_ = 0, cap_logits_ = 0;
  DeviceTensor ids_, positions_, slots_, cu_seqlens_q_, seq_lens_, block_tables_, row_block_tables_, row_seq_lens_,
      logit_rows_;
  DeviceTensor hidden_, normed_, q_, k_, v_, attn_, proj_, gate_, up_, act_, last_hidden_;
};

// How the KV cache stores K/V for a model, resolved from the user's flags and the checkpoint.
struct KvCacheFormat {
  DType dtype = DType::kBFloat16;
  ScaleGranularity granularity = ScaleGranularity::kPerTensor;
  // Calibrated static scales from the checkpoint (per_tensor: 1 per layer, per_head: num_kv_heads
  // per layer), [num_layers][count]; empty for per_token and 16-bit storage.
  std::vector<std::vector<float>> k_scales, v_scales;
  std::string source;  // why this format was chosen, for the memory-plan printout
};

// kv_cache_dtype: "auto" | "fp8" | "fp8_e4m3" | "fp8_e5m2" | "bf16" | "fp16".
// kv_scales: "" (choose) | "per_tensor" | "per_head" | "per_token".
// Rules: "auto" is the model dtype unless the config declares an FP8 KV-cache scheme, which turns
// FP8 E4M3 on. FP8 uses the checkpoint's k_scale/v_scale tensors when present (scalar ->
// per_tensor, one per KV head -> per_head); without them it uses per-token dynamic scales. Asking
// for per_tensor/per_head without calibrated scales is an error (never a silent 1.0).
KvCacheFormat resolve_kv_cache_format(const ModelConfig& config, const Checkpoint* checkpoint,
                                      const std::string& kv_cache_dtype, const std::string& kv_scales);

// The planner's view of a model.
ModelShape model_shape(const ModelConfig& config);

// Allocates the cache on the backend's device (num_blocks from the plan) and installs the
// format's static scales.
KvCache make_kv_cache(const ModelConfig& config, const KvCacheFormat& format, int64_t num_blocks, int block_size,
                      Device device);

}  // namespace fp8kv::engine

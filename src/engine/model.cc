#include "fp8kv/engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "fp8kv/error.h"
#include "fp8kv/half.h"
#include "fp8kv/reference.h"

namespace fp8kv::engine {
namespace {

// A [dims] view of the first elements of a workspace tensor (workspaces are sized for the largest
// step seen so far; a step uses a prefix of each).
TensorRef slice(const DeviceTensor& t, std::initializer_list<int64_t> dims) {
  TensorRef ref = t.ref();
  ref.ndim = static_cast<int>(dims.size());
  int64_t count = 1;
  size_t i = 0;
  for (int64_t d : dims) {
    ref.shape[i++] = d;
    count *= d;
  }
  FP8KV_REQUIRE(count <= t.numel(), "workspace", "view of ", count, " elements exceeds ", t.numel());
  return ref;
}

float element_as_float(const CheckpointTensor& t, size_t i) {
  switch (t.dtype) {
    case DType::kFloat32: return static_cast<const float*>(t.data)[i];
    case DType::kBFloat16: return static_cast<const Bf16*>(t.data)[i].to_float();
    case DType::kFloat16: return static_cast<const Fp16*>(t.data)[i].to_float();
    default: break;
  }
  throw FileError(t.file, "tensor '" + t.name + "' has dtype " + dtype_name(t.dtype) +
                              "; weights must be float32, bfloat16 or float16");
}

// Converts a checkpoint tensor to the backend's weight dtype on the host, then copies it over.
void upload_weight(Backend& backend, const CheckpointTensor& src, const DeviceTensor& dst) {
  const size_t count = static_cast<size_t>(dst.numel());
  const DType want = dst.ref().dtype;
  if (src.dtype == want) {
    backend.copy_from_host(dst.ref(), src.data);
    return;
  }
  std::vector<uint8_t> staging(count * dtype_size(want));
  for (size_t i = 0; i < count; ++i) {
    const float x = element_as_float(src, i);
    if (want == DType::kFloat32) {
      reinterpret_cast<float*>(staging.data())[i] = x;
    } else if (want == DType::kBFloat16) {
      reinterpret_cast<Bf16*>(staging.data())[i] = Bf16::from_float(x);
    } else {
      throw Unsupported(std::string("weights kept as ") + dtype_name(want));
    }
  }
  backend.copy_from_host(dst.ref(), staging.data());
}

std::string layer_name(int i, const char* suffix) { return "model.layers." + std::to_string(i) + "." + suffix; }

}  // namespace

void StepBatch::add_sequence(const std::vector<int32_t>& tokens, int32_t start, const std::vector<int64_t>& token_slots,
                             const std::vector<int32_t>& table, bool want_logits) {
  FP8KV_REQUIRE(!tokens.empty() && tokens.size() == token_slots.size(), "tokens",
                "a sequence adds at least one token, with one slot each");
  if (cu_seqlens_q.empty()) cu_seqlens_q.push_back(0);
  for (size_t i = 0; i < tokens.size(); ++i) {
    token_ids.push_back(tokens[i]);
    positions.push_back(start + static_cast<int32_t>(i));
    slots.push_back(token_slots[i]);
  }
  cu_seqlens_q.push_back(static_cast<int32_t>(token_ids.size()));
  seq_lens.push_back(start + static_cast<int32_t>(tokens.size()));
  tables_.push_back(table);
  if (want_logits) logit_rows.push_back(static_cast<int32_t>(token_ids.size()) - 1);
}

void StepBatch::finalize() {
  max_blocks_per_seq = 1;
  for (const auto& t : tables_) max_blocks_per_seq = std::max(max_blocks_per_seq, static_cast<int32_t>(t.size()));
  block_tables.assign(tables_.size() * static_cast<size_t>(max_blocks_per_seq), 0);
  for (size_t s = 0; s < tables_.size(); ++s) {
    std::copy(tables_[s].begin(), tables_[s].end(), block_tables.begin() + static_cast<int64_t>(s) * max_blocks_per_seq);
  }
}

Model::Model(const ModelConfig& config, Backend& backend, int64_t max_position)
    : config_(config), backend_(backend), max_position_(max_position > 0 ? max_position : config.max_position) {
  FP8KV_REQUIRE(max_position_ > 0, "max_position", "the RoPE table needs a length: the config has no "
                "max_position_embeddings and none was given");
  FP8KV_REQUIRE(config.num_q_heads % config.num_kv_heads == 0, "num_key_value_heads",
                "must divide num_attention_heads (", config.num_q_heads, "), got ", config.num_kv_heads);
  allocate_weights();
  const int rotary_dim = config.rope.rotary_dim > 0 ? config.rope.rotary_dim : config.head_dim;
  RopeConfig rope = config.rope;
  rope.rotary_dim = rotary_dim;
  const std::vector<float> table = build_rope_table(rope, static_cast<int>(max_position_));
  rope_table_ = DeviceTensor(backend.device(), DType::kFloat32, {max_position_, rotary_dim});
  backend.copy_from_host(rope_table_.ref(), table.data());
}

void Model::allocate_weights() {
  const Device dev = backend_.device();
  const DType w = backend_.weight_dtype();
  const int64_t h = config_.hidden_size, d = config_.head_dim, inter = config_.intermediate_size;
  const int64_t hq = config_.num_q_heads, hk = config_.num_kv_heads;
  auto make = [&](std::vector<int64_t> shape) {
    DeviceTensor t(dev, w, shape);
    weight_bytes_ += static_cast<int64_t>(t.ref().nbytes());
    return t;
  };
  embed_ = make({config_.vocab_size, h});
  final_norm_ = make({h});
  if (!config_.tie_word_embeddings) lm_head_ = make({config_.vocab_size, h});
  layers_.resize(static_cast<size_t>(config_.num_layers));
  for (Layer& l : layers_) {
    l.input_norm = make({h});
    l.q_proj = make({hq * d, h});
    l.k_proj = make({hk * d, h});
    l.v_proj = make({hk * d, h});
    if (config_.qkv_bias) {
      l.q_bias = make({hq * d});
      l.k_bias = make({hk * d});
      l.v_bias = make({hk * d});
    }
    if (config_.qk_norm) {
      l.q_norm = make({d});
      l.k_norm = make({d});
    }
    l.o_proj = make({h, hq * d});
    l.post_norm = make({h});
    l.gate_proj = make({inter, h});
    l.up_proj = make({inter, h});
    l.down_proj = make({h, inter});
  }
}

Model::Model(const ModelConfig& config, const Checkpoint& checkpoint, Backend& backend, int64_t max_position)
    : Model(config, backend, max_position) {
  // Resolve every tensor (presence and shape) before copying any, so a bad checkpoint fails fast.
  std::vector<std::pair<const CheckpointTensor*, const DeviceTensor*>> plan;
  auto want = [&](const std::string& name, const DeviceTensor& dst) {
    std::vector<int64_t> shape(dst.ref().shape.begin(), dst.ref().shape.begin() + dst.ref().ndim);
    plan.emplace_back(&checkpoint.get(name, shape), &dst);
  };
  want("model.embed_tokens.weight", embed_);
  want("model.norm.weight", final_norm_);
  if (!config.tie_word_embeddings) want("lm_head.weight", lm_head_);
  for (int i = 0; i < config.num_layers; ++i) {
    const Layer& l = layers_[static_cast<size_t>(i)];
    want(layer_name(i, "input_layernorm.weight"), l.input_norm);
    want(layer_name(i, "self_attn.q_proj.weight"), l.q_proj);
    want(layer_name(i, "self_attn.k_proj.weight"), l.k_proj);
    want(layer_name(i, "self_attn.v_proj.weight"), l.v_proj);
    if (config.qkv_bias) {
      want(layer_name(i, "self_attn.q_proj.bias"), l.q_bias);
      want(layer_name(i, "self_attn.k_proj.bias"), l.k_bias);
      want(layer_name(i, "self_attn.v_proj.bias"), l.v_bias);
    }
    if (config.qk_norm) {
      want(layer_name(i, "self_attn.q_norm.weight"), l.q_norm);
      want(layer_name(i, "self_attn.k_norm.weight"), l.k_norm);
    }
    want(layer_name(i, "self_attn.o_proj.weight"), l.o_proj);
    want(layer_name(i, "post_attention_layernorm.weight"), l.post_norm);
    want(layer_name(i, "mlp.gate_proj.weight"), l.gate_proj);
    want(layer_name(i, "mlp.up_proj.weight"), l.up_proj);
    want(layer_name(i, "mlp.down_proj.weight"), l.down_proj);
  }
  for (const auto& [src, dst] : plan) upload_weight(backend, *src, *dst);
  backend.synchronize();
}

Model Model::random(const ModelConfig& config, Backend& backend, uint64_t seed, int64_t max_position) {
  Model model(config, backend, max_position);
  constexpr float kWeightStd = 0.02f;  // the initializer_range of Llama/Qwen configs
  uint64_t stream = seed;
  auto normal = [&](const DeviceTensor& t) {
    if (t.defined()) backend.fill_normal(t.ref(), ++stream, kWeightStd);
  };
  auto ones = [&](const DeviceTensor& t) {
    if (!t.defined()) return;
    const int64_t n = t.numel();
    if (t.ref().dtype == DType::kFloat32) {
      std::vector<float> host(static_cast<size_t>(n), 1.0f);
      backend.copy_from_host(t.ref(), host.data());
    } else {
      std::vector<Bf16> host(static_cast<size_t>(n), Bf16::from_float(1.0f));
      backend.copy_from_host(t.ref(), host.data());
    }
  };
  normal(model.embed_);
  ones(model.final_norm_);
  normal(model.lm_head_);
  for (Layer& l : model.layers_) {
    ones(l.input_norm);
    ones(l.post_norm);
    ones(l.q_norm);
    ones(l.k_norm);
    for (DeviceTensor* t : {&l.q_proj, &l.k_proj, &l.v_proj, &l.q_bias, &l.k_bias, &l.v_bias, &l.o_proj, &l.gate_proj,
                            &l.up_proj, &l.down_proj}) {
      normal(*t);
    }
  }
  backend.synchronize();
  return model;
}

void Model::ensure_workspace(int32_t total_q, int32_t num_seqs, int32_t max_blocks, int32_t num_logits) {
  const Device dev = backend_.device();
  const DType act = backend_.activation_dtype();
  const int64_t h = config_.hidden_size, d = config_.head_dim, inter = config_.intermediate_size;
  const int64_t hq = config_.num_q_heads, hk = config_.num_kv_heads;
  if (total_q > cap_q_ || max_blocks > cap_blocks_) {
    cap_q_ = std::max(total_q, cap_q_);
    cap_blocks_ = std::max(max_blocks, cap_blocks_);
    ids_ = DeviceTensor(dev, DType::kInt32, {cap_q_});
    positions_ = DeviceTensor(dev, DType::kInt32, {cap_q_});
    slots_ = DeviceTensor(dev, DType::kInt64, {cap_q_});
    row_block_tables_ = DeviceTensor(dev, DType::kInt32, {cap_q_, cap_blocks_});
    row_seq_lens_ = DeviceTensor(dev, DType::kInt32, {cap_q_});
    hidden_ = DeviceTensor(dev, act, {cap_q_, h});
    normed_ = DeviceTensor(dev, act, {cap_q_, h});
    q_ = DeviceTensor(dev, act, {cap_q_, hq * d});
    k_ = DeviceTensor(dev, act, {cap_q_, hk * d});
    v_ = DeviceTensor(dev, act, {cap_q_, hk * d});
    attn_ = DeviceTensor(dev, act, {cap_q_, hq * d});
    proj_ = DeviceTensor(dev, act, {cap_q_, h});
    gate_ = DeviceTensor(dev, act, {cap_q_, inter});
    up_ = DeviceTensor(dev, act, {cap_q_, inter});
    act_ = DeviceTensor(dev, act, {cap_q_, inter});
  }
  if (num_seqs > cap_seqs_ || max_blocks > cap_blocks_ || !block_tables_.defined() ||
      block_tables_.ref().size(1) < cap_blocks_) {
    cap_seqs_ = std::max(num_seqs, cap_seqs_);
    cu_seqlens_q_ = DeviceTensor(dev, DType::kInt32, {cap_seqs_ + 1});
    seq_lens_ = DeviceTensor(dev, DType::kInt32, {cap_seqs_});
    block_tables_ = DeviceTensor(dev, DType::kInt32, {cap_seqs_, cap_blocks_});
  }
  if (num_logits > cap_logits_) {
    cap_logits_ = num_logits;
    logit_rows_ = DeviceTensor(dev, DType::kInt32, {cap_logits_});
    last_hidden_ = DeviceTensor(dev, act, {cap_logits_, h});
  }
}

void Model::forward(const StepBatch& batch, KvCache& cache, const TensorRef& logits) {
  const int32_t n = batch.total_q(), num_seqs = batch.num_seqs(), mb = batch.max_blocks_per_seq;
  const int32_t num_logits = static_cast<int32_t>(batch.logit_rows.size());
  FP8KV_REQUIRE(n > 0 && num_seqs > 0 && mb > 0, "batch", "a step needs at least one token (call finalize())");
  FP8KV_REQUIRE(batch.block_tables.size() == static_cast<size_t>(num_seqs) * mb, "batch.block_tables",
                "must hold num_seqs * max_blocks_per_seq entries (call finalize())");
  FP8KV_REQUIRE(logits.ndim == 2 && logits.size(0) == num_logits && logits.size(1) == config_.vocab_size &&
                    logits.dtype == DType::kFloat32,
                "logits", "expected [", num_logits, ", ", config_.vocab_size, "] float32, got ", logits.shape_string());
  for (int32_t id : batch.token_ids) {
    FP8KV_REQUIRE(id >= 0 && id < config_.vocab_size, "batch.token_ids", "token ", id, " is outside [0, ",
                  config_.vocab_size, ")");
  }
  for (int32_t p : batch.positions) {
    FP8KV_REQUIRE(p < max_position_, "batch.positions", "position ", p, " is past the RoPE table (", max_position_,
                  " positions)");
  }
  ensure_workspace(n, num_seqs, mb, std::max(num_logits, 1));

  // The decode-row form of the batch: row i of sequence b keeps b's table and sees its own prefix.
  std::vector<int32_t> row_tables(static_cast<size_t>(n) * mb), row_lens(static_cast<size_t>(n));
  for (int32_t s = 0; s < num_seqs; ++s) {
    const int32_t begin = batch.cu_seqlens_q[s], end = batch.cu_seqlens_q[s + 1];
    for (int32_t r = begin; r < end; ++r) {
      std::copy_n(batch.block_tables.begin() + static_cast<int64_t>(s) * mb, mb,
                  row_tables.begin() + static_cast<int64_t>(r) * mb);
      row_lens[static_cast<size_t>(r)] = batch.seq_lens[s] - (end - r) + 1;
    }
  }

  const TensorRef ids = slice(ids_, {n}), positions = slice(positions_, {n}), slots = slice(slots_, {n});
  backend_.copy_from_host(ids, batch.token_ids.data());
  backend_.copy_from_host(positions, batch.positions.data());
  backend_.copy_from_host(slots, batch.slots.data());
  AttentionBatch attention;
  attention.step = ++steps_;
  attention.host_seq_lens = batch.seq_lens;
  attention.host_row_seq_lens = std::move(row_lens);
  attention.num_seqs = num_seqs;
  attention.max_blocks_per_seq = mb;
  for (int32_t s = 0; s < num_seqs; ++s) {
    attention.max_q_len = std::max(attention.max_q_len, batch.cu_seqlens_q[s + 1] - batch.cu_seqlens_q[s]);
  }
  attention.block_tables = slice(block_tables_, {num_seqs, mb});
  attention.cu_seqlens_q = slice(cu_seqlens_q_, {num_seqs + 1});
  attention.seq_lens = slice(seq_lens_, {num_seqs});
  attention.row_block_tables = slice(row_block_tables_, {n, mb});
  attention.row_seq_lens = slice(row_seq_lens_, {n});
  backend_.copy_from_host(attention.block_tables, batch.block_tables.data());
  backend_.copy_from_host(attention.cu_seqlens_q, batch.cu_seqlens_q.data());
  backend_.copy_from_host(attention.seq_lens, batch.seq_lens.data());
  backend_.copy_from_host(attention.row_block_tables, row_tables.data());
  backend_.copy_from_host(attention.row_seq_lens, attention.host_row_seq_lens.data());

  const int64_t h = config_.hidden_size, d = config_.head_dim, inter = config_.intermediate_size;
  const int64_t hq = config_.num_q_heads, hk = config_.num_kv_heads;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  const float softmax_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
  const int rotary_dim = static_cast<int>(rope_table_.ref().size(1));
  const TensorRef hidden = slice(hidden_, {n, h}), normed = slice(normed_, {n, h}), proj = slice(proj_, {n, h});
  const TensorRef q = slice(q_, {n, hq * d}), k = slice(k_, {n, hk * d}), v = slice(v_, {n, hk * d});
  const TensorRef q_heads = slice(q_, {n, hq, d}), k_heads = slice(k_, {n, hk, d}), v_heads = slice(v_, {n, hk, d});
  const TensorRef attn = slice(attn_, {n, hq * d}), attn_heads = slice(attn_, {n, hq, d});
  const TensorRef gate = slice(gate_, {n, inter}), up = slice(up_, {n, inter}), act = slice(act_, {n, inter});

  backend_.embed(ids, embed_.ref(), hidden);
  for (int i = 0; i < config_.num_layers; ++i) {
    const Layer& l = layers_[static_cast<size_t>(i)];
    backend_.rms_norm(hidden, l.input_norm.ref(), eps, normed);
    backend_.linear(normed, l.q_proj.ref(), l.q_bias.ref(), q);
    backend_.linear(normed, l.k_proj.ref(), l.k_bias.ref(), k);
    backend_.linear(normed, l.v_proj.ref(), l.v_bias.ref(), v);
    if (config_.qk_norm) {
      backend_.rms_norm(slice(q_, {n * hq, d}), l.q_norm.ref(), eps, slice(q_, {n * hq, d}));
      backend_.rms_norm(slice(k_, {n * hk, d}), l.k_norm.ref(), eps, slice(k_, {n * hk, d}));
    }
    backend_.rope(q_heads, positions, rope_table_.ref(), rotary_dim);
    backend_.rope(k_heads, positions, rope_table_.ref(), rotary_dim);

    const PagedKvLayer layer = cache.layer(i);
    CacheWriteArgs write;
    write.key = k_heads;
    write.value = v_heads;
    write.slot_mapping = slots;
    write.cache = layer;
    backend_.write_kv_cache(write);
    backend_.attention(q_heads, layer, attention, softmax_scale, attn_heads);

    backend_.linear(attn, l.o_proj.ref(), TensorRef{}, proj);
    backend_.add(hidden, proj);
    backend_.rms_norm(hidden, l.post_norm.ref(), eps, normed);
    backend_.linear(normed, l.gate_proj.ref(), TensorRef{}, gate);
    backend_.linear(normed, l.up_proj.ref(), TensorRef{}, up);
    backend_.swiglu(gate, up, act);
    backend_.linear(act, l.down_proj.ref(), TensorRef{}, proj);
    backend_.add(hidden, proj);
  }
  if (num_logits == 0) return;
  const TensorRef rows = slice(logit_rows_, {num_logits}), last = slice(last_hidden_, {num_logits, h});
  backend_.copy_from_host(rows, batch.logit_rows.data());
  backend_.gather_rows(hidden, rows, last);
  backend_.rms_norm(last, final_norm_.ref(), eps, last);
  backend_.linear(last, config_.tie_word_embeddings ? embed_.ref() : lm_head_.ref(), TensorRef{}, logits);
}

ModelShape model_shape(const ModelConfig& config) {
  ModelShape shape;
  shape.name = "model";
  shape.num_layers = config.num_layers;
  shape.num_q_heads = config.num_q_heads;
  shape.num_kv_heads = config.num_kv_heads;
  shape.head_dim = config.head_dim;
  shape.dtype = config.dtype;
  shape.max_position = config.max_position;
  return shape;
}

KvCacheFormat resolve_kv_cache_format(const ModelConfig& config, const Checkpoint* checkpoint,
                                      const std::string& kv_cache_dtype, const std::string& kv_scales) {
  KvCacheFormat format;
  if (kv_cache_dtype == "auto" && config.declares_fp8_kv_cache) {
    format.dtype = DType::kFp8E4M3;
    format.source = "fp8_e4m3 (the checkpoint's config declares an FP8 KV-cache scheme)";
  } else if (kv_cache_dtype == "auto" && config.dtype == DType::kFloat32) {
    // The cache stores at most 16 bits; a float32 checkpoint gets the bf16 cache transformers
    // would use in bf16 inference.
    format.dtype = DType::kBFloat16;
    format.source = "bf16 (auto: the model is float32; the cache stores 16-bit values at most)";
  } else {
    format.dtype = parse_kv_cache_dtype(kv_cache_dtype, config.dtype, "kv-cache-dtype");
    format.source = std::string(kv_cache_dtype_name(format.dtype)) + " (--kv-cache-dtype " + kv_cache_dtype + ")";
  }
  if (!kv_scales.empty()) parse_scale_granularity(kv_scales, "kv-scales");
  if (!is_fp8(format.dtype)) return format;

  // Calibrated scales: all layers or none, each scalar or one per KV head.
  const int layers = config.num_layers, heads = config.num_kv_heads;
  std::vector<std::vector<float>> k(static_cast<size_t>(layers)), v(static_cast<size_t>(layers));
  int found = 0;
  int64_t count = 0;
  for (int i = 0; checkpoint != nullptr && i < layers; ++i) {
    const std::string k_name = layer_name(i, "self_attn.k_scale"), v_name = layer_name(i, "self_attn.v_scale");
    const CheckpointTensor* kt = checkpoint->find(k_name);
    const CheckpointTensor* vt = checkpoint->find(v_name);
    if (kt == nullptr && vt == nullptr) continue;
    if (kt == nullptr || vt == nullptr) {
      const CheckpointTensor* present = kt ? kt : vt;
      throw FileError(present->file, "has '" + present->name + "' but not its K/V partner '" +
                                         (kt ? v_name : k_name) + "'");
    }
    k[static_cast<size_t>(i)] = checkpoint->read_float(k_name);
    v[static_cast<size_t>(i)] = checkpoint->read_float(v_name);
    const int64_t kc = static_cast<int64_t>(k[static_cast<size_t>(i)].size());
    if ((kc != 1 && kc != heads) || static_cast<int64_t>(v[static_cast<size_t>(i)].size()) != kc ||
        (count != 0 && kc != count)) {
      throw FileError(kt->file, "KV scales '" + k_name + "' / '" + v_name + "' must both hold 1 or num_kv_heads (" +
                                    std::to_string(heads) + ") values, the same in every layer");
    }
    count = kc;
    validate_scales(k[static_cast<size_t>(i)].data(), kc, k_name.c_str());
    validate_scales(v[static_cast<size_t>(i)].data(), kc, v_name.c_str());
    ++found;
  }
  if (found != 0 && found != layers) {
    throw FileError(checkpoint->find(layer_name(0, "self_attn.k_scale")) ? checkpoint->find(layer_name(0, "self_attn.k_scale"))->file
                                                                         : "checkpoint",
                    "has k_scale/v_scale for " + std::to_string(found) + " of " + std::to_string(layers) + " layers");
  }
  const bool calibrated = found == layers;
  const std::string asked = kv_scales;
  if (asked == "per_token" || (asked.empty() && !calibrated)) {
    format.granularity = ScaleGranularity::kPerToken;
    format.source += calibrated ? ", per-token dynamic scales (--kv-scales per_token; checkpoint scales unused)"
                                : ", per-token dynamic scales (no calibrated k_scale/v_scale in the checkpoint)";
    return format;
  }
  FP8KV_REQUIRE(calibrated, "kv-scales", asked, " needs calibrated model.layers.{i}.self_attn.k_scale/v_scale "
                "tensors in the checkpoint, and it has none; use per_token (dynamic scales)");
  const bool per_head = asked == "per_head" || (asked.empty() && count == heads && heads > 1);
  format.granularity = per_head ? ScaleGranularity::kPerHead : ScaleGranularity::kPerTensor;
  for (int i = 0; i < layers; ++i) {
    std::vector<float>& ks = k[static_cast<size_t>(i)];
    std::vector<float>& vs = v[static_cast<size_t>(i)];
    if (per_head && ks.size() == 1) {
      ks.assign(static_cast<size_t>(heads), ks[0]);
      vs.assign(static_cast<size_t>(heads), vs[0]);
    } else if (!per_head && ks.size() > 1) {
      // One scale for all heads must cover the largest head's range: the largest scale.
      ks.assign(1, *std::max_element(ks.begin(), ks.end()));
      vs.assign(1, *std::max_element(vs.begin(), vs.end()));
    }
  }
  format.k_scales = std::move(k);
  format.v_scales = std::move(v);
  format.source += std::string(", ") + scale_granularity_name(format.granularity) +
                   " scales calibrated in the checkpoint (k_scale/v_scale)";
  return format;
}

KvCache make_kv_cache(const ModelConfig& config, const KvCacheFormat& format, int64_t num_blocks, int block_size,
                      Device device) {
  KvCacheSpec spec;
  spec.num_layers = config.num_layers;
  spec.num_kv_heads = config.num_kv_heads;
  spec.head_dim = config.head_dim;
  spec.block_size = block_size;
  spec.num_blocks = num_blocks;
  spec.dtype = format.dtype;
  spec.granularity = format.granularity;
  KvCache cache(spec, device);
  if (!format.k_scales.empty()) {
    for (int i = 0; i < config.num_layers; ++i) {
      const auto& ks = format.k_scales[static_cast<size_t>(i)];
      cache.set_static_scales(i, ks.data(), format.v_scales[static_cast<size_t>(i)].data(),
                              static_cast<int64_t>(ks.size()));
    }
  }
  return cache;
}

}  // namespace fp8kv::engine

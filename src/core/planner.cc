#include "fp8kv/planner.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "fp8kv/error.h"
#include "fp8kv/paged_cache.h"

namespace fp8kv {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

ModelShape preset(const char* name, int layers, int q_heads, int kv_heads, int head_dim, int64_t max_position) {
  ModelShape m;
  m.name = name;
  m.num_layers = layers;
  m.num_q_heads = q_heads;
  m.num_kv_heads = kv_heads;
  m.head_dim = head_dim;
  m.dtype = DType::kBFloat16;
  m.max_position = max_position;
  return m;
}

// An integer field of config.json; `fallback` < 0 means the field is required.
int64_t config_int(const nlohmann::json& config, const char* key, const std::string& path, int64_t fallback = -1) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) {
    if (fallback >= 0) return fallback;
    throw FileError(path, std::string("missing field '") + key + "'");
  }
  if (!it->is_number_integer()) throw FileError(path, std::string("field '") + key + "' must be an integer");
  const int64_t value = it->get<int64_t>();
  if (value <= 0) throw FileError(path, std::string("field '") + key + "' must be > 0, got " + std::to_string(value));
  return value;
}

DType config_dtype(const nlohmann::json& config, const std::string& path) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    const auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    if (!it->is_string()) throw FileError(path, std::string("field '") + key + "' must be a string");
    const std::string d = it->get<std::string>();
    if (d == "bfloat16") return DType::kBFloat16;
    if (d == "float16") return DType::kFloat16;
    if (d == "float32") return DType::kFloat32;
    throw FileError(path, std::string("field '") + key + "' = '" + d + "' is not bfloat16, float16 or float32");
  }
  return DType::kBFloat16;  // transformers' default for the checkpoints this library targets
}

void check_model(const ModelShape& m) {
  FP8KV_REQUIRE(m.num_layers > 0, "model.num_layers", "must be > 0, got ", m.num_layers);
  FP8KV_REQUIRE(m.num_kv_heads > 0, "model.num_kv_heads", "must be > 0, got ", m.num_kv_heads);
  FP8KV_REQUIRE(m.num_q_heads > 0 && m.num_q_heads % m.num_kv_heads == 0, "model.num_q_heads",
                "must be a positive multiple of num_kv_heads (", m.num_kv_heads, "), got ", m.num_q_heads);
  FP8KV_REQUIRE(m.head_dim > 0, "model.head_dim", "must be > 0, got ", m.head_dim);
}

}  // namespace

ModelShape model_preset(const std::string& name) {
  // A Hugging Face repo id ("Qwen/Qwen3-8B") names the same preset as its last component.
  const std::string key = lower(name.substr(name.find_last_of('/') == std::string::npos ? 0 : name.find_last_of('/') + 1));
  if (key == "qwen3-0.6b") return preset("qwen3-0.6b", 28, 16, 8, 128, 40960);
  if (key == "qwen3-8b") return preset("qwen3-8b", 36, 32, 8, 128, 40960);
  if (key == "llama-3.1-8b") return preset("llama-3.1-8b", 32, 32, 8, 128, 131072);
  if (key == "llama-3.1-70b") return preset("llama-3.1-70b", 80, 64, 8, 128, 131072);
  throw InvalidArgument("model", "unknown model '" + name +
                                     "'; expected a preset (qwen3-0.6b, qwen3-8b, llama-3.1-8b, llama-3.1-70b), a "
                                     "config.json path or a model directory");
}

ModelShape model_shape_from_config(const std::string& config_json_path) {
  std::ifstream in(config_json_path);
  if (!in) throw FileError(config_json_path, "cannot open");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw FileError(config_json_path, std::string("not valid JSON: ") + e.what());
  }
  if (!config.is_object()) throw FileError(config_json_path, "top level must be a JSON object");
  // Multimodal checkpoints keep the language model's fields under text_config.
  if (!config.contains("num_hidden_layers") && config.contains("text_config") && config["text_config"].is_object()) {
    config = config["text_config"];
  }
  ModelShape m;
  const std::filesystem::path path(config_json_path);
  m.name = path.has_parent_path() ? path.parent_path().filename().string() : path.stem().string();
  m.num_layers = static_cast<int>(config_int(config, "num_hidden_layers", config_json_path));
  m.num_q_heads = static_cast<int>(config_int(config, "num_attention_heads", config_json_path));
  m.num_kv_heads = static_cast<int>(config_int(config, "num_key_value_heads", config_json_path, m.num_q_heads));
  const bool has_head_dim = config.contains("head_dim") && !config["head_dim"].is_null();
  if (has_head_dim) {
    m.head_dim = static_cast<int>(config_int(config, "head_dim", config_json_path));
  } else {
    const int64_t hidden = config_int(config, "hidden_size", config_json_path);
    if (hidden % m.num_q_heads != 0) {
      throw FileError(config_json_path, "hidden_size " + std::to_string(hidden) +
                                            " is not a multiple of num_attention_heads and no head_dim is given");
    }
    m.head_dim = static_cast<int>(hidden / m.num_q_heads);
  }
  if (m.num_q_heads % m.num_kv_heads != 0) {
    throw FileError(config_json_path, "num_attention_heads " + std::to_string(m.num_q_heads) +
                                          " is not a multiple of num_key_value_heads " + std::to_string(m.num_kv_heads));
  }
  m.dtype = config_dtype(config, config_json_path);
  m.max_position = config_int(config, "max_position_embeddings", config_json_path, 0);
  return m;
}

ModelShape resolve_model_shape(const std::string& name_or_path) {
  namespace fs = std::filesystem;
  const fs::path path(name_or_path);
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path config = path / "config.json";
    if (!fs::exists(config, ec)) throw FileError(name_or_path, "model directory has no config.json");
    ModelShape m = model_shape_from_config(config.string());
    m.name = fs::absolute(path).lexically_normal().filename().string();
    if (m.name.empty()) m.name = fs::absolute(path).lexically_normal().parent_path().filename().string();
    return m;
  }
  if (fs::is_regular_file(path, ec)) return model_shape_from_config(name_or_path);
  return model_preset(name_or_path);
}

int64_t KvPlan::max_sequences(int64_t context) const {
  FP8KV_REQUIRE(context > 0, "context", "must be > 0 tokens, got ", context);
  const int64_t blocks_per_sequence = (context + block_size - 1) / block_size;
  return num_blocks / blocks_per_sequence;
}

KvPlan plan_kv_cache(const ModelShape& model, int64_t budget_bytes, DType dtype, ScaleGranularity granularity,
                     int block_size) {
  check_model(model);
  FP8KV_REQUIRE(is_kv_storage_dtype(dtype), "kv_cache_dtype", "must be one of bf16, fp16, fp8_e4m3, fp8_e5m2, got ",
                dtype_name(dtype));
  FP8KV_REQUIRE((block_size & (block_size - 1)) == 0 && block_size >= kMinBlockSize && block_size <= kMaxBlockSize,
                "block_size", "must be a power of two in [", kMinBlockSize, ", ", kMaxBlockSize, "], got ", block_size);
  FP8KV_REQUIRE(budget_bytes > 0, "memory", "must be > 0 bytes, got ", budget_bytes);

  // Exactly the buffers KvCache allocates: per layer a K and a V pool, per-token K and V scale
  // buffers when the granularity is per_token, and K and V static scales.
  const int64_t layers = model.num_layers;
  const int64_t kv_heads = model.num_kv_heads;
  KvPlan plan;
  plan.dtype = dtype;
  plan.granularity = granularity;
  plan.block_size = block_size;
  plan.budget_bytes = budget_bytes;
  const bool token_scales = is_fp8(dtype) && granularity == ScaleGranularity::kPerToken;
  plan.token_scale_bytes_per_token = token_scales ? layers * 2 * kv_heads * static_cast<int64_t>(sizeof(float)) : 0;
  plan.bytes_per_token = layers * 2 * kv_heads * model.head_dim * static_cast<int64_t>(dtype_size(dtype)) +
                         plan.token_scale_bytes_per_token;
  plan.bytes_per_block = plan.bytes_per_token * block_size;
  plan.fixed_bytes =
      layers * 2 * static_scale_count(dtype, granularity, model.num_kv_heads) * static_cast<int64_t>(sizeof(float));
  FP8KV_REQUIRE(budget_bytes >= plan.fixed_bytes + plan.bytes_per_block, "memory", "a budget of ", budget_bytes,
                " bytes cannot hold one block of ", block_size, " tokens (", plan.bytes_per_block, " bytes + ",
                plan.fixed_bytes, " bytes of static scales)");
  plan.num_blocks = std::min<int64_t>((budget_bytes - plan.fixed_bytes) / plan.bytes_per_block,
                                      std::numeric_limits<int32_t>::max());
  plan.max_tokens = plan.num_blocks * block_size;
  plan.total_bytes = plan.fixed_bytes + plan.num_blocks * plan.bytes_per_block;
  return plan;
}

KvCacheSpec kv_cache_spec(const KvPlan& plan, const ModelShape& model) {
  KvCacheSpec spec;
  spec.num_layers = model.num_layers;
  spec.num_kv_heads = model.num_kv_heads;
  spec.head_dim = model.head_dim;
  spec.block_size = plan.block_size;
  spec.num_blocks = plan.num_blocks;
  spec.dtype = plan.dtype;
  spec.granularity = plan.granularity;
  return spec;
}

int64_t parse_memory_size(const std::string& text, const std::string& argument) {
  size_t pos = 0;
  while (pos < text.size() && (std::isdigit(static_cast<unsigned char>(text[pos])) || text[pos] == '.')) ++pos;
  const std::string number = text.substr(0, pos);
  std::string unit = text.substr(pos);
  unit.erase(0, unit.find_first_not_of(' '));
  const std::string u = lower(unit);
  long double multiplier = 0;
  if (u.empty() || u == "b") multiplier = 1;
  else if (u == "kb") multiplier = 1e3L;
  else if (u == "mb") multiplier = 1e6L;
  else if (u == "gb") multiplier = 1e9L;
  else if (u == "tb") multiplier = 1e12L;
  else if (u == "kib") multiplier = 1024.0L;
  else if (u == "mib") multiplier = 1024.0L * 1024;
  else if (u == "gib") multiplier = 1024.0L * 1024 * 1024;
  else if (u == "tib") multiplier = 1024.0L * 1024 * 1024 * 1024;
  const bool one_point = std::count(number.begin(), number.end(), '.') <= 1;
  FP8KV_REQUIRE(!number.empty() && number != "." && one_point && multiplier > 0, argument, "'", text,
                "' is not a memory size; write a number with an optional unit: B, KB, MB, GB, TB (powers of 1000) "
                "or KiB, MiB, GiB, TiB (powers of 1024), e.g. 40GiB");
  const long double bytes = std::floor(std::stold(number) * multiplier);
  FP8KV_REQUIRE(bytes >= 1 && bytes < 9.2e18L, argument, "'", text, "' must be at least 1 byte and below 2^63 bytes");
  return static_cast<int64_t>(bytes);
}

}  // namespace fp8kv

#include "fp8kv/engine/model_config.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fp8kv/error.h"

namespace fp8kv::engine {
namespace {

using nlohmann::json;

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

bool read_json(const std::string& path, json& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  try {
    out = json::parse(in);
  } catch (const json::exception& e) {
    throw FileError(path, std::string("not valid JSON: ") + e.what());
  }
  return true;
}

// Field access with errors that name the file and the field.
class Fields {
 public:
  Fields(const std::string& path, const json& j, std::string prefix = "")
      : path_(path), j_(j), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  const json& at(const char* key) const { return j_.at(key); }

  [[noreturn]] void fail(const char* key, const std::string& what) const {
    throw FileError(path_, "field '" + prefix_ + key + "': " + what);
  }

  int64_t integer(const char* key) const {
    if (!has(key)) fail(key, "is missing");
    const json& v = j_.at(key);
    if (!v.is_number_integer()) fail(key, "must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  int64_t integer(const char* key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }
  int positive_int(const char* key) const { return checked_positive(key, integer(key)); }
  int positive_int(const char* key, int64_t fallback) const { return checked_positive(key, integer(key, fallback)); }

  double number(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_number()) fail(key, "must be a number, got " + v.dump());
    return v.get<double>();
  }
  double positive_number(const char* key, double fallback) const {
    const double x = number(key, fallback);
    if (!(x > 0.0)) fail(key, "must be > 0, got " + std::to_string(x));
    return x;
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = j_.at(key);
    if (!v.is_string()) fail(key, "must be a string, got " + v.dump());
    return v.get<std::string>();
  }
  // An int, a list of ints, or null/absent (empty).
  std::vector<int32_t> int_list(const char* key) const {
    std::vector<int32_t> out;
    if (!has(key)) return out;
    const json& v = j_.at(key);
    auto one = [&](const json& x) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX) {
        fail(key, "must be a token id or a list of token ids, got " + v.dump());
      }
      out.push_back(static_cast<int32_t>(x.get<int64_t>()));
    };
    if (v.is_array()) {
      for (const auto& x : v) one(x);
    } else {
      one(v);
    }
    return out;
  }

 private:
  int checked_positive(const char* key, int64_t x) const {
    if (x <= 0 || x > INT32_MAX) fail(key, "must be a positive 32-bit integer, got " + std::to_string(x));
    return static_cast<int>(x);
  }

  const std::string& path_;
  const json& j_;
  std::string prefix_;
};

struct ArchitectureName {
  const char* class_name;
  const char* model_type;
  Architecture architecture;
  int64_t default_max_position;  // the Hugging Face config class's default
};
constexpr ArchitectureName kArchitectures[] = {
    {"LlamaForCausalLM", "llama", Architecture::kLlama, 2048},
    {"Qwen2ForCausalLM", "qwen2", Architecture::kQwen2, 32768},
    {"Qwen3ForCausalLM", "qwen3", Architecture::kQwen3, 32768},
};

const ArchitectureName& find_architecture(const std::string& path, const Fields& f) {
  // architectures[0] names the class that was saved; model_type is the fallback for configs
  // written without it.
  std::string name;
  if (f.has("architectures")) {
    const json& a = f.at("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string()) f.fail("architectures", "must be a list of class names");
    name = a[0].get<std::string>();
    for (const auto& arch : kArchitectures) {
      if (name == arch.class_name) return arch;
    }
  } else {
    name = f.string("model_type", "");
    if (name.empty()) f.fail("architectures", "is missing (and so is 'model_type')");
    for (const auto& arch : kArchitectures) {
      if (name == arch.model_type) return arch;
    }
  }
  throw Unsupported("architecture '" + name + "' in " + path +
                    " (supported: LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
}

DType parse_dtype(const Fields& f) {
  // transformers 5 writes "dtype"; 4.x wrote "torch_dtype".
  const char* key = f.has("dtype") ? "dtype" : "torch_dtype";
  const std::string name = f.string(key, "bfloat16");
  if (name == "bfloat16") return DType::kBFloat16;
  if (name == "float16") return DType::kFloat16;
  if (name == "float32") return DType::kFloat32;
  f.fail(key, "'" + name + "' is not one of bfloat16, float16, float32");
}

// RoPE: transformers 4.x writes rope_theta + rope_scaling at the top level; 5.x writes one
// rope_parameters object holding rope_theta and the scaling fields.
RopeConfig parse_rope(const std::string& path, const Fields& top, int head_dim) {
  RopeConfig rope;
  rope.rotary_dim = head_dim;
  rope.theta = top.positive_number("rope_theta", rope.theta);
  const char* key = top.has("rope_parameters") ? "rope_parameters" : "rope_scaling";
  if (!top.has(key)) return rope;
  const json& params = top.at(key);
  if (!params.is_object()) top.fail(key, "must be an object, got " + params.dump());
  const Fields f(path, params, std::string(key) + ".");
  rope.theta = f.positive_number("rope_theta", rope.theta);
  // Older files spell the kind "type".
  const std::string type = f.string("rope_type", f.string("type", "default"));
  if (type == "default") return rope;
  if (type != "llama3") {
    throw Unsupported("rope type '" + type + "' (field '" + key + "' in " + path + "); supported: default, llama3");
  }
  rope.llama3_factor = f.positive_number("factor", 0.0);
  rope.llama3_low_freq_factor = f.positive_number("low_freq_factor", rope.llama3_low_freq_factor);
  rope.llama3_high_freq_factor = f.positive_number("high_freq_factor", rope.llama3_high_freq_factor);
  rope.llama3_original_max_position = f.positive_int("original_max_position_embeddings");
  if (!(rope.llama3_high_freq_factor > rope.llama3_low_freq_factor)) {
    f.fail("high_freq_factor", "must exceed low_freq_factor (the llama3 formula divides by their difference)");
  }
  return rope;
}

}  // namespace

ModelConfig load_model_config(const std::string& model_dir) {
  const std::string path = join_path(model_dir, "config.json");
  json j;
  if (!read_json(path, j)) throw FileError(path, std::string("cannot open: ") + std::strerror(errno));
  if (!j.is_object()) throw FileError(path, "not a JSON object");
  const Fields f(path, j);

  const ArchitectureName& arch = find_architecture(path, f);
  ModelConfig c;
  c.architecture = arch.architecture;
  c.hidden_size = f.positive_int("hidden_size");
  c.intermediate_size = f.positive_int("intermediate_size");
  c.num_layers = f.positive_int("num_hidden_layers");
  c.num_q_heads = f.positive_int("num_attention_heads");
  c.num_kv_heads = f.positive_int("num_key_value_heads", c.num_q_heads);
  if (c.num_q_heads % c.num_kv_heads != 0) {
    f.fail("num_key_value_heads", std::to_string(c.num_kv_heads) + " does not divide num_attention_heads " +
                                      std::to_string(c.num_q_heads));
  }
  if (f.has("head_dim")) {
    c.head_dim = f.positive_int("head_dim");
  } else {
    if (c.hidden_size % c.num_q_heads != 0) {
      f.fail("head_dim", "is absent and hidden_size " + std::to_string(c.hidden_size) +
                             " is not a multiple of num_attention_heads " + std::to_string(c.num_q_heads));
    }
    c.head_dim = c.hidden_size / c.num_q_heads;
  }
  c.vocab_size = f.positive_int("vocab_size");
  c.rms_norm_eps = f.positive_number("rms_norm_eps", c.rms_norm_eps);
  c.rope = parse_rope(path, f, c.head_dim);
  c.tie_word_embeddings = f.boolean("tie_word_embeddings", false);
  c.qk_norm = c.architecture == Architecture::kQwen3;
  c.dtype = parse_dtype(f);
  c.max_position = f.positive_int("max_position_embeddings", arch.default_max_position);

  // What the model computes must be what the engine computes: refuse the variants it does not
  // implement instead of running them wrong.
  const std::string act = f.string("hidden_act", "silu");
  if (act != "silu") throw Unsupported("hidden_act '" + act + "' in " + path + " (the MLP is SwiGLU: silu)");
  if (c.architecture == Architecture::kQwen2) {
    c.qkv_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else if (f.boolean("attention_bias", false)) {
    throw Unsupported("attention_bias true in " + path + " (q/k/v/o projection biases on " + arch.class_name + ")");
  }
  if (f.boolean("mlp_bias", false)) throw Unsupported("mlp_bias true in " + path);
  if (f.boolean("use_sliding_window", false)) throw Unsupported("use_sliding_window true in " + path);
  if (f.number("partial_rotary_factor", 1.0) != 1.0) throw Unsupported("partial_rotary_factor != 1 in " + path);

  if (f.has("bos_token_id")) {
    if (f.at("bos_token_id").is_array()) f.fail("bos_token_id", "must be a single token id");
    c.bos_token_id = f.int_list("bos_token_id").front();
  }
  c.eos_token_ids = f.int_list("eos_token_id");
  // generate() stops on generation_config.json's eos ids, which often add to config.json's
  // (an instruct model's end-of-turn token): take the union so the engine stops where it does.
  const std::string gen_path = join_path(model_dir, "generation_config.json");
  json gen;
  if (read_json(gen_path, gen) && gen.is_object()) {
    for (int32_t id : Fields(gen_path, gen).int_list("eos_token_id")) {
      if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) {
        c.eos_token_ids.push_back(id);
      }
    }
  }

  if (f.has("quantization_config")) {
    const json& q = f.at("quantization_config");
    if (!q.is_object()) f.fail("quantization_config", "must be an object");
    if (q.contains("kv_cache_scheme") && !q.at("kv_cache_scheme").is_null()) {
      const json& scheme = q.at("kv_cache_scheme");
      if (!scheme.is_object()) f.fail("quantization_config", "kv_cache_scheme must be an object");
      const Fields s(path, scheme, "quantization_config.kv_cache_scheme.");
      const std::string type = s.string("type", "");
      const int64_t bits = s.integer("num_bits", 0);
      if (type != "float" || bits != 8) {
        throw Unsupported("KV-cache scheme " + scheme.dump() + " in " + path + " (only type float, num_bits 8)");
      }
      c.declares_fp8_kv_cache = true;
    }
  }
  return c;
}

}  // namespace fp8kv::engine

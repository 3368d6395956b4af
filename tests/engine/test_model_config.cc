// config.json parsing: the files transformers 5 wrote for the golden models, transformers 4
// spellings, and errors that name the file and the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/expect_error.h"
#include "common/temp_dir.h"
#include "fp8kv/engine/model_config.h"
#include "fp8kv/error.h"

namespace fp8kv::engine {
namespace {

const std::string kData = FP8KV_TEST_DATA_DIR;

// A model directory of files we write.
class TempModelDir : public testing::TempDir {
 public:
  TempModelDir() : TempDir("fp8kv_config_") {}
  std::string config_path() const { return file("config.json"); }
  void write_config(const nlohmann::json& j) const { write("config.json", j.dump(1)); }
};

// A transformers 4.x Llama-3-style config.json.
nlohmann::json llama_v4() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
    "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 1000,
    "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "torch_dtype": "float16", "tie_word_embeddings": false,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]
  })");
}

using testing::expect_error;

TEST(ModelConfig, GoldenQwen3) {
  const ModelConfig c = load_model_config(kData + "/tiny-qwen3");
  EXPECT_EQ(c.architecture, Architecture::kQwen3);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_EQ(c.num_layers, 2);
  EXPECT_EQ(c.num_q_heads, 4);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);  // explicit: 128 / 4 would be 32
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);  // from transformers 5's rope_parameters
  EXPECT_EQ(c.rope.rotary_dim, 64);
  EXPECT_EQ(c.rope.llama3_factor, 0.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.dtype, DType::kBFloat16);
  EXPECT_EQ(c.max_position, 2048);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_FALSE(c.declares_fp8_kv_cache);
}

TEST(ModelConfig, GoldenLlamaWithLlama3RopeScaling) {
  const ModelConfig c = load_model_config(kData + "/tiny-llama");
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.llama3_factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope.llama3_low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope.llama3_high_freq_factor, 4.0);
  EXPECT_EQ(c.rope.llama3_original_max_position, 256);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(c.bos_token_id, 0);
}

TEST(ModelConfig, TransformersV4Spellings) {
  TempModelDir dir;
  dir.write_config(llama_v4());
  ModelConfig c = load_model_config(dir.path());
  EXPECT_EQ(c.head_dim, 32);  // hidden_size / num_attention_heads
  EXPECT_EQ(c.dtype, DType::kFloat16);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_DOUBLE_EQ(c.rope.llama3_factor, 8.0);
  EXPECT_EQ(c.rope.llama3_original_max_position, 8192);
  EXPECT_EQ(c.max_position, 131072);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));

  // Old "type" key, no num_key_value_heads (MHA), eos as a single int, float32.
  auto j = llama_v4();
  j["rope_scaling"].erase("rope_type");
  j["rope_scaling"]["type"] = "llama3";
  j.erase("num_key_value_heads");
  j["eos_token_id"] = 7;
  j["torch_dtype"] = "float32";
  dir.write_config(j);
  c = load_model_config(dir.path());
  EXPECT_DOUBLE_EQ(c.rope.llama3_factor, 8.0);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{7});
  EXPECT_EQ(c.dtype, DType::kFloat32);

  // rope_scaling null and "default" both mean plain RoPE.
  j["rope_scaling"] = nullptr;
  dir.write_config(j);
  EXPECT_EQ(load_model_config(dir.path()).rope.llama3_factor, 0.0);
  j["rope_scaling"] = {{"rope_type", "default"}};
  dir.write_config(j);
  EXPECT_EQ(load_model_config(dir.path()).rope.llama3_factor, 0.0);
}

TEST(ModelConfig, Qwen2ByModelTypeHasQkvBias) {
  TempModelDir dir;
  auto j = llama_v4();
  j.erase("architectures");
  j["model_type"] = "qwen2";
  j.erase("rope_scaling");
  j.erase("max_position_embeddings");
  j["tie_word_embeddings"] = true;
  dir.write_config(j);
  const ModelConfig c = load_model_config(dir.path());
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position, 32768);  // Qwen2Config's default
}

TEST(ModelConfig, GenerationConfigAddsEosIds) {
  TempModelDir dir;
  auto j = llama_v4();
  j["eos_token_id"] = 128001;
  dir.write_config(j);
  dir.write("generation_config.json", R"({"eos_token_id": [128001, 128009], "bos_token_id": 128000})");
  EXPECT_EQ(load_model_config(dir.path()).eos_token_ids, (std::vector<int32_t>{128001, 128009}));
}

TEST(ModelConfig, KvCacheSchemeDeclaresFp8) {
  TempModelDir dir;
  auto j = llama_v4();
  j["quantization_config"] = nlohmann::json::parse(R"({"quant_method": "compressed-tensors",
      "kv_cache_scheme": {"type": "float", "num_bits": 8, "strategy": "tensor", "dynamic": false, "symmetric": true}})");
  dir.write_config(j);
  EXPECT_TRUE(load_model_config(dir.path()).declares_fp8_kv_cache);
  j["quantization_config"]["kv_cache_scheme"] = nullptr;
  dir.write_config(j);
  EXPECT_FALSE(load_model_config(dir.path()).declares_fp8_kv_cache);
  j["quantization_config"]["kv_cache_scheme"] = {{"type", "int"}, {"num_bits", 8}};
  dir.write_config(j);
  expect_error<Unsupported>([&] { load_model_config(dir.path()); }, {"KV-cache scheme", dir.config_path()});
}

TEST(ModelConfig, ErrorsNameFileAndField) {
  TempModelDir dir;
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "cannot open"});
  dir.write("config.json", "{\"hidden_size\": 12,");
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "not valid JSON"});

  auto j = llama_v4();
  j.erase("hidden_size");
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "'hidden_size'", "missing"});
  j = llama_v4();
  j["num_hidden_layers"] = "3";
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "'num_hidden_layers'", "integer"});
  j = llama_v4();
  j["num_key_value_heads"] = 3;
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "'num_key_value_heads'"});
  j = llama_v4();
  j["hidden_size"] = 250;
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "'head_dim'"});
  j = llama_v4();
  j["torch_dtype"] = "int8";
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "'torch_dtype'", "int8"});
  j = llama_v4();
  j["rope_scaling"].erase("original_max_position_embeddings");
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); },
                          {dir.config_path(), "'rope_scaling.original_max_position_embeddings'"});
  j = llama_v4();
  j["eos_token_id"] = {1, "x"};
  dir.write_config(j);
  expect_error<FileError>([&] { load_model_config(dir.path()); }, {dir.config_path(), "'eos_token_id'"});
}

TEST(ModelConfig, UnsupportedArchitecturesAndVariants) {
  TempModelDir dir;
  auto j = llama_v4();
  j["architectures"] = {"MistralForCausalLM"};
  dir.write_config(j);
  expect_error<Unsupported>([&] { load_model_config(dir.path()); }, {"MistralForCausalLM", dir.config_path()});
  j = llama_v4();
  j.erase("architectures");
  j["model_type"] = "gemma";
  dir.write_config(j);
  expect_error<Unsupported>([&] { load_model_config(dir.path()); }, {"'gemma'"});
  j = llama_v4();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  dir.write_config(j);
  expect_error<Unsupported>([&] { load_model_config(dir.path()); }, {"yarn", "rope_scaling"});
  j = llama_v4();
  j["attention_bias"] = true;
  dir.write_config(j);
  expect_error<Unsupported>([&] { load_model_config(dir.path()); }, {"attention_bias"});
  j = llama_v4();
  j["hidden_act"] = "gelu";
  dir.write_config(j);
  expect_error<Unsupported>([&] { load_model_config(dir.path()); }, {"gelu"});
}

}  // namespace
}  // namespace fp8kv::engine

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "common/expect_error.h"
#include "common/temp_dir.h"
#include "fp8kv/error.h"
#include "fp8kv/planner.h"

namespace fp8kv {
namespace {

TEST(Planner, Presets) {
  struct Want {
    const char* name;
    int layers, q, kv, d;
  };
  for (const Want& w : {Want{"qwen3-0.6b", 28, 16, 8, 128}, Want{"qwen3-8b", 36, 32, 8, 128},
                        Want{"llama-3.1-8b", 32, 32, 8, 128}, Want{"llama-3.1-70b", 80, 64, 8, 128}}) {
    const ModelShape m = model_preset(w.name);
    EXPECT_EQ(m.num_layers, w.layers) << w.name;
    EXPECT_EQ(m.num_q_heads, w.q) << w.name;
    EXPECT_EQ(m.num_kv_heads, w.kv) << w.name;
    EXPECT_EQ(m.head_dim, w.d) << w.name;
    EXPECT_EQ(m.dtype, DType::kBFloat16);
  }
  EXPECT_EQ(model_preset("Qwen/Qwen3-8B").num_layers, 36);  // a repo id names its preset
  EXPECT_EQ(resolve_model_shape("meta-llama/Llama-3.1-70B").num_layers, 80);
  EXPECT_THROW(model_preset("gpt-2"), InvalidArgument);
}

TEST(Planner, HuggingFaceConfig) {
  const testing::TempDir dir("fp8kv_planner_");
  // Qwen3-8B's fields as its config.json spells them.
  const std::string qwen = dir.write("Qwen3-8B/config.json", R"({
    "architectures": ["Qwen3ForCausalLM"], "head_dim": 128, "hidden_size": 4096,
    "max_position_embeddings": 40960, "num_attention_heads": 32, "num_hidden_layers": 36,
    "num_key_value_heads": 8, "torch_dtype": "bfloat16"})");
  ModelShape m = model_shape_from_config(qwen);
  EXPECT_EQ(m.num_layers, 36);
  EXPECT_EQ(m.num_q_heads, 32);
  EXPECT_EQ(m.num_kv_heads, 8);
  EXPECT_EQ(m.head_dim, 128);
  EXPECT_EQ(m.max_position, 40960);
  EXPECT_EQ(m.name, "Qwen3-8B");
  EXPECT_EQ(resolve_model_shape(dir.file("Qwen3-8B")).num_layers, 36);
  // Plans from the config and from the preset agree.
  const KvPlan a = plan_kv_cache(m, 1ll << 30, DType::kFp8E4M3, ScaleGranularity::kPerToken, 16);
  const KvPlan b = plan_kv_cache(model_preset("qwen3-8b"), 1ll << 30, DType::kFp8E4M3, ScaleGranularity::kPerToken, 16);
  EXPECT_EQ(a.total_bytes, b.total_bytes);

  // No head_dim: hidden_size / heads; no num_key_value_heads: MHA; fp16.
  m = model_shape_from_config(dir.write("old/config.json", R"({"hidden_size": 2048, "num_attention_heads": 16,
      "num_hidden_layers": 4, "torch_dtype": "float16", "head_dim": null})"));
  EXPECT_EQ(m.head_dim, 128);
  EXPECT_EQ(m.num_kv_heads, 16);
  EXPECT_EQ(m.dtype, DType::kFloat16);
  // Multimodal wrapper.
  m = model_shape_from_config(dir.write("mm/config.json", R"({"text_config": {"hidden_size": 1024,
      "num_attention_heads": 8, "num_hidden_layers": 2, "num_key_value_heads": 2}})"));
  EXPECT_EQ(m.num_kv_heads, 2);

  EXPECT_THROW(model_shape_from_config(dir.write("bad1/config.json", "{not json")), FileError);
  EXPECT_THROW(model_shape_from_config(dir.write("bad2/config.json", R"({"num_hidden_layers": 2})")), FileError);
  EXPECT_THROW(model_shape_from_config(dir.write("bad3/config.json", R"({"num_hidden_layers": 2,
      "num_attention_heads": 6, "num_key_value_heads": 4, "head_dim": 64})")), FileError);
  EXPECT_THROW(model_shape_from_config(dir.file("missing.json")), FileError);
  std::filesystem::create_directories(dir.file("empty"));
  EXPECT_THROW(resolve_model_shape(dir.file("empty")), FileError);
}

TEST(Planner, ParseMemorySize) {
  EXPECT_EQ(parse_memory_size("40GiB"), 40ll << 30);
  EXPECT_EQ(parse_memory_size("512MiB"), 512ll << 20);
  EXPECT_EQ(parse_memory_size("1.5GB"), 1500000000ll);
  EXPECT_EQ(parse_memory_size("1073741824"), 1073741824ll);
  EXPECT_EQ(parse_memory_size("2 kib"), 2048);
  EXPECT_EQ(parse_memory_size("1TiB"), 1ll << 40);
  for (const char* bad : {"", "GiB", "12XB", "1.2.3GB", "-5GiB", "0", "0.1B", "1e3"}) {
    SCOPED_TRACE(std::string("--memory '") + bad + "'");
    testing::expect_invalid_argument([&] { parse_memory_size(bad, "--memory"); }, "--memory");
  }
}

TEST(Planner, Qwen3_8B_40GiB) {
  const ModelShape m = model_preset("qwen3-8b");
  const int64_t budget = 40ll << 30;
  const KvPlan bf16 = plan_kv_cache(m, budget, DType::kBFloat16, ScaleGranularity::kPerTensor, 16);
  const KvPlan fp8 = plan_kv_cache(m, budget, DType::kFp8E4M3, ScaleGranularity::kPerTensor, 16);
  const KvPlan tok = plan_kv_cache(m, budget, DType::kFp8E4M3, ScaleGranularity::kPerToken, 16);
  // 36 layers * 2 (K, V) * 8 heads * 128 channels * bytes.
  EXPECT_EQ(bf16.bytes_per_token, 36 * 2 * 8 * 128 * 2);
  EXPECT_EQ(fp8.bytes_per_token, 36 * 2 * 8 * 128);
  EXPECT_EQ(fp8.fixed_bytes, 36 * 2 * 4);
  EXPECT_EQ(tok.token_scale_bytes_per_token, 36 * 2 * 8 * 4);
  EXPECT_EQ(tok.bytes_per_token, 36 * 2 * 8 * 128 + 36 * 2 * 8 * 4);
  EXPECT_EQ(bf16.num_blocks, budget / (bf16.bytes_per_token * 16));
  EXPECT_GE(static_cast<double>(fp8.max_tokens) / static_cast<double>(bf16.max_tokens), 1.99);
  EXPECT_EQ(fp8.max_tokens, fp8.num_blocks * 16);
  EXPECT_EQ(bf16.max_sequences(32768), bf16.num_blocks / 2048);
  EXPECT_EQ(fp8.max_sequences(32769), fp8.num_blocks / 2049);  // a partial last block is a whole block
  EXPECT_THROW(fp8.max_sequences(0), InvalidArgument);
}

TEST(Planner, RejectsBadInput) {
  const ModelShape m = model_preset("qwen3-0.6b");
  EXPECT_THROW(plan_kv_cache(m, 1 << 20, DType::kFp8E4M3, ScaleGranularity::kPerTensor, 24), InvalidArgument);
  EXPECT_THROW(plan_kv_cache(m, 1 << 20, DType::kFloat32, ScaleGranularity::kPerTensor, 16), InvalidArgument);
  EXPECT_THROW(plan_kv_cache(m, 1000, DType::kFp8E4M3, ScaleGranularity::kPerTensor, 16), InvalidArgument);
  ModelShape bad = m;
  bad.num_q_heads = 12;
  EXPECT_THROW(plan_kv_cache(bad, 1 << 30, DType::kFp8E4M3, ScaleGranularity::kPerTensor, 16), InvalidArgument);
}

}  // namespace
}  // namespace fp8kv

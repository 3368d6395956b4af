// `fp8kv plan`: how many KV tokens and sequences fit in a memory budget, BF16 beside the chosen
// storage dtype. The numbers are exactly what KvCache would allocate (planner.h).
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "fp8kv/error.h"
#include "fp8kv/planner.h"

namespace fp8kv::cli {
namespace {

struct PlanOptions {
  std::string model;
  std::string memory;
  std::string kv_cache_dtype = "fp8";
  std::string scales = "per_tensor";
  int block_size = 16;
  int64_t context = 32768;
  bool json = false;
};

// Per-token scales as a share of the K/V element bytes they accompany.
double scale_overhead_percent(const KvPlan& p) {
  const int64_t data = p.bytes_per_token - p.token_scale_bytes_per_token;
  return data > 0 ? 100.0 * static_cast<double>(p.token_scale_bytes_per_token) / static_cast<double>(data) : 0.0;
}

std::string label(const KvPlan& p) {
  std::string s = kv_cache_dtype_name(p.dtype);
  if (is_fp8(p.dtype)) s += std::string(" ") + scale_granularity_name(p.granularity);
  return s;
}

nlohmann::json plan_json(const KvPlan& p, int64_t context, const KvPlan& baseline) {
  return {{"kv_cache_dtype", kv_cache_dtype_name(p.dtype)},
          {"scales", is_fp8(p.dtype) ? scale_granularity_name(p.granularity) : "none"},
          {"bytes_per_token", p.bytes_per_token},
          {"token_scale_bytes_per_token", p.token_scale_bytes_per_token},
          {"token_scale_overhead_percent", scale_overhead_percent(p)},
          {"bytes_per_block", p.bytes_per_block},
          {"fixed_bytes", p.fixed_bytes},
          {"num_blocks", p.num_blocks},
          {"max_tokens", p.max_tokens},
          {"max_sequences", p.max_sequences(context)},
          {"allocated_bytes", p.total_bytes},
          {"capacity_ratio_vs_baseline",
           static_cast<double>(p.max_tokens) / static_cast<double>(baseline.max_tokens)}};
}

void run_plan(const PlanOptions& o) {
  const ModelShape model = resolve_model_shape(o.model);
  const int64_t budget = parse_memory_size(o.memory, "--memory");
  const DType baseline_dtype =
      model.dtype == DType::kFloat16 ? DType::kFloat16 : DType::kBFloat16;  // "auto" for a bf16/fp16 model
  const DType dtype = parse_kv_cache_dtype(o.kv_cache_dtype, baseline_dtype, "--kv-cache-dtype");
  const ScaleGranularity granularity = parse_scale_granularity(o.scales, "--scales");
  FP8KV_REQUIRE(o.context > 0, "--context", "must be > 0 tokens, got ", o.context);
  const KvPlan base = plan_kv_cache(model, budget, baseline_dtype, ScaleGranularity::kPerTensor, o.block_size);
  const KvPlan plan = plan_kv_cache(model, budget, dtype, granularity, o.block_size);

  if (o.json) {
    const nlohmann::json out = {
        {"model",
         {{"name", model.name},
          {"num_layers", model.num_layers},
          {"num_q_heads", model.num_q_heads},
          {"num_kv_heads", model.num_kv_heads},
          {"head_dim", model.head_dim},
          {"dtype", dtype_name(model.dtype)}}},
        {"budget_bytes", budget},
        {"block_size", o.block_size},
        {"context", o.context},
        {"baseline", plan_json(base, o.context, base)},
        {"plan", plan_json(plan, o.context, base)}};
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("model %s: %d layers, %d q heads, %d kv heads, head_dim %d\n", model.name.c_str(), model.num_layers,
              model.num_q_heads, model.num_kv_heads, model.head_dim);
  std::printf("budget %s = %lld bytes, block size %d, context %lld tokens\n\n", o.memory.c_str(),
              static_cast<long long>(budget), o.block_size, static_cast<long long>(o.context));
  const auto row = [](const char* name, const std::string& a, const std::string& b) {
    std::printf("%-30s %22s %22s\n", name, a.c_str(), b.c_str());
  };
  const auto num = [](int64_t v) { return std::to_string(v); };
  const auto overhead = [](const KvPlan& p) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%lld (%.3f%%)", static_cast<long long>(p.token_scale_bytes_per_token),
                  scale_overhead_percent(p));
    return std::string(buf);
  };
  const auto ratio = [&](const KvPlan& p) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.4fx", static_cast<double>(p.max_tokens) / static_cast<double>(base.max_tokens));
    return std::string(buf);
  };
  const std::string seq_label = "sequences at " + std::to_string(o.context) + " tokens";
  row("kv-cache dtype", label(base), label(plan));
  row("bytes per token", num(base.bytes_per_token), num(plan.bytes_per_token));
  row("  per-token scales (% of K/V)", overhead(base), overhead(plan));
  row("bytes per block", num(base.bytes_per_block), num(plan.bytes_per_block));
  row("static scale bytes", num(base.fixed_bytes), num(plan.fixed_bytes));
  row("blocks", num(base.num_blocks), num(plan.num_blocks));
  row("tokens", num(base.max_tokens), num(plan.max_tokens));
  row(seq_label.c_str(), num(base.max_sequences(o.context)), num(plan.max_sequences(o.context)));
  row("allocated bytes", num(base.total_bytes), num(plan.total_bytes));
  row("tokens vs baseline", ratio(base), ratio(plan));
}

}  // namespace

void register_plan(CLI::App& app) {
  auto options = std::make_shared<PlanOptions>();
  CLI::App* cmd = app.add_subcommand("plan", "KV-cache capacity in a memory budget: the model dtype beside FP8");
  cmd->add_option("--model", options->model,
                  "preset (qwen3-0.6b, qwen3-8b, llama-3.1-8b, llama-3.1-70b), config.json or model directory")
      ->required();
  cmd->add_option("--memory", options->memory, "KV-cache memory budget, e.g. 40GiB, 512MiB, 1.5GB")->required();
  cmd->add_option("--kv-cache-dtype", options->kv_cache_dtype, "auto, fp8 (= fp8_e4m3), fp8_e4m3, fp8_e5m2, bf16, fp16")
      ->capture_default_str();
  cmd->add_option("--scales", options->scales, "FP8 scale granularity: per_tensor, per_head, per_token")
      ->capture_default_str();
  cmd->add_option("--block-size", options->block_size, "tokens per block: a power of two in [8, 256]")
      ->capture_default_str();
  cmd->add_option("--context", options->context, "context length for the concurrent-sequence count")
      ->capture_default_str();
  cmd->add_flag("--json", options->json, "print JSON instead of a table");
  cmd->callback([options] { run_plan(*options); });
}

}  // namespace fp8kv::cli

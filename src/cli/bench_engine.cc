// `fp8kv bench engine`: end-to-end decode of a Qwen3-8B-shaped model (random bf16 weights generated
// on the GPU, no download) over the paged cache, BF16 KV vs FP8 E4M3 KV, in one run.
//
//   * Inter-token latency (one engine decode step: all 36 layers, cuBLAS GEMMs, cache write,
//     paged decode attention, lm_head, argmax, ids to the host) against context length at batch
//     1, 8 and 32. The cache is filled with random K/V for the context directly instead of running
//     a prefill: decode cost does not depend on the values. Points whose cache does not fit in
//     the GPU's memory are skipped and listed. Fitted ITL = a + s * context per (dtype, batch);
//     reported: s per dtype, s_fp8 / s_bf16, the context where the fitted lines cross, and the
//     measured break-even (where the measured curves cross). The two differ because ITL is not
//     linear in context at small batch: the attention kernels have a fixed floor of a few
//     microseconds per layer, and FP8's share of the memory bandwidth grows faster with context
//     than BF16's, so a line fitted up to 128k misplaces the intercepts by tens of microseconds.
//   * Capacity: at a fixed KV budget, the largest batch of `capacity_context`-token sequences each
//     dtype holds (the planner's count), and the decode tokens/s measured at that batch.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <random>

#include "cli/commands.h"
#include "fp8kv/engine/model.h"
#include "fp8kv/error.h"

namespace fp8kv::cli {
namespace {

struct Options {
  std::vector<int64_t> contexts = {1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072};
  std::vector<int> batches = {1, 8, 32};
  int warmup = 5, steps = 30;
  double memory_fraction = 0.85;  // of the free memory after the weights, for the KV cache
  std::string capacity_budget = "40GiB";
  int64_t capacity_context = 32768;
  std::string json_path;
  uint64_t seed = 1234;
};

// Qwen3-8B's config.json (hidden 4096, 36 layers, 32 query / 8 KV heads of 128, MLP 12288,
// vocab 151936, rope_theta 1e6, QK-norm, separate lm_head).
engine::ModelConfig qwen3_8b() {
  engine::ModelConfig c;
  c.architecture = engine::Architecture::kQwen3;
  c.hidden_size = 4096;
  c.intermediate_size = 12288;
  c.num_layers = 36;
  c.num_q_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.vocab_size = 151936;
  c.rms_norm_eps = 1e-6;
  c.rope.theta = 1000000.0;
  c.rope.rotary_dim = 128;
  c.qk_norm = true;
  c.tie_word_embeddings = false;
  c.dtype = DType::kBFloat16;
  c.max_position = 40960;
  return c;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The smallest context from which FP8 is never slower than BF16 at any measured point, with linear
// interpolation between the last measured point where FP8 is slower and the next. 0 when FP8 is
// not slower at the smallest measured context (the crossing lies at or below it); -1 when FP8 is
// slower at the largest.
double measured_break_even(const std::vector<double>& x, const std::vector<double>& y_bf,
                           const std::vector<double>& y_f8) {
  int last_slower = -1;
  for (size_t i = 0; i < x.size(); ++i) {
    if (y_f8[i] > y_bf[i]) last_slower = static_cast<int>(i);
  }
  if (last_slower < 0) return 0.0;
  if (last_slower + 1 == static_cast<int>(x.size())) return -1.0;
  const size_t i = static_cast<size_t>(last_slower);
  const double d0 = y_f8[i] - y_bf[i];          // > 0
  const double d1 = y_f8[i + 1] - y_bf[i + 1];  // <= 0
  return x[i] + (x[i + 1] - x[i]) * d0 / (d0 - d1);
}

// Least squares y = a + s x.
std::pair<double, double> fit_line(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  const double s = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  return {(sy - s * sx) / n, s};
}

class DecodeBench {
 public:
  DecodeBench(engine::Model& model, KvCache& cache, const Options& o) : model_(model), cache_(cache), o_(o) {}

  // Median seconds per decode step of `batch` sequences that start at `context` tokens.
  double itl(int batch, int64_t context) {
    BlockAllocator& alloc = cache_.allocator();
    std::vector<SequenceId> seqs;
    for (int b = 0; b < batch; ++b) {
      seqs.push_back(alloc.create_sequence());
      alloc.append_tokens(seqs.back(), context);  // K/V of the context: the random fill
    }
    const int32_t vocab = model_.config().vocab_size;
    engine::DeviceTensor logits(Device::kCuda, DType::kFloat32, {batch, vocab});
    engine::DeviceTensor ids(Device::kCuda, DType::kInt32, {batch});
    std::vector<int32_t> next(static_cast<size_t>(batch));
    std::mt19937 rng(static_cast<uint32_t>(o_.seed));
    for (int32_t& t : next) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    std::vector<double> times;
    for (int step = 0; step < o_.warmup + o_.steps; ++step) {
      const auto start = std::chrono::steady_clock::now();
      engine::StepBatch sb;
      for (int b = 0; b < batch; ++b) {
        const int64_t pos = alloc.length(seqs[static_cast<size_t>(b)]);
        const AppendResult a = alloc.append_tokens(seqs[static_cast<size_t>(b)], 1);
        sb.add_sequence({next[static_cast<size_t>(b)]}, static_cast<int32_t>(pos), a.slots,
                        alloc.block_table(seqs[static_cast<size_t>(b)]), true);
      }
      sb.finalize();
      model_.forward(sb, cache_, logits.ref());
      model_.backend().argmax(logits.ref(), ids.ref());
      model_.backend().copy_to_host(next.data(), ids.ref());  // waits for the step
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (step >= o_.warmup) times.push_back(secs);
    }
    for (SequenceId s : seqs) alloc.free_sequence(s);
    return median(times);
  }

 private:
  engine::Model& model_;
  KvCache& cache_;
  const Options& o_;
};

void run_bench(const Options& o) {
  auto backend = engine::make_cuda_backend();
  const engine::ModelConfig config = qwen3_8b();
  const int64_t longest = std::max(*std::max_element(o.contexts.begin(), o.contexts.end()), o.capacity_context);
  const int64_t max_position = longest + o.warmup + o.steps + 1;
  std::fprintf(stderr, "bench engine: generating random Qwen3-8B weights on the GPU...\n");
  engine::Model model = engine::Model::random(config, *backend, o.seed, max_position);
  int64_t free_bytes = 0, total_bytes = 0;
  backend->memory_info(free_bytes, total_bytes);
  const int64_t budget = static_cast<int64_t>(static_cast<double>(free_bytes) * o.memory_fraction);
  const int64_t capacity_budget = std::min(parse_memory_size(o.capacity_budget, "capacity-budget"), budget);
  const ModelShape shape = engine::model_shape(config);
  const int growth = o.warmup + o.steps + 1;

  nlohmann::json out;
  out["model"] = "qwen3-8b (random bf16 weights)";
  out["weights_bytes"] = model.weight_bytes();
  out["kv_budget_bytes"] = budget;
  out["method"] = "ITL = median wall time of one decode step (forward + argmax + ids to host) over " +
                  std::to_string(o.steps) + " steps after " + std::to_string(o.warmup) +
                  " warm-up steps; the context's K/V are random values written directly into the pages (decode "
                  "cost does not depend on them); FP8 = E4M3 with per-tensor scales";
  nlohmann::json points = nlohmann::json::array(), skipped = nlohmann::json::array(), fits = nlohmann::json::array();
  nlohmann::json capacity = nlohmann::json::array();
  std::map<std::pair<std::string, int>, std::pair<std::vector<double>, std::vector<double>>> series;

  for (DType dtype : {DType::kBFloat16, DType::kFp8E4M3}) {
    const std::string name = kv_cache_dtype_name(dtype);
    const KvPlan plan = plan_kv_cache(shape, budget, dtype, ScaleGranularity::kPerTensor, 16);
    engine::KvCacheFormat format;
    format.dtype = dtype;
    format.granularity = ScaleGranularity::kPerTensor;
    if (is_fp8(dtype)) {
      // Random N(0,1) codes stand for K/V of scale ~1 per code unit / fp8 range; any valid scale
      // gives the same cost.
      format.k_scales.assign(static_cast<size_t>(config.num_layers), {1.0f / 64});
      format.v_scales = format.k_scales;
    }
    KvCache cache = engine::make_kv_cache(config, format, plan.num_blocks, 16, Device::kCuda);
    for (int l = 0; l < config.num_layers; ++l) backend->fill_kv_random(cache.layer(l), o.seed + static_cast<uint64_t>(l));
    backend->synchronize();
    DecodeBench bench(model, cache, o);
    for (int batch : o.batches) {
      for (int64_t ctx : o.contexts) {
        if (plan.max_sequences(ctx + growth) < batch) {
          skipped.push_back({{"kv_dtype", name}, {"batch", batch}, {"context", ctx},
                             {"reason", "KV cache of " + std::to_string(batch) + " x " + std::to_string(ctx) +
                                            " tokens exceeds the budget (" + std::to_string(plan.max_tokens) +
                                            " tokens)"}});
          continue;
        }
        const double t = bench.itl(batch, ctx);
        std::printf("%-9s batch %3d context %7lld: ITL %8.3f ms\n", name.c_str(), batch, static_cast<long long>(ctx),
                    t * 1e3);
        std::fflush(stdout);
        points.push_back({{"kv_dtype", name}, {"batch", batch}, {"context", ctx}, {"itl_ms", t * 1e3}});
        series[{name, batch}].first.push_back(static_cast<double>(ctx));
        series[{name, batch}].second.push_back(t * 1e3);
      }
    }
    const KvPlan cap = plan_kv_cache(shape, capacity_budget, dtype, ScaleGranularity::kPerTensor, 16);
    const int64_t n = cap.max_sequences(o.capacity_context + growth);
    const double t = n > 0 ? bench.itl(static_cast<int>(n), o.capacity_context) : 0.0;
    std::printf("%-9s capacity at %s: %lld sequences of %lld tokens, ITL %.3f ms, %.1f tokens/s\n", name.c_str(),
                o.capacity_budget.c_str(), static_cast<long long>(n), static_cast<long long>(o.capacity_context),
                t * 1e3, n > 0 ? static_cast<double>(n) / t : 0.0);
    capacity.push_back({{"kv_dtype", name}, {"budget_bytes", capacity_budget}, {"context", o.capacity_context},
                        {"max_sequences", n}, {"itl_ms", t * 1e3},
                        {"tokens_per_s", n > 0 ? static_cast<double>(n) / t : 0.0}});
  }

  for (int batch : o.batches) {
    const auto& bf = series[{"bf16", batch}];
    const auto& f8 = series[{"fp8_e4m3", batch}];
    // Fit both dtypes over the contexts both measured, so the slopes are comparable.
    std::vector<double> x, y_bf, y_f8;
    for (size_t i = 0; i < bf.first.size(); ++i) {
      const auto it = std::find(f8.first.begin(), f8.first.end(), bf.first[i]);
      if (it == f8.first.end()) continue;
      x.push_back(bf.first[i]);
      y_bf.push_back(bf.second[i]);
      y_f8.push_back(f8.second[static_cast<size_t>(it - f8.first.begin())]);
    }
    if (x.size() < 2) continue;
    const auto [a_bf, s_bf] = fit_line(x, y_bf);
    const auto [a_f8, s_f8] = fit_line(x, y_f8);
    // Where a_f8 + s_f8 c = a_bf + s_bf c; FP8 is faster past it (0 when it is never slower).
    const double break_even = a_f8 <= a_bf ? 0.0 : (s_f8 < s_bf ? (a_f8 - a_bf) / (s_bf - s_f8) : -1.0);
    const double measured = measured_break_even(x, y_bf, y_f8);
    const auto describe = [](double c, const std::string& at_zero) {
      if (c < 0) return std::string("never");
      if (c == 0) return at_zero;
      return std::to_string(static_cast<long long>(c)) + " tokens";
    };
    std::printf("batch %2d: slope bf16 %.4g ms/1k tok, fp8 %.4g ms/1k tok, ratio %.3f, break-even: fitted lines %s, "
                "measured %s (fit over %zu contexts %lld..%lld)\n",
                batch, s_bf * 1e3, s_f8 * 1e3, s_f8 / s_bf, describe(break_even, "FP8 never slower").c_str(),
                describe(measured, "<= " + std::to_string(static_cast<long long>(x.front())) + " tokens").c_str(),
                x.size(), static_cast<long long>(x.front()), static_cast<long long>(x.back()));
    fits.push_back({{"batch", batch}, {"contexts", x}, {"bf16_intercept_ms", a_bf}, {"bf16_slope_ms_per_token", s_bf},
                    {"fp8_intercept_ms", a_f8}, {"fp8_slope_ms_per_token", s_f8}, {"slope_ratio", s_f8 / s_bf},
                    {"break_even_context", break_even}, {"measured_break_even_context", measured},
                    {"break_even_note", "0: FP8 not slower at the smallest context measured; -1: never"}});
  }
  out["points"] = points;
  out["skipped"] = skipped;
  out["fits"] = fits;
  out["capacity"] = capacity;
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    if (!f) throw FileError(o.json_path, "cannot be written");
    f << out.dump(1) << "\n";
  }
}

}  // namespace

void register_bench_engine(CLI::App& bench) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand(
      "engine", "Qwen3-8B decode ITL vs context (BF16 vs FP8 KV), slopes, break-even, capacity (CUDA)");
  cmd->add_option("--contexts", o->contexts, "Context lengths")->delimiter(',')->capture_default_str();
  cmd->add_option("--batches", o->batches, "Batch sizes")->delimiter(',')->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "Warm-up steps per point")->capture_default_str();
  cmd->add_option("--steps", o->steps, "Timed steps per point")->capture_default_str();
  cmd->add_option("--memory-fraction", o->memory_fraction, "Share of free GPU memory for the KV cache")
      ->capture_default_str();
  cmd->add_option("--capacity-budget", o->capacity_budget, "KV budget of the capacity comparison")
      ->capture_default_str();
  cmd->add_option("--capacity-context", o->capacity_context, "Context of the capacity comparison")
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Write every number here");
  cmd->add_option("--seed", o->seed, "Seed of the random weights and K/V")->capture_default_str();
  cmd->callback([o] { run_bench(*o); });
}

}  // namespace fp8kv::cli

// `fp8kv bench decode`: paged decode attention on the GPU, BF16 storage vs FP8 E4M3 (per-tensor,
// per-head, per-token scales), against the GPU's read bandwidth and PyTorch SDPA (flash backend,
// contiguous BF16 cache) measured in the same run. Prints a table; --json writes every number.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "cli/commands.h"
#include "cli/subprocess.h"
#include "fp8kv/dtype.h"
#include "fp8kv/error.h"
#include "fp8kv/scales.h"

#if defined(FP8KV_WITH_CUDA)
#include <cuda_runtime.h>

#include "cuda/bench_support.h"
#include "cuda/cuda_check.h"
#include "fp8kv/cuda.h"
#endif

namespace fp8kv::cli {
namespace {

struct Shape {
  std::string name;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
};

// The default shapes are issue 3's; llama-3.1-70b (groups of 8 query heads per KV head, one
// thread block per KV head) is there on request (--shapes).
const Shape kShapes[] = {{"llama-3.1-8b", 32, 8, 128}, {"qwen3-0.6b", 16, 8, 128}, {"llama-3.1-70b", 64, 8, 128}};

struct Options {
  std::string json_path;
  std::vector<int> batches = {1, 8, 32, 128};
  std::vector<int> contexts = {1024, 4096, 16384, 65536, 131072};
  std::vector<int> block_sizes = {16, 64};
  std::vector<std::string> shapes = {"llama-3.1-8b", "qwen3-0.6b"};
  int repeats = 30;
  bool peers = true;
  std::string peers_script = "bench/decode_peers.py";
  double memory_fraction = 0.8;  // of free device memory one configuration may use
  std::string balanced = "auto";  // the plan's balanced partition: auto (its heuristic), on, off
  int max_splits = 0;              // the plan's cap on splits per sequence (0 = its heuristic)
  bool interleaved = false;        // time the variants in turns, run by run, instead of one after another
  int settle_ms = 1000;            // idle pause before timing each point (see time_variants)
};

// Variants measured for every point, in table order.
struct Variant {
  const char* name;
  DType storage;
  ScaleGranularity granularity;
};
const Variant kVariants[] = {{"bf16", DType::kBFloat16, ScaleGranularity::kPerTensor},
                             {"fp8_tensor", DType::kFp8E4M3, ScaleGranularity::kPerTensor},
                             {"fp8_head", DType::kFp8E4M3, ScaleGranularity::kPerHead},
                             {"fp8_token", DType::kFp8E4M3, ScaleGranularity::kPerToken}};

// KV bytes one decode step reads: K and V of every token, plus the scales it must load.
double kv_bytes(const Shape& s, int batch, int context, const Variant& v) {
  const double tokens = static_cast<double>(batch) * context;
  double bytes = 2.0 * tokens * s.num_kv_heads * s.head_dim * static_cast<double>(dtype_size(v.storage));
  if (is_fp8(v.storage)) {
    if (v.granularity == ScaleGranularity::kPerToken) bytes += 2.0 * tokens * s.num_kv_heads * sizeof(float);
    if (v.granularity == ScaleGranularity::kPerHead) bytes += 2.0 * s.num_kv_heads * sizeof(float);
    if (v.granularity == ScaleGranularity::kPerTensor) bytes += 2.0 * sizeof(float);
  }
  return bytes;
}

#if defined(FP8KV_WITH_CUDA)

// One point's K/V pools, one pair per storage dtype, filled with random codes: the FP8 variants
// (per-tensor, per-head, per-token) differ only in their scales and share the FP8 pair.
struct Pools {
  Pools(DType storage, size_t elems)
      : k(elems * dtype_size(storage)), v(elems * dtype_size(storage)) {
    cuda_bench::fill_random(k.get(), storage, elems, 1);
    cuda_bench::fill_random(v.get(), storage, elems, 2);
  }
  cuda_bench::DeviceBuffer k, v;
};

// What a point's variants share besides the pools: the block table (each sequence owns a
// contiguous run of blocks, in a shuffled order across sequences), the lengths, q and the output.
struct PointInputs {
  PointInputs(const Shape& s, int batch, int context, int block_size)
      : batch(batch),
        blocks_per_seq((context + block_size - 1) / block_size),
        num_blocks(blocks_per_seq * batch),
        lens_host(static_cast<size_t>(batch), context),
        table(static_cast<size_t>(num_blocks) * sizeof(int32_t)),
        lens(static_cast<size_t>(batch) * sizeof(int32_t)),
        q(static_cast<size_t>(batch) * s.num_q_heads * s.head_dim * 2),
        out(static_cast<size_t>(batch) * s.num_q_heads * s.head_dim * 2) {
    std::vector<int32_t> host_table(static_cast<size_t>(num_blocks));
    std::vector<int32_t> order(static_cast<size_t>(batch));
    for (int b = 0; b < batch; ++b) order[static_cast<size_t>(b)] = (b * 7919) % batch;
    for (int b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < blocks_per_seq; ++i) {
        host_table[static_cast<size_t>(b * blocks_per_seq + i)] =
            static_cast<int32_t>(order[static_cast<size_t>(b)] * blocks_per_seq + i);
      }
    }
    FP8KV_CUDA_CHECK(cudaMemcpy(table.get(), host_table.data(), host_table.size() * sizeof(int32_t),
                                cudaMemcpyHostToDevice));
    FP8KV_CUDA_CHECK(cudaMemcpy(lens.get(), lens_host.data(), lens_host.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    cuda_bench::fill_random(q.get(), DType::kBFloat16, static_cast<size_t>(batch) * s.num_q_heads * s.head_dim, 6);
  }
  int batch;
  int64_t blocks_per_seq, num_blocks;
  std::vector<int32_t> lens_host;
  cuda_bench::DeviceBuffer table, lens, q, out;
};

// One variant's decode step, ready to run: its scales and its plan (computed once, outside the
// timing) over the point's shared pools and inputs.
class DecodeCase {
 public:
  DecodeCase(const Shape& s, int block_size, const Variant& v, const Pools& pools, const PointInputs& in,
             const cuda::DecodePlanOptions& plan_options)
      : token_scales_(is_fp8(v.storage) && v.granularity == ScaleGranularity::kPerToken
                          ? static_cast<size_t>(in.num_blocks) * s.num_kv_heads * block_size
                          : 0),
        k_token_scale_(token_scales_ * sizeof(float)),
        v_token_scale_(token_scales_ * sizeof(float)),
        static_scales_(2 * static_cast<size_t>(s.num_kv_heads) * sizeof(float)) {
    PagedKvLayer cache;
    cache.layout = paged_layout(v.storage, s.num_kv_heads, block_size, s.head_dim);
    cache.num_blocks = in.num_blocks;
    cache.dtype = v.storage;
    cache.granularity = v.granularity;
    cache.device = Device::kCuda;
    cache.k = pools.k.get();
    cache.v = pools.v.get();
    if (token_scales_ > 0) {
      cuda_bench::fill_uniform(k_token_scale_.as<float>(), token_scales_, 0.002f, 0.02f, 3);
      cuda_bench::fill_uniform(v_token_scale_.as<float>(), token_scales_, 0.002f, 0.02f, 4);
      cache.k_token_scale = k_token_scale_.as<float>();
      cache.v_token_scale = v_token_scale_.as<float>();
    } else if (is_fp8(v.storage)) {
      cuda_bench::fill_uniform(static_scales_.as<float>(), 2 * static_cast<size_t>(s.num_kv_heads), 0.002f, 0.02f, 5);
      cache.k_scale = static_scales_.as<float>();
      cache.v_scale = static_scales_.as<float>() + s.num_kv_heads;
    }
    const int batch = in.batch;
    args_.q = TensorRef(in.q.get(), DType::kBFloat16, {batch, s.num_q_heads, s.head_dim}, Device::kCuda);
    args_.cache = cache;
    args_.block_tables = TensorRef(in.table.get(), DType::kInt32, {batch, in.blocks_per_seq}, Device::kCuda);
    args_.seq_lens = TensorRef(in.lens.get(), DType::kInt32, {batch}, Device::kCuda);
    args_.out = TensorRef(in.out.get(), DType::kBFloat16, {batch, s.num_q_heads, s.head_dim}, Device::kCuda);
    args_.softmax_scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    plan_ = std::make_unique<cuda::DecodePlan>(args_, in.lens_host, plan_options);
  }

  void run() const { plan_->run(args_); }

 private:
  size_t token_scales_;
  cuda_bench::DeviceBuffer k_token_scale_, v_token_scale_, static_scales_;
  DecodeArgs args_;
  std::unique_ptr<cuda::DecodePlan> plan_;
};

// Median microseconds of one decode step per variant (kVariants order). Sequential (the default):
// each variant's warm-up and runs one after another. Interleaved (--interleaved): the variants take
// turns run by run, as the prefill bench does; for decode that costs the variant that follows a
// different kernel 3-4 µs (H100, 2026-11-25: batch 1 x 16k FP8 per-tensor 22.6-22.8 µs right after
// BF16 against 19.3-19.8 per-head right after it, 19.1-19.6 sequential; BF16 at 8 x 1k 21.4-21.8
// against 17.6-17.9), presumably the kernel's code fetched again after the L2 flush evicted it.
// The sequential default compares the kernels with their code warm, each as it runs alone.
// Before the timing the GPU idles `settle_ms`: right after a point that streams at the read
// bandwidth for a second or more (batch 128 x 64k, 32 x 128k), the next points ran 12-16% slower
// for a few hundred milliseconds, BF16 and FP8 alike (H100, 2026-11-25: llama 128 x 1k FP8 119-122
// us right after 128 x 64k, 104-106 later in the same run or after a 1 s pause; presumably the
// clocks coming back up after the power-capped load).
std::vector<double> time_variants(const Shape& s, int batch, int context, int block_size, int repeats,
                                  bool interleaved, int settle_ms, const cuda::DecodePlanOptions& plan_options) {
  const PointInputs inputs(s, batch, context, block_size);
  std::map<DType, std::unique_ptr<Pools>> pools;
  std::vector<std::unique_ptr<DecodeCase>> cases;
  for (const Variant& v : kVariants) {
    auto& pool = pools[v.storage];
    if (!pool) {
      const PagedLayout layout = paged_layout(v.storage, s.num_kv_heads, block_size, s.head_dim);
      pool = std::make_unique<Pools>(v.storage, static_cast<size_t>(inputs.num_blocks * layout.block_elements()));
    }
    cases.push_back(std::make_unique<DecodeCase>(s, block_size, v, *pool, inputs, plan_options));
  }
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
  std::vector<std::function<void()>> runs;
  for (const auto& c : cases) runs.push_back([&c] { c->run(); });
  std::vector<double> us;
  if (interleaved) {
    us = cuda_bench::time_interleaved_median_us(runs, 3, repeats);
  } else {
    for (const auto& run : runs) us.push_back(cuda_bench::time_median_us(run, 3, repeats));
  }
  cuda::check_errors();
  return us;
}

// Runs bench/decode_peers.py over the points; returns (shape, batch, context) -> SDPA µs.
std::map<std::tuple<std::string, int, int>, double> run_peers(const Options& o,
                                                              const std::vector<std::tuple<Shape, int, int>>& points,
                                                              std::string* status) {
  std::map<std::tuple<std::string, int, int>, double> result;
  if (std::system("python3 -c 'import torch' > /dev/null 2>&1") != 0) {
    *status = "skipped: python3 with torch not importable";
    return result;
  }
  nlohmann::json request = nlohmann::json::array();
  for (const auto& [s, batch, context] : points) {
    request.push_back({{"shape", s.name}, {"num_q_heads", s.num_q_heads}, {"num_kv_heads", s.num_kv_heads},
                       {"head_dim", s.head_dim}, {"batch", batch}, {"context", context}});
  }
  const std::string request_path = "/tmp/fp8kv_decode_peers_request.json";
  std::ofstream(request_path) << request.dump();
  const std::string command =
      "python3 " + o.peers_script + " --request " + request_path + " --repeats " + std::to_string(o.repeats);
  std::string output;
  const int rc = run_and_capture(command, &output);
  if (rc == -1) {
    *status = "failed: could not start " + command;
    return result;
  }
  if (rc != 0) {
    *status = "failed: " + command + " exited with " + std::to_string(rc);
    return result;
  }
  const nlohmann::json reply = nlohmann::json::parse(output.substr(output.find('{')));
  for (const auto& r : reply["results"]) {
    if (r.contains("us") && !r["us"].is_null()) {
      result[{r["shape"].get<std::string>(), r["batch"].get<int>(), r["context"].get<int>()}] = r["us"].get<double>();
    }
  }
  *status = "ok: " + reply.value("backend", std::string("sdpa")) + ", torch " + reply.value("torch", std::string("?"));
  return result;
}

void run_bench(const Options& o) {
  if (!cuda::available()) throw Unsupported("bench decode needs a CUDA device");
  cuda::DecodePlanOptions plan_options;
  plan_options.balanced = o.balanced == "on" ? 1 : o.balanced == "off" ? -1 : 0;
  plan_options.max_splits = o.max_splits;
  std::vector<Shape> shapes;
  for (const auto& name : o.shapes) {
    bool found = false;
    for (const Shape& s : kShapes) {
      if (s.name == name) {
        shapes.push_back(s);
        found = true;
      }
    }
    FP8KV_REQUIRE(found, "--shapes", "unknown shape '", name, "' (llama-3.1-8b, qwen3-0.6b, llama-3.1-70b)");
  }

  // Points whose BF16 and FP8 caches fit at once (the variants are timed side by side).
  const size_t budget = static_cast<size_t>(static_cast<double>(cuda_bench::device_free_bytes()) * o.memory_fraction);
  std::vector<std::tuple<Shape, int, int>> points;
  std::vector<std::tuple<Shape, int, int>> skipped;
  for (const Shape& s : shapes) {
    for (int batch : o.batches) {
      for (int context : o.contexts) {
        const double bytes = (kv_bytes(s, batch, context, kVariants[0]) + kv_bytes(s, batch, context, kVariants[3])) * 1.02;
        (bytes < static_cast<double>(budget) ? points : skipped).emplace_back(s, batch, context);
      }
    }
  }

  nlohmann::json j;
  j["benchmark"] = "decode";
  j["gpu"] = cuda_bench::device_name();
  {
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    j["date"] = date;
  }
  const double read_gbs = cuda_bench::measure_read_bandwidth_gbs(size_t{4} << 30, 20);
  j["read_bandwidth_gbs"] = read_gbs;
  j["method"] = "CUDA events, median of " + std::to_string(o.repeats) +
                " single runs, L2 flushed by reading 256 MiB before each; the four fp8kv variants " +
                (o.interleaved ? std::string("interleaved run by run") : std::string("timed one after another")) +
                "; plan computed once outside the timing; q bf16, "
                "out bf16; effective bandwidth = K+V bytes (+ scales) / time; balanced partition: " + o.balanced +
                "; max splits per sequence: " + (o.max_splits > 0 ? std::to_string(o.max_splits) : std::string("heuristic")) +
                "; idle " + std::to_string(o.settle_ms) + " ms before each point";
  std::cerr << "read bandwidth: " << read_gbs << " GB/s\n";

  std::string peer_status = "disabled (--no-peers)";
  std::map<std::tuple<std::string, int, int>, double> sdpa;
  if (o.peers) sdpa = run_peers(o, points, &peer_status);
  j["sdpa_peer"] = peer_status;
  std::cerr << "SDPA peer: " << peer_status << "\n";

  nlohmann::json rows = nlohmann::json::array();
  std::ostringstream table;
  table << "| shape | block | batch | context | bf16 µs | fp8 tensor µs | fp8 head µs | fp8 token µs | SDPA bf16 µs | "
           "fp8 tensor GB/s | % of read BW | fp8/bf16 | fp8/SDPA | token/tensor |\n"
        << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& [s, batch, context] : points) {
    for (int block_size : o.block_sizes) {
      nlohmann::json row = {{"shape", s.name},     {"num_q_heads", s.num_q_heads}, {"num_kv_heads", s.num_kv_heads},
                            {"head_dim", s.head_dim}, {"batch", batch},           {"context", context},
                            {"block_size", block_size}};
      std::map<std::string, double> us;
      const std::vector<double> times =
          time_variants(s, batch, context, block_size, o.repeats, o.interleaved, o.settle_ms, plan_options);
      for (size_t i = 0; i < std::size(kVariants); ++i) {
        const Variant& v = kVariants[i];
        const double t = times[i];
        const double gbs = kv_bytes(s, batch, context, v) / (t * 1e-6) / 1e9;
        us[v.name] = t;
        row[v.name] = {{"us", t}, {"kv_bytes", kv_bytes(s, batch, context, v)}, {"gbs", gbs},
                       {"percent_of_read_bw", 100.0 * gbs / read_gbs}};
      }
      const auto peer = sdpa.find({s.name, batch, context});
      const double sdpa_us = peer != sdpa.end() ? peer->second : 0.0;
      if (sdpa_us > 0) row["sdpa_bf16_us"] = sdpa_us;
      row["fp8_over_bf16"] = us["fp8_tensor"] / us["bf16"];
      if (sdpa_us > 0) row["fp8_over_sdpa"] = us["fp8_tensor"] / sdpa_us;
      row["token_over_tensor"] = us["fp8_token"] / us["fp8_tensor"];
      rows.push_back(row);
      const double gbs = row["fp8_tensor"]["gbs"].get<double>();
      table << std::fixed << std::setprecision(1) << "| " << s.name << " | " << block_size << " | " << batch << " | "
            << context << " | " << us["bf16"] << " | " << us["fp8_tensor"] << " | " << us["fp8_head"] << " | "
            << us["fp8_token"] << " | ";
      if (sdpa_us > 0) table << sdpa_us; else table << "-";
      table << " | " << std::setprecision(0) << gbs << " | " << std::setprecision(1) << 100.0 * gbs / read_gbs
            << " | " << std::setprecision(2) << us["fp8_tensor"] / us["bf16"] << " | ";
      if (sdpa_us > 0) table << us["fp8_tensor"] / sdpa_us; else table << "-";
      table << " | " << us["fp8_token"] / us["fp8_tensor"] << " |\n";
      std::cerr << "done " << s.name << " block " << block_size << " batch " << batch << " context " << context << "\n";
    }
  }
  nlohmann::json skipped_json = nlohmann::json::array();
  for (const auto& [s, batch, context] : skipped) {
    skipped_json.push_back({{"shape", s.name}, {"batch", batch}, {"context", context}, {"reason", "BF16 and FP8 caches do not fit together"}});
  }
  j["points"] = rows;
  j["skipped"] = skipped_json;
  std::cout << "GPU: " << j["gpu"].get<std::string>() << ", read bandwidth " << std::fixed << std::setprecision(0)
            << read_gbs << " GB/s, SDPA peer: " << peer_status << "\n\n"
            << table.str();
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    FP8KV_REQUIRE(f.good(), "--json", "cannot write '", o.json_path, "'");
    f << j.dump(2) << "\n";
  }
}

#else

void run_bench(const Options&) {
  throw Unsupported("bench decode needs a build with CUDA (configure with -DFP8KV_CUDA=ON)");
}

#endif

}  // namespace

void register_bench_decode(CLI::App& bench) {
  auto options = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("decode", "Paged decode attention: BF16 vs FP8 storage vs read bandwidth and SDPA");
  cmd->add_option("--json", options->json_path, "Write all results as JSON to this file");
  cmd->add_option("--batches", options->batches, "Batch sizes")->delimiter(',')->capture_default_str();
  cmd->add_option("--contexts", options->contexts, "Context lengths (keys per sequence)")->delimiter(',')->capture_default_str();
  cmd->add_option("--block-sizes", options->block_sizes, "Paged-cache block sizes")->delimiter(',')->capture_default_str();
  cmd->add_option("--shapes", options->shapes, "Model shapes: llama-3.1-8b, qwen3-0.6b, llama-3.1-70b")->delimiter(',')->capture_default_str();
  cmd->add_option("--repeats", options->repeats, "Timed runs per measurement (median reported)")->capture_default_str();
  cmd->add_option("--peers-script", options->peers_script, "PyTorch SDPA peer script")->capture_default_str();
  cmd->add_flag("!--no-peers", options->peers, "Skip the PyTorch SDPA peer");
  cmd->add_option("--balanced", options->balanced,
                  "The plan's balanced partition: auto (where the plan expects a gain), on (wherever it applies), off")
      ->check(CLI::IsMember({"auto", "on", "off"}))
      ->capture_default_str();
  cmd->add_flag("--interleaved", options->interleaved,
                "Time the four variants in turns, run by run, instead of one after another (each after its own "
                "warm-up); the variant after a different kernel then pays for its code again (~3-4 us)");
  cmd->add_option("--max-splits", options->max_splits, "The plan's cap on splits per sequence (0 = its heuristic)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--settle-ms", options->settle_ms,
                  "Idle pause before timing each point (the GPU recovers from the previous point's load)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->callback([options] { run_bench(*options); });
}

}  // namespace fp8kv::cli

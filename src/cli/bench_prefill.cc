// `fp8kv bench prefill`: dense causal prefill attention on the GPU, fp8kv FP8 E4M3 (two-level
// accumulation on and off) and fp8kv BF16, against PyTorch SDPA BF16 on its cuDNN and flash
// backends measured in the same run (bench/prefill_peers.py, run as a subprocess). Prints a table;
// --json writes every number.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "cli/commands.h"
#include "cli/subprocess.h"
#include "fp8kv/error.h"

#if defined(FP8KV_WITH_CUDA)
#include <cuda_runtime.h>

#include "cuda/bench_support.h"
#include "cuda/cuda_check.h"
#include "fp8kv/cuda.h"
#include "fp8kv/cuda_prefill.h"
#endif

namespace fp8kv::cli {
namespace {

struct Options {
  std::string json_path;
  int warmup = 50;
  int repeats = 100;
  bool peers = true;
  bool quick = false;
  bool sequential = false;  // time fp8kv's variants one after another instead of interleaved
  std::vector<std::string> only;  // keep points whose key contains one of these
  std::string peers_script = "bench/prefill_peers.py";
  int key_tile = 0;    // PrefillOptions::key_tile of the FP8 runs
  int query_tile = 0;  // PrefillOptions::query_tile of the FP8 runs
};

#if defined(FP8KV_WITH_CUDA)

struct Shape {
  std::string name;
  int num_q_heads;
  int num_kv_heads;
  int head_dim;
};

// The seed table's models, plus a head-dim-64 shape (the Qwen3-0.6B head count at d = 64).
const Shape kShapes[] = {{"qwen3-0.6b", 16, 8, 128}, {"qwen3-8b", 32, 8, 128}, {"hd64", 16, 8, 64}};

struct Point {
  Shape shape;
  int batch;
  int seq;
  bool causal;
};


// The 18 seed configurations (2 shapes x batch 1, 4, 8 x seq 512, 1024, 4096, causal), then seq
// 16384 (causal and not: the 16k throughput targets), then head dim 64.
std::vector<Point> all_points(bool quick) {
  std::vector<Point> points;
  for (int s = 0; s < 2; ++s) {
    for (int batch : {1, 4, 8}) {
      for (int seq : {512, 1024, 4096}) {
        if (quick && seq != 4096) continue;
        points.push_back({kShapes[s], batch, seq, true});
      }
    }
  }
  for (int s = 0; s < 2; ++s) {
    points.push_back({kShapes[s], 1, 16384, true});
    points.push_back({kShapes[s], 1, 16384, false});
  }
  for (int batch : {1, 8}) points.push_back({kShapes[2], batch, 4096, true});
  points.push_back({kShapes[2], 1, 16384, true});
  return points;
}

// FLOPs of Q K^T and P V: 4 * batch * h_q * L^2 * d, halved for causal (the seed's convention).
double flops(const Point& p) {
  const double f = 4.0 * p.batch * p.shape.num_q_heads * static_cast<double>(p.seq) * p.seq * p.shape.head_dim;
  return p.causal ? f / 2.0 : f;
}

std::string point_key(const Point& p) {
  std::ostringstream s;
  s << p.shape.name << "/" << p.batch << "/" << p.seq << "/" << (p.causal ? "causal" : "full");
  return s.str();
}

std::vector<Point> bench_points(const Options& o) {
  std::vector<Point> points;
  for (const Point& p : all_points(o.quick)) {
    bool keep = o.only.empty();
    for (const std::string& text : o.only) keep = keep || point_key(p).find(text) != std::string::npos;
    if (keep) points.push_back(p);
  }
  return points;
}

struct Timings {
  double fp8_us = 0, fp8_one_level_us = 0, fp8_two_level_everywhere_us = 0, bf16_us = 0;
  cuda::PrefillTiles fp8_tiles;  // the tiles of the kernel the FP8 options pick
  double fp8_narrow_us = 0;      // where they are not 128 x 128: the default options with 128 x 128
  double fp8_wide256_us = 0;     // where they are 192 x 128: the default options with 128 x 256
};

// Median µs of fp8kv's kernels on one point: batch equal-length sequences, packed. The four
// variants (FP8 default, one-level, two-level everywhere, BF16), and where the FP8 options pick
// wider tiles than 128 x 128 the default options with 128 x 128 tiles (and, where they pick 192 x
// 128 at head dim 128, with 128 x 256), are timed interleaved, so that they see the same clocks and temperature.
Timings time_fp8kv(const Point& p, const Options& o) {
  const int64_t total = static_cast<int64_t>(p.batch) * p.seq;
  const Shape& s = p.shape;
  const size_t q_elems = static_cast<size_t>(total) * s.num_q_heads * s.head_dim;
  const size_t kv_elems = static_cast<size_t>(total) * s.num_kv_heads * s.head_dim;
  std::vector<int32_t> cu(static_cast<size_t>(p.batch) + 1);
  for (int b = 0; b <= p.batch; ++b) cu[static_cast<size_t>(b)] = b * p.seq;
  cuda_bench::DeviceBuffer d_cu(cu.size() * sizeof(int32_t)), descale(3 * sizeof(float)), out(q_elems * 2);
  FP8KV_CUDA_CHECK(cudaMemcpy(d_cu.get(), cu.data(), cu.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
  cuda_bench::fill_uniform(static_cast<float*>(descale.get()), 3, 0.01f, 0.02f, 7);

  // One set of Q/K/V per input dtype, random over the dtype's finite values.
  struct Inputs {
    cuda_bench::DeviceBuffer q, k, v;
    Inputs(DType dtype, size_t q_elems, size_t kv_elems)
        : q(q_elems * dtype_size(dtype)), k(kv_elems * dtype_size(dtype)), v(kv_elems * dtype_size(dtype)) {
      cuda_bench::fill_random(q.get(), dtype, q_elems, 1);
      cuda_bench::fill_random(k.get(), dtype, kv_elems, 2);
      cuda_bench::fill_random(v.get(), dtype, kv_elems, 3);
    }
  };
  const Inputs fp8(DType::kFp8E4M3, q_elems, kv_elems), bf16(DType::kBFloat16, q_elems, kv_elems);
  auto args_for = [&](DType dtype, const Inputs& in) {
    PrefillArgs a;
    a.cu_seqlens_q = TensorRef(d_cu.get(), DType::kInt32, {p.batch + 1}, Device::kCuda);
    a.cu_seqlens_k = a.cu_seqlens_q;
    a.out = TensorRef(out.get(), DType::kBFloat16, {total, s.num_q_heads, s.head_dim}, Device::kCuda);
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
    a.causal = p.causal;
    a.q = TensorRef(in.q.get(), dtype, {total, s.num_q_heads, s.head_dim}, Device::kCuda);
    a.k = TensorRef(in.k.get(), dtype, {total, s.num_kv_heads, s.head_dim}, Device::kCuda);
    a.v = TensorRef(in.v.get(), dtype, {total, s.num_kv_heads, s.head_dim}, Device::kCuda);
    if (dtype == DType::kFp8E4M3) {
      float* ds = static_cast<float*>(descale.get());
      a.q_descale = TensorRef(ds, DType::kFloat32, {1}, Device::kCuda);
      a.k_descale = TensorRef(ds + 1, DType::kFloat32, {1}, Device::kCuda);
      a.v_descale = TensorRef(ds + 2, DType::kFloat32, {1}, Device::kCuda);
    }
    return a;
  };
  const PrefillArgs a8 = args_for(DType::kFp8E4M3, fp8), a16 = args_for(DType::kBFloat16, bf16);
  // The default (two-level where a CTA reads more than 512 keys), one-level, and two-level in every
  // CTA (the strict form the 16k targets are also read against).
  cuda::PrefillOptions two_level, one_level, everywhere;
  for (cuda::PrefillOptions* options : {&two_level, &one_level, &everywhere}) {
    options->key_tile = o.key_tile;
    options->query_tile = o.query_tile;
  }
  one_level.two_level_accumulation = false;
  everywhere.one_level_max_keys = 0;
  cuda::PrefillOptions narrow = two_level, wide256 = two_level;
  narrow.key_tile = narrow.query_tile = 128;
  wide256.key_tile = 256;
  wide256.query_tile = 0;
  const cuda::PrefillTiles tiles = cuda::prefill_tiles(a8, two_level);
  const bool is_narrow = tiles.query == 128 && tiles.key == 128, rows192 = tiles.query == 192;
  std::vector<std::function<void()>> variants = {
      [&] { cuda::prefill(a8, two_level); }, [&] { cuda::prefill(a8, one_level); },
      [&] { cuda::prefill(a8, everywhere); }, [&] { cuda::prefill(a16); }};
  if (!is_narrow) variants.push_back([&] { cuda::prefill(a8, narrow); });
  const bool has_wide256 = rows192 && s.head_dim == 128;  // 128 x 256 exists at head dim 128 only
  if (has_wide256) variants.push_back([&] { cuda::prefill(a8, wide256); });
  std::vector<double> us;
  if (o.sequential) {
    for (const auto& fn : variants) us.push_back(cuda_bench::time_median_us(fn, o.warmup, o.repeats));
  } else {
    us = cuda_bench::time_interleaved_median_us(variants, o.warmup, o.repeats);
  }
  FP8KV_CUDA_CHECK(cudaDeviceSynchronize());
  Timings t;
  t.fp8_us = us[0];
  t.fp8_one_level_us = us[1];
  t.fp8_two_level_everywhere_us = us[2];
  t.bf16_us = us[3];
  t.fp8_tiles = tiles;
  if (!is_narrow) t.fp8_narrow_us = us[4];
  if (has_wide256) t.fp8_wide256_us = us[5];
  return t;
}

// Runs bench/prefill_peers.py over the points; returns key -> {"cudnn": µs, "flash": µs}.
std::map<std::string, std::map<std::string, double>> run_peers(const Options& o, const std::vector<Point>& points,
                                                               std::string* status) {
  std::map<std::string, std::map<std::string, double>> result;
  if (std::system("python3 -c 'import torch' > /dev/null 2>&1") != 0) {
    *status = "skipped: python3 with torch not importable";
    return result;
  }
  nlohmann::json request;
  request["warmup"] = o.warmup;
  request["repeats"] = o.repeats;
  request["points"] = nlohmann::json::array();
  for (const Point& p : points) {
    request["points"].push_back({{"key", point_key(p)}, {"num_q_heads", p.shape.num_q_heads},
                                 {"num_kv_heads", p.shape.num_kv_heads}, {"head_dim", p.shape.head_dim},
                                 {"batch", p.batch}, {"seq", p.seq}, {"causal", p.causal}});
  }
  const std::string request_path = "/tmp/fp8kv_prefill_peers_request.json";
  std::ofstream(request_path) << request.dump();
  const std::string command = "python3 " + o.peers_script + " --request " + request_path;
  std::string output;
  const int rc = run_and_capture(command, &output);
  if (rc == -1) {
    *status = "failed: could not start " + command;
    return result;
  }
  if (rc != 0 || output.find('{') == std::string::npos) {
    *status = "failed: " + command + " exited with " + std::to_string(rc);
    return result;
  }
  const nlohmann::json reply = nlohmann::json::parse(output.substr(output.find('{')));
  for (const auto& r : reply["results"]) {
    for (const char* backend : {"cudnn", "flash"}) {
      if (r.contains(backend) && !r[backend].is_null()) result[r["key"].get<std::string>()][backend] = r[backend].get<double>();
    }
  }
  *status = "ok: torch " + reply.value("torch", std::string("?"));
  return result;
}

std::string fmt(double x, int precision = 1) {
  if (!(x > 0)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(precision) << x;
  return s.str();
}

void run_bench(const Options& o) {
  if (!cuda::available()) throw Unsupported("bench prefill needs a CUDA device");
  const std::vector<Point> points = bench_points(o);
  nlohmann::json j;
  j["benchmark"] = "prefill";
  j["gpu"] = cuda_bench::device_name();
  {
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    j["date"] = date;
  }
  j["method"] = "CUDA events, median of " + std::to_string(o.repeats) + " single runs after " +
                std::to_string(o.warmup) + " warm-up runs, 256 MiB L2 flush before each; fp8kv's four variants " +
                (o.sequential ? "timed one after another" : "interleaved run by run") +
                "; fp8_narrow_us = the default FP8 options with 128 x 128 tiles (query rows x keys), where they "
                "pick wider ones; fp8_wide256_us = the same with 128 x 256 tiles, where they pick 192 x 128"
                "; equal-length packed sequences; TFLOP/s = 4*batch*h_q*L^2*d (/2 causal) / time; fp8 = E4M3 Q/K/V "
                "with per-tensor descales, bf16 out";
  std::string peer_status = "disabled (--no-peers)";
  std::map<std::string, std::map<std::string, double>> peers;
  if (o.peers) peers = run_peers(o, points, &peer_status);
  j["peers"] = peer_status;
  std::cerr << "peers: " << peer_status << "\n";

  std::cout << "| shape | bs | seq | d | causal | fp8 tiles | fp8 µs | fp8 TFLOP/s | fp8 128x128 µs | fp8 128x256 µs | "
               "fp8 1-level µs | fp8 2-level everywhere µs | bf16 µs | bf16 TFLOP/s | cudnn µs | flash µs | "
               "fp8/bf16 speedup | fp8/cudnn speedup |\n"
            << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  j["results"] = nlohmann::json::array();
  for (const Point& p : points) {
    const Timings t = time_fp8kv(p, o);
    const double f = flops(p);
    const auto& peer = peers[point_key(p)];
    const double cudnn = peer.count("cudnn") ? peer.at("cudnn") : 0.0;
    const double flash = peer.count("flash") ? peer.at("flash") : 0.0;
    nlohmann::json r = {{"shape", p.shape.name},      {"num_q_heads", p.shape.num_q_heads},
                        {"num_kv_heads", p.shape.num_kv_heads}, {"head_dim", p.shape.head_dim},
                        {"batch", p.batch},            {"seq", p.seq},
                        {"causal", p.causal},          {"fp8_us", t.fp8_us},
                        {"fp8_tflops", f / t.fp8_us * 1e-6}, {"fp8_one_level_us", t.fp8_one_level_us},
                        {"fp8_one_level_tflops", f / t.fp8_one_level_us * 1e-6},
                        {"fp8_two_level_everywhere_us", t.fp8_two_level_everywhere_us},
                        {"fp8_two_level_everywhere_tflops", f / t.fp8_two_level_everywhere_us * 1e-6},
                        {"bf16_us", t.bf16_us},
                        {"bf16_tflops", f / t.bf16_us * 1e-6}, {"fp8_over_bf16_speedup", t.bf16_us / t.fp8_us},
                        {"fp8_key_tile", t.fp8_tiles.key}, {"fp8_query_tile", t.fp8_tiles.query}};
    if (t.fp8_narrow_us > 0) r["fp8_narrow_us"] = t.fp8_narrow_us;
    if (t.fp8_wide256_us > 0) r["fp8_wide256_us"] = t.fp8_wide256_us;
    if (cudnn > 0) {
      r["cudnn_us"] = cudnn;
      r["cudnn_tflops"] = f / cudnn * 1e-6;
      r["fp8_over_cudnn_speedup"] = cudnn / t.fp8_us;
    }
    if (flash > 0) {
      r["flash_us"] = flash;
      r["flash_tflops"] = f / flash * 1e-6;
    }
    j["results"].push_back(r);
    std::cout << "| " << p.shape.name << " | " << p.batch << " | " << p.seq << " | " << p.shape.head_dim << " | "
              << (p.causal ? "yes" : "no") << " | " << t.fp8_tiles.query << "x" << t.fp8_tiles.key << " | "
              << fmt(t.fp8_us) << " | " << fmt(f / t.fp8_us * 1e-6) << " | " << fmt(t.fp8_narrow_us) << " | "
              << fmt(t.fp8_wide256_us) << " | " << fmt(t.fp8_one_level_us) << " | " << fmt(t.fp8_two_level_everywhere_us) << " | " << fmt(t.bf16_us) << " | " << fmt(f / t.bf16_us * 1e-6) << " | "
              << fmt(cudnn) << " | " << fmt(flash) << " | " << fmt(t.bf16_us / t.fp8_us, 2) << " | "
              << (cudnn > 0 ? fmt(cudnn / t.fp8_us, 2) : "-") << " |" << std::endl;
  }
  if (!o.json_path.empty()) std::ofstream(o.json_path) << j.dump(2) << "\n";
}

#else

void run_bench(const Options&) { throw Unsupported("bench prefill needs a build with CUDA (-DFP8KV_CUDA=ON)"); }

#endif

}  // namespace

void register_bench_prefill(CLI::App& bench) {
  auto options = std::make_shared<Options>();
  CLI::App* cmd = bench.add_subcommand("prefill", "Prefill attention: fp8kv FP8 and BF16 vs PyTorch SDPA (cuDNN, flash)");
  cmd->add_option("--json", options->json_path, "Write all results to this JSON file");
  cmd->add_option("--warmup", options->warmup, "Warm-up runs per measurement")->check(CLI::PositiveNumber);
  cmd->add_option("--repeats", options->repeats, "Timed runs per measurement (median reported)")->check(CLI::PositiveNumber);
  cmd->add_flag("!--no-peers", options->peers, "Skip the PyTorch SDPA peers");
  cmd->add_flag("--sequential", options->sequential,
                "Time fp8kv's four variants one after another (each after its own warm-up) instead of interleaved");
  cmd->add_flag("--quick", options->quick, "Only sequence 4096 of the seed table (plus 16k and head dim 64)");
  cmd->add_option("--only", options->only,
                  "Only the points whose key (shape/batch/seq/causal|full, e.g. qwen3-8b/1/512/) contains this text; "
                  "repeatable");
  cmd->add_option("--peers-script", options->peers_script, "Path of bench/prefill_peers.py");
  cmd->add_option("--key-tile", options->key_tile,
                  "PrefillOptions::key_tile of the FP8 runs: 0 = chosen per launch, 128, 256 (head dim 128 only)")
      ->check(CLI::IsMember({0, 128, 256}))
      ->capture_default_str();
  cmd->add_option("--query-tile", options->query_tile,
                  "PrefillOptions::query_tile of the FP8 runs: 0 = chosen per launch, 128, 192")
      ->check(CLI::IsMember({0, 128, 192}))
      ->capture_default_str();
  cmd->callback([options] { run_bench(*options); });
}

}  // namespace fp8kv::cli

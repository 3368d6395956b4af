// `fp8kv run`: generate text with a Hugging Face checkpoint over the FP8 (or 16-bit) paged cache.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "fp8kv/engine/engine.h"
#include "fp8kv/engine/tokenizer.h"
#include "fp8kv/error.h"

namespace fp8kv::cli {
namespace {

struct RunOptions {
  std::string model, prompt, input_ids, input_file, output_file;
  std::string device = "auto", kv_cache_dtype = "auto", kv_scales, kv_cache_memory;
  double gpu_memory_fraction = 0.9;
  int block_size = 16;
  int max_new_tokens = 64;
  float temperature = 0.0f, top_p = 1.0f;
  uint64_t seed = 0;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int max_num_batched_tokens = 512, max_num_seqs = 64;
};

std::vector<int32_t> parse_ids(const std::string& text, const char* argument) {
  std::vector<int32_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      const long v = std::stol(item, &used);
      FP8KV_REQUIRE(used == item.size() || item.find_first_not_of(" ", used) == std::string::npos, argument,
                    "'", item, "' is not an integer");
      ids.push_back(static_cast<int32_t>(v));
    } catch (const std::logic_error&) {
      throw InvalidArgument(argument, "'" + item + "' is not an integer (expected e.g. 1,2,3)");
    }
  }
  FP8KV_REQUIRE(!ids.empty(), argument, "holds no token ids");
  return ids;
}

std::string gib(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.2f %s", v, units[u]);
  return buf;
}

struct Input {
  std::vector<int32_t> ids;
  std::string prompt;
  engine::SamplingParams sampling;
};

void run(const RunOptions& o) {
  const int given = !o.prompt.empty() + !o.input_ids.empty() + !o.input_file.empty();
  FP8KV_REQUIRE(given == 1, "prompt", "give exactly one of --prompt, --input-ids, --input-file");
  FP8KV_REQUIRE(o.input_file.empty() == o.output_file.empty(), "output-file",
                "--input-file and --output-file go together");
  // Everything on the host is checked before the first byte of GPU memory is touched.
  const engine::ModelConfig config = engine::load_model_config(o.model);
  const engine::Checkpoint checkpoint = engine::Checkpoint::open(o.model);
  const engine::KvCacheFormat format = engine::resolve_kv_cache_format(config, &checkpoint, o.kv_cache_dtype,
                                                                       o.kv_scales);
  engine::SamplingParams base;
  base.temperature = o.temperature;
  base.top_p = o.top_p;
  base.seed = o.seed;
  base.max_new_tokens = o.max_new_tokens;
  base.stop_token_ids = o.stop_token_ids;
  base.ignore_eos = o.ignore_eos;
  base.validate();

  std::unique_ptr<engine::Tokenizer> tokenizer;
  auto tok = [&]() -> engine::Tokenizer& {
    if (!tokenizer) {
      tokenizer = std::make_unique<engine::Tokenizer>(engine::Tokenizer::from_file(o.model + "/tokenizer.json"));
    }
    return *tokenizer;
  };
  std::vector<Input> inputs;
  if (!o.prompt.empty()) {
    inputs.push_back({tok().encode(o.prompt), o.prompt, base});
  } else if (!o.input_ids.empty()) {
    inputs.push_back({parse_ids(o.input_ids, "input-ids"), "", base});
  } else {
    std::ifstream in(o.input_file);
    if (!in) throw FileError(o.input_file, "cannot be opened");
    std::string line;
    for (int64_t n = 1; std::getline(in, line); ++n) {
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw FileError(o.input_file, "line " + std::to_string(n) + ": " + e.what());
      }
      Input input{{}, "", base};
      if (j.contains("input_ids")) {
        input.ids = j["input_ids"].get<std::vector<int32_t>>();
      } else if (j.contains("prompt")) {
        input.prompt = j["prompt"].get<std::string>();
        input.ids = tok().encode(input.prompt);
      } else {
        throw FileError(o.input_file, "line " + std::to_string(n) + ": needs \"prompt\" or \"input_ids\"");
      }
      if (j.contains("max_new_tokens")) input.sampling.max_new_tokens = j["max_new_tokens"].get<int32_t>();
      if (j.contains("temperature")) input.sampling.temperature = j["temperature"].get<float>();
      if (j.contains("top_p")) input.sampling.top_p = j["top_p"].get<float>();
      if (j.contains("seed")) input.sampling.seed = j["seed"].get<uint64_t>();
      input.sampling.validate();
      inputs.push_back(std::move(input));
    }
    FP8KV_REQUIRE(!inputs.empty(), "input-file", o.input_file, " holds no requests");
  }

  auto backend = engine::make_backend(o.device);
  int64_t max_len = 0;
  for (const Input& in : inputs) {
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(in.ids.size()) + in.sampling.max_new_tokens);
  }
  engine::Model model(config, checkpoint, *backend, std::max<int64_t>(config.max_position, max_len));

  int64_t budget = 0;
  if (!o.kv_cache_memory.empty()) {
    budget = parse_memory_size(o.kv_cache_memory, "kv-cache-memory");
  } else {
    FP8KV_REQUIRE(backend->device() == Device::kCuda, "kv-cache-memory",
                  "is required on the CPU (e.g. --kv-cache-memory 1GiB); on CUDA it defaults to "
                  "--gpu-memory-fraction of the free memory");
    FP8KV_REQUIRE(o.gpu_memory_fraction > 0.0 && o.gpu_memory_fraction < 1.0, "gpu-memory-fraction",
                  "must be in (0, 1), got ", o.gpu_memory_fraction);
    int64_t free_bytes = 0, total_bytes = 0;
    backend->memory_info(free_bytes, total_bytes);
    budget = static_cast<int64_t>(static_cast<double>(free_bytes) * o.gpu_memory_fraction);
  }
  const ModelShape shape = engine::model_shape(config);
  const KvPlan plan = plan_kv_cache(shape, budget, format.dtype, format.granularity, o.block_size);
  const KvPlan bf16 = plan_kv_cache(shape, budget, DType::kBFloat16, ScaleGranularity::kPerTensor, o.block_size);
  std::fprintf(stderr,
               "fp8kv run: %s on %s, weights %s\n"
               "  KV cache: %s\n"
               "  memory plan (%s budget): %s %lld tokens (%lld B/token), %lld sequences of %lld tokens; "
               "bf16 would hold %lld tokens, %lld sequences (%.2fx)\n",
               o.model.c_str(), backend->name(), gib(model.weight_bytes()).c_str(), format.source.c_str(),
               gib(budget).c_str(), kv_cache_dtype_name(plan.dtype), static_cast<long long>(plan.max_tokens),
               static_cast<long long>(plan.bytes_per_token), static_cast<long long>(plan.max_sequences(max_len)),
               static_cast<long long>(max_len), static_cast<long long>(bf16.max_tokens),
               static_cast<long long>(bf16.max_sequences(max_len)),
               static_cast<double>(plan.max_tokens) / static_cast<double>(std::max<int64_t>(bf16.max_tokens, 1)));
  KvCache cache = engine::make_kv_cache(config, format, plan.num_blocks, o.block_size, backend->device());

  engine::EngineOptions options;
  options.max_num_batched_tokens = o.max_num_batched_tokens;
  options.max_num_seqs = o.max_num_seqs;
  engine::Engine eng(model, cache, options);
  for (const Input& in : inputs) eng.add_request(in.ids, in.sampling);

  const auto start = std::chrono::steady_clock::now();
  auto last_print = start;
  const auto outputs = eng.run_to_completion([&](const engine::EngineStats& s) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_print < std::chrono::milliseconds(500) && eng.has_unfinished()) return;
    last_print = now;
    const double secs = std::chrono::duration<double>(now - start).count();
    std::fprintf(stderr, "\r  requests %lld/%zu done, %lld running, %lld waiting | %.1f tok/s generated | "
                 "cache %lld/%lld blocks (%.0f%%) | preempted %lld   ",
                 static_cast<long long>(s.finished), inputs.size(), static_cast<long long>(s.running),
                 static_cast<long long>(s.waiting), static_cast<double>(s.generated_tokens) / std::max(secs, 1e-9),
                 static_cast<long long>(s.used_blocks), static_cast<long long>(s.total_blocks),
                 100.0 * static_cast<double>(s.used_blocks) / static_cast<double>(std::max<int64_t>(s.total_blocks, 1)),
                 static_cast<long long>(s.preemptions));
  });
  std::fprintf(stderr, "\n  %lld requests preempted and recomputed %lld times in all\n",
               static_cast<long long>(std::count_if(outputs.begin(), outputs.end(),
                                                    [](const engine::RequestOutput& r) { return r.num_preemptions > 0; })),
               static_cast<long long>(eng.stats().preemptions));

  const bool can_decode = inputs.size() == 1 ? !inputs[0].prompt.empty() : true;
  if (o.output_file.empty()) {
    if (can_decode) {
      std::cout << tok().decode(outputs[0].tokens) << "\n";
    } else {
      for (size_t i = 0; i < outputs[0].tokens.size(); ++i) std::cout << (i ? "," : "") << outputs[0].tokens[i];
      std::cout << "\n";
    }
    return;
  }
  std::ofstream out(o.output_file);
  if (!out) throw FileError(o.output_file, "cannot be written");
  for (const auto& r : outputs) {
    nlohmann::json j;
    j["id"] = r.id;
    if (!inputs[static_cast<size_t>(r.id)].prompt.empty()) {
      j["prompt"] = inputs[static_cast<size_t>(r.id)].prompt;
      j["text"] = tok().decode(r.tokens);
    }
    j["prompt_tokens"] = r.prompt.size();
    j["output_ids"] = r.tokens;
    j["finish_reason"] = engine::finish_reason_name(r.finish_reason);
    j["num_preemptions"] = r.num_preemptions;
    out << j.dump() << "\n";
  }
}

}  // namespace

void register_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Generate with a Llama/Qwen2/Qwen3 checkpoint over the paged KV cache");
  cmd->add_option("--model", o->model, "Hugging Face model directory (config.json, *.safetensors, tokenizer.json)")
      ->required();
  cmd->add_option("--prompt", o->prompt, "Prompt text (tokenized with the model's tokenizer.json)");
  cmd->add_option("--input-ids", o->input_ids, "Pre-tokenized prompt, comma-separated ids");
  cmd->add_option("--input-file", o->input_file, "JSONL of requests: {\"prompt\": ...} or {\"input_ids\": [...]}, "
                                                 "optional max_new_tokens/temperature/top_p/seed");
  cmd->add_option("--output-file", o->output_file, "JSONL of results, one line per request");
  cmd->add_option("--device", o->device, "auto | cpu | cuda")->capture_default_str();
  cmd->add_option("--kv-cache-dtype", o->kv_cache_dtype, "auto | fp8 | fp8_e4m3 | fp8_e5m2 | bf16 | fp16")
      ->capture_default_str();
  cmd->add_option("--kv-scales", o->kv_scales,
                  "per_tensor | per_head | per_token (default: the checkpoint's calibrated scales, else per_token)");
  cmd->add_option("--kv-cache-memory", o->kv_cache_memory, "KV cache budget, e.g. 8GiB (required on the CPU)");
  cmd->add_option("--gpu-memory-fraction", o->gpu_memory_fraction,
                  "Without --kv-cache-memory: this fraction of the free GPU memory after loading the weights")
      ->capture_default_str();
  cmd->add_option("--block-size", o->block_size, "Tokens per cache block")->capture_default_str();
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "Tokens to generate per request")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "Nucleus sampling mass")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--stop-token-ids", o->stop_token_ids, "Generation stops after one of these")->delimiter(',');
  cmd->add_flag("--ignore-eos", o->ignore_eos, "Do not stop at the model's EOS tokens");
  cmd->add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "Token budget of one step")
      ->capture_default_str();
  cmd->add_option("--max-num-seqs", o->max_num_seqs, "Running requests at most")->capture_default_str();
  cmd->callback([o] { run(*o); });
}

}  // namespace fp8kv::cli

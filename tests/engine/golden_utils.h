// Helpers shared by the golden tests of the CPU backend (tests/engine/test_golden.cc) and the CUDA
// backend (tests/cuda/test_engine_cuda.cc): the golden files of tests/data and teacher-forced
// logits of a model over a fresh cache.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fp8kv/engine/engine.h"

namespace fp8kv::engine {

inline const std::string kGoldenDataDir = FP8KV_TEST_DATA_DIR;

struct Golden {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> greedy;
  std::vector<double> margins;
  std::vector<float> logits;  // [tokens, vocab]

  // The prompt and every greedy token but the last: teacher-forced, position input_ids.size() - 1 + i
  // predicts greedy[i].
  std::vector<int32_t> teacher_forced_tokens() const {
    std::vector<int32_t> tokens = input_ids;
    tokens.insert(tokens.end(), greedy.begin(), greedy.end() - 1);
    return tokens;
  }
};

// Reads golden.json and the one float32 tensor of golden_logits.safetensors (format: 8-byte
// little-endian header length, JSON header, raw data).
inline Golden load_golden(const std::string& dir) {
  Golden g;
  std::ifstream jf(dir + "/golden.json");
  const nlohmann::json j = nlohmann::json::parse(jf);
  g.input_ids = j.at("input_ids").get<std::vector<int32_t>>();
  g.greedy = j.at("greedy_new_tokens").get<std::vector<int32_t>>();
  g.margins = j.at("greedy_top2_margins").get<std::vector<double>>();
  std::ifstream f(dir + "/" + j.at("logits_file").get<std::string>(), std::ios::binary);
  uint64_t header_len = 0;
  f.read(reinterpret_cast<char*>(&header_len), 8);
  std::string header(header_len, '\0');
  f.read(header.data(), static_cast<std::streamsize>(header_len));
  const nlohmann::json h = nlohmann::json::parse(header);
  const auto& t = h.at("logits");
  EXPECT_EQ(t.at("dtype").get<std::string>(), "F32");
  const auto offsets = t.at("data_offsets").get<std::vector<int64_t>>();
  g.logits.resize(static_cast<size_t>(offsets[1] - offsets[0]) / sizeof(float));
  f.seekg(static_cast<std::streamoff>(8 + header_len + static_cast<uint64_t>(offsets[0])));
  f.read(reinterpret_cast<char*>(g.logits.data()), static_cast<std::streamsize>(offsets[1] - offsets[0]));
  EXPECT_TRUE(f.good());
  return g;
}

// One golden checkpoint of tests/data by name: its golden outputs, config and weights.
struct GoldenCheckpoint {
  Golden golden;
  ModelConfig config;
  Checkpoint checkpoint;
};

inline GoldenCheckpoint open_golden_checkpoint(const std::string& name) {
  const std::string dir = kGoldenDataDir + "/" + name;
  return GoldenCheckpoint{load_golden(dir), load_model_config(dir), Checkpoint::open(dir)};
}

// All-position logits of `tokens`, fed in `chunk`-token steps over a fresh cache of `kv_dtype`
// with per-token scales (chunk 1 runs the decode path, a chunk of the whole sequence one prefill).
// The output starts as NaN, so a position the model never wrote fails every bound.
inline std::vector<float> teacher_forced_logits(Model& model, const std::vector<int32_t>& tokens, DType kv_dtype,
                                                int chunk) {
  const ModelConfig& config = model.config();
  KvCacheFormat format;
  format.dtype = kv_dtype;
  format.granularity = ScaleGranularity::kPerToken;
  KvCache cache = make_kv_cache(config, format, 16, 16, model.backend().device());
  const SequenceId seq = cache.allocator().create_sequence();
  const int32_t n = static_cast<int32_t>(tokens.size()), vocab = config.vocab_size;
  std::vector<float> out(static_cast<size_t>(n) * vocab, NAN);
  for (int32_t start = 0; start < n; start += chunk) {
    const int32_t len = std::min(chunk, n - start);
    const AppendResult a = cache.allocator().append_tokens(seq, len);
    StepBatch batch;
    batch.add_sequence(std::vector<int32_t>(tokens.begin() + start, tokens.begin() + start + len), start, a.slots,
                       cache.allocator().block_table(seq), false);
    for (int32_t i = 0; i < len; ++i) batch.logit_rows.push_back(i);
    batch.finalize();
    DeviceTensor logits(model.backend().device(), DType::kFloat32, {len, vocab});
    model.forward(batch, cache, logits.ref());
    model.backend().copy_to_host(out.data() + static_cast<int64_t>(start) * vocab, logits.ref());
  }
  return out;
}

// Free-running greedy decoding through the engine (prefill, then one decode step per token) of
// greedy.size() tokens after the golden prompt, EOS ignored, over a bf16 cache.
inline std::vector<int32_t> free_running_greedy(Model& model, const Golden& golden) {
  KvCacheFormat format;
  format.dtype = DType::kBFloat16;
  KvCache cache = make_kv_cache(model.config(), format, 16, 16, model.backend().device());
  Engine engine(model, cache);
  SamplingParams s;
  s.max_new_tokens = static_cast<int32_t>(golden.greedy.size());
  s.ignore_eos = true;
  engine.add_request(golden.input_ids, s);
  return engine.run_to_completion()[0].tokens;
}

// How many leading tokens of `a` and `b` agree.
inline size_t agreeing_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

inline double max_abs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

}  // namespace fp8kv::engine

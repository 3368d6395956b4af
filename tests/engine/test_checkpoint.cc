// Safetensors checkpoints: the files transformers wrote (single and sharded), a write/read round
// trip, and one test per corruption class, each checking that the error names the file and, where
// the corruption belongs to a tensor, the tensor.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "common/expect_error.h"
#include "common/temp_dir.h"
#include "common/test_utils.h"
#include "fp8kv/engine/checkpoint.h"
#include "fp8kv/error.h"
#include "fp8kv/fp8.h"
#include "fp8kv/half.h"

namespace fp8kv::engine {
namespace {

const std::string kData = FP8KV_TEST_DATA_DIR;

using testing::TempDir;

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A raw safetensors file from a header we spell ourselves, so that it can be wrong.
std::string raw_safetensors(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

using testing::expect_error;

TEST(Checkpoint, OpensTheSingleFileTransformersWrote) {
  const std::string dir = kData + "/tiny-qwen3";
  const Checkpoint ckpt = Checkpoint::open(dir);
  // Qwen3, 2 layers, tied embeddings: embed + final norm + 11 tensors per layer (q/k/v/o, q/k norm,
  // 2 layer norms, 3 MLP); no lm_head.
  EXPECT_EQ(ckpt.names().size(), 2u + 2u * 11u);
  EXPECT_FALSE(ckpt.has("lm_head.weight"));
  const CheckpointTensor& embed = ckpt.get("model.embed_tokens.weight", {1024, 128});
  EXPECT_EQ(embed.dtype, DType::kBFloat16);
  EXPECT_EQ(embed.nbytes, 1024u * 128u * 2u);
  EXPECT_EQ(embed.file, dir + "/model.safetensors");
  const CheckpointTensor& qn = ckpt.get("model.layers.1.self_attn.q_norm.weight", {64});
  const std::vector<float> q = ckpt.read_float("model.layers.1.self_attn.q_norm.weight");
  ASSERT_EQ(q.size(), 64u);
  for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(q[i], static_cast<const Bf16*>(qn.data)[i].to_float());
  // make_golden.py perturbs norm weights around 1: a reader that got the bytes wrong would not
  // land here.
  for (float x : q) EXPECT_TRUE(x > 0.0f && x < 2.0f) << x;
  EXPECT_EQ(ckpt.find("nope"), nullptr);
}

TEST(Checkpoint, OpensShardsThroughTheIndex) {
  const std::string dir = kData + "/tiny-llama";
  const Checkpoint ckpt = Checkpoint::open(dir);
  std::ifstream in(dir + "/model.safetensors.index.json");
  const auto index = nlohmann::json::parse(in);
  const auto& map = index.at("weight_map");
  EXPECT_EQ(ckpt.names().size(), map.size());
  for (auto it = map.begin(); it != map.end(); ++it) {
    const CheckpointTensor* t = ckpt.find(it.key());
    ASSERT_NE(t, nullptr) << it.key();
    EXPECT_EQ(t->file, dir + "/" + it->get<std::string>());
  }
  EXPECT_EQ(ckpt.get("lm_head.weight", {1024, 128}).dtype, DType::kBFloat16);
  EXPECT_EQ(ckpt.get("model.layers.0.self_attn.k_proj.weight", {128, 128}).nbytes, 128u * 128u * 2u);
}

TEST(Checkpoint, MissingAndMisshapenTensorsNameFileAndTensor) {
  const std::string dir = kData + "/tiny-qwen3";
  const Checkpoint ckpt = Checkpoint::open(dir);
  expect_error<FileError>([&] { ckpt.get("lm_head.weight", {1024, 128}); }, {dir + "/model.safetensors", "'lm_head.weight'", "missing"});
  expect_error<FileError>([&] { ckpt.get("model.norm.weight", {64}); },
                    {dir + "/model.safetensors", "'model.norm.weight'", "[128]", "[64]"});
  expect_error<FileError>([&] { ckpt.read_float("model.layers.9.mlp.up_proj.weight"); }, {"'model.layers.9.mlp.up_proj.weight'"});
  const std::string sharded = kData + "/tiny-llama";
  const Checkpoint shards = Checkpoint::open(sharded);
  expect_error<FileError>([&] { shards.get("model.layers.2.mlp.up_proj.weight", {256, 128}); },
                    {sharded + "/model.safetensors.index.json", "'model.layers.2.mlp.up_proj.weight'"});
}

TEST(Checkpoint, WriteThenReadRoundTripsEveryDtype) {
  TempDir tmp;
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::vector<float> values = testing::random_normal(77, seed, 3.0f);
  std::vector<Bf16> bf(values.size());
  std::vector<Fp16> fp(values.size());
  std::vector<Fp8E4M3> e4(values.size());
  std::vector<Fp8E5M2> e5(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    bf[i] = Bf16::from_float(values[i]);
    fp[i] = Fp16::from_float(values[i]);
    e4[i] = Fp8E4M3::from_float(values[i]);
    e5[i] = Fp8E5M2::from_float(values[i]);
  }
  // An odd-sized FP8 tensor first leaves the next tensors unaligned in the file: read_float must
  // not care.
  std::vector<CheckpointTensor> tensors = {
      {"e4", "", DType::kFp8E4M3, {7, 11}, e4.data(), e4.size()},
      {"f32", "", DType::kFloat32, {77}, values.data(), values.size() * 4},
      {"bf16", "", DType::kBFloat16, {11, 7}, bf.data(), bf.size() * 2},
      {"f16", "", DType::kFloat16, {1, 77}, fp.data(), fp.size() * 2},
      {"e5", "", DType::kFp8E5M2, {77}, e5.data(), e5.size()},
      {"empty", "", DType::kFloat32, {0, 5}, nullptr, 0},
      {"scalar", "", DType::kFloat32, {}, values.data(), 4},
  };
  const std::string path = tmp.file("model.safetensors");
  write_safetensors(path, tensors);

  const std::string bytes = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_len + 77 * (1 + 4 + 2 + 2 + 1) + 4);
  const std::string header = bytes.substr(8, header_len);
  EXPECT_TRUE(nlohmann::json::accept(header));  // trailing padding is spaces, valid JSON

  const Checkpoint ckpt = Checkpoint::open(tmp.path());
  EXPECT_EQ(ckpt.names().size(), tensors.size());
  const std::vector<float> f32 = ckpt.read_float("f32"), b = ckpt.read_float("bf16"), h = ckpt.read_float("f16"),
                           x4 = ckpt.read_float("e4"), x5 = ckpt.read_float("e5");
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(f32[i], values[i]);
    EXPECT_EQ(b[i], bf[i].to_float());
    EXPECT_EQ(h[i], fp[i].to_float());
    EXPECT_EQ(x4[i], e4[i].to_float());
    EXPECT_EQ(x5[i], e5[i].to_float());
  }
  EXPECT_TRUE(ckpt.read_float("empty").empty());
  EXPECT_EQ(ckpt.read_float("scalar"), std::vector<float>{values[0]});
  EXPECT_EQ(ckpt.get("bf16", {11, 7}).dtype, DType::kBFloat16);
  EXPECT_EQ(std::memcmp(ckpt.get("f16", {1, 77}).data, fp.data(), fp.size() * 2), 0);
}

TEST(Checkpoint, WriteRejectsInconsistentTensors) {
  TempDir tmp;
  float x[4] = {};
  EXPECT_THROW(write_safetensors(tmp.file("a.safetensors"), {{"t", "", DType::kFloat32, {3}, x, 16}}), InvalidArgument);
  EXPECT_THROW(write_safetensors(tmp.file("a.safetensors"),
                                 {{"t", "", DType::kFloat32, {1}, x, 4}, {"t", "", DType::kFloat32, {1}, x, 4}}),
               InvalidArgument);
  EXPECT_THROW(write_safetensors(tmp.file("a.safetensors"), {{"t", "", DType::kInt32, {1}, x, 4}}), InvalidArgument);
}

// ---- corruption classes ------------------------------------------------------------------------

// A valid two-tensor file to corrupt.
std::string valid_file(TempDir& tmp) {
  std::vector<float> a(6, 1.5f), b(10, -2.0f);
  const std::string path = tmp.file("model.safetensors");
  write_safetensors(path, {{"model.a", "", DType::kFloat32, {2, 3}, a.data(), 24},
                           {"model.b", "", DType::kFloat32, {10}, b.data(), 40}});
  return path;
}

TEST(CheckpointCorruption, TruncatedFile) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  const std::string bytes = read_bytes(path);
  write_bytes(path, bytes.substr(0, bytes.size() - 3));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.b'", "past the data section"});
  write_bytes(path, bytes.substr(0, 5));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "too short"});
  write_bytes(path, bytes.substr(0, 30));  // cut inside the header
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "header length"});
}

TEST(CheckpointCorruption, GarbageHeaderLength) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  std::string bytes = read_bytes(path);
  for (int i = 0; i < 8; ++i) bytes[i] = '\xff';
  write_bytes(path, bytes);
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "header length 18446744073709551615"});
}

TEST(CheckpointCorruption, BadJson) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  write_bytes(path, raw_safetensors("{\"model.a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]", "abcd"));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "not valid JSON"});
  write_bytes(path, raw_safetensors("[1, 2]  ", ""));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "not a JSON object"});
  write_bytes(path, raw_safetensors(R"({"model.a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                                    R"( "model.a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                                    "abcdefgh"));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.a'", "twice"});
  write_bytes(path, raw_safetensors(R"({"model.a": {"dtype": "F32", "shape": [1]}})", "abcd"));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.a'", "data_offsets"});
  write_bytes(path, raw_safetensors(R"({"model.a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})", "abcdefgh"));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.a'", "I64"});
  write_bytes(path, raw_safetensors(R"({"model.a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", "abcd"));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.a'", "shape"});
}

TEST(CheckpointCorruption, OffsetsPastEnd) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  write_bytes(path, raw_safetensors(R"({"model.w": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]}})",
                                    std::string(12, 'x')));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.w'", "[8, 16)", "12 bytes"});
  write_bytes(path, raw_safetensors(R"({"model.w": {"dtype": "BF16", "shape": [0], "data_offsets": [8, 4]}})",
                                    std::string(12, 'x')));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.w'", "end before"});
}

TEST(CheckpointCorruption, ShapeDisagreesWithSize) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  write_bytes(path, raw_safetensors(R"({"model.w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 8]}})",
                                    std::string(8, 'x')));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.w'", "8 bytes", "[2, 3]", "needs 12"});
}

TEST(CheckpointCorruption, OverlappingTensors) {
  TempDir tmp;
  const std::string path = tmp.file("model.safetensors");
  write_bytes(path, raw_safetensors(R"({"model.a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                    R"( "model.b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                    std::string(12, 'x')));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.b'", "overlaps", "'model.a'"});
}

TEST(CheckpointCorruption, HeaderDoesNotCoverTheData) {
  TempDir tmp;
  const std::string path = valid_file(tmp);
  write_bytes(path, read_bytes(path) + "extra");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "5 bytes after the last tensor", "'model.b'"});
  write_bytes(path, raw_safetensors(R"({"model.a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                                    R"( "model.b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                                    std::string(12, 'x')));
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {path, "'model.b'", "4 unused bytes", "'model.a'"});
}

TEST(CheckpointCorruption, ShardedIndexDisagreesWithShards) {
  TempDir tmp;
  std::vector<float> a(4, 1.0f);
  write_safetensors(tmp.file("s1.safetensors"), {{"model.a", "", DType::kFloat32, {4}, a.data(), 16}});
  write_safetensors(tmp.file("s2.safetensors"), {{"model.b", "", DType::kFloat32, {4}, a.data(), 16}});
  const std::string index = tmp.file("model.safetensors.index.json");

  write_bytes(index, R"({"weight_map": {"model.a": "s1.safetensors", "model.b": "s2.safetensors"}})");
  const Checkpoint ok = Checkpoint::open(tmp.path());
  EXPECT_EQ(ok.get("model.b", {4}).file, tmp.file("s2.safetensors"));
  EXPECT_EQ(ok.read_float("model.a"), a);

  write_bytes(index, R"({"weight_map": {"model.a": "s1.safetensors", "model.c": "s2.safetensors"}})");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {tmp.file("s2.safetensors"), "'model.c'", "not in the file"});
  write_bytes(index, R"({"weight_map": {"model.a": "s1.safetensors", "model.b": "s1.safetensors"}})");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {tmp.file("s1.safetensors"), "'model.b'", "not in the file"});
  write_bytes(index, R"({"weight_map": {"model.a": "s1.safetensors", "model.b": "s3.safetensors"}})");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {tmp.file("s3.safetensors"), "missing"});
  write_bytes(index, R"({"weight_map": {"model.a": "s1.safetensors", "model.b": "s2.safetensors", "model.x": "s1.safetensors"}})");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {tmp.file("s1.safetensors"), "'model.x'"});
  write_bytes(index, R"({"metadata": {}})");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {index, "weight_map"});
  write_bytes(index, R"({"weight_map": )");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {index, "not valid JSON"});

  // The same tensor stored in two shards.
  write_safetensors(tmp.file("s2.safetensors"), {{"model.a", "", DType::kFloat32, {4}, a.data(), 16}});
  write_bytes(index, R"({"weight_map": {"model.a": "s1.safetensors", "x": "s2.safetensors"}})");
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {tmp.file("s2.safetensors"), "'model.a'", "also in"});
}

TEST(CheckpointCorruption, NoCheckpointInDirectory) {
  TempDir tmp;
  expect_error<FileError>([&] { Checkpoint::open(tmp.path()); }, {tmp.path(), "model.safetensors"});
}

}  // namespace
}  // namespace fp8kv::engine

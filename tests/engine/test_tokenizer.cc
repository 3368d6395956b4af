// Byte-level BPE tokenizer: equality with the encodings Hugging Face `tokenizers` produced for the
// same tokenizer.json files (tests/data/tokenizers/golden_encodings.json), round trips on random
// text, NFC, and errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/expect_error.h"
#include "common/test_utils.h"
#include "engine/tokenizer_unicode.h"
#include "fp8kv/engine/tokenizer.h"
#include "fp8kv/error.h"

namespace fp8kv::engine {
namespace {

const std::string kTokenizers = std::string(FP8KV_TEST_DATA_DIR) + "/tokenizers";

nlohmann::json golden() {
  std::ifstream in(kTokenizers + "/golden_encodings.json");
  return nlohmann::json::parse(in);
}

class TokenizerGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerGolden, MatchesHuggingFaceTokenizers) {
  const std::string style = GetParam();
  const Tokenizer tok = Tokenizer::from_file(kTokenizers + "/" + style + ".json");
  const nlohmann::json g = golden().at(style);
  EXPECT_EQ(tok.vocab_size(), g.at("vocab_size").get<int64_t>());
  for (const auto& c : g.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    SCOPED_TRACE(style + ": " + nlohmann::json(text).dump());
    const std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(ids, c.at("ids").get<std::vector<int32_t>>());
    EXPECT_EQ(tok.decode(ids, true), c.at("decoded").get<std::string>());
    EXPECT_EQ(tok.decode(ids, false), c.at("decoded_with_special").get<std::string>());
  }
}

// 300 seeded random strings (scripts/make_golden.py: mixed scripts, every whitespace class,
// contractions, combining marks, controls, special tokens) against `tokenizers`' ids.
TEST_P(TokenizerGolden, RandomStringsMatchHuggingFaceTokenizers) {
  const std::string style = GetParam();
  const Tokenizer tok = Tokenizer::from_file(kTokenizers + "/" + style + ".json");
  std::ifstream in(kTokenizers + "/golden_random.json");
  const nlohmann::json g = nlohmann::json::parse(in);
  const auto& texts = g.at("texts");
  const auto& ids = g.at(style);
  ASSERT_EQ(texts.size(), ids.size());
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    if (tok.encode(text) != ids[i].get<std::vector<int32_t>>()) {
      ++mismatches;
      ADD_FAILURE() << style << " case " << i << ": " << nlohmann::json(text).dump();
    }
  }
  EXPECT_EQ(mismatches, 0);
}

INSTANTIATE_TEST_SUITE_P(Styles, TokenizerGolden, ::testing::Values("qwen2", "llama3", "gpt2"));

// Random text over code points from several scripts, whitespace, digits and punctuation, always
// valid UTF-8 and already in NFC (so that every style must give it back byte for byte).
std::string random_text(std::mt19937_64& rng, size_t length) {
  static const std::vector<std::pair<char32_t, char32_t>> pools = {
      {'a', 'z'}, {'A', 'Z'}, {'0', '9'}, {'!', '/'}, {' ', ' '}, {'\n', '\n'}, {'\t', '\t'}, {'\r', '\r'},
      {0xE0, 0xFF}, {0x410, 0x44F}, {0x3B1, 0x3C9}, {0x4E00, 0x4E80}, {0x3041, 0x3096}, {0x1F600, 0x1F64F},
      {0x2000, 0x200A}, {0x660, 0x669}, {'\'', '\''}};
  std::uniform_int_distribution<size_t> pick(0, pools.size() - 1);
  std::u32string out;
  while (out.size() < length) {
    const auto& [lo, hi] = pools[pick(rng)];
    std::uniform_int_distribution<uint32_t> cp(lo, hi);
    const size_t repeat = std::uniform_int_distribution<size_t>(1, 4)(rng);
    for (size_t k = 0; k < repeat; ++k) out.push_back(static_cast<char32_t>(cp(rng)));
  }
  out = unicode::nfc(out);
  return unicode::encode_utf8(out);
}

TEST_P(TokenizerGolden, RandomTextRoundTrips) {
  const Tokenizer tok = Tokenizer::from_file(kTokenizers + "/" + GetParam() + ".json");
  const uint64_t seed = testing::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int trial = 0; trial < 50; ++trial) {
    const std::string text = random_text(rng, 1 + trial * 3);
    const std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    ASSERT_EQ(tok.decode(ids), text) << nlohmann::json(text).dump();
  }
}

TEST(Tokenizer, SpecialTokensAndTemplate) {
  const Tokenizer llama = Tokenizer::from_file(kTokenizers + "/llama3.json");
  const int32_t bos = llama.token_id("<|begin_of_text|>");
  const int32_t eot = llama.token_id("<|eot_id|>");
  ASSERT_GE(bos, 0);
  ASSERT_GE(eot, 0);
  EXPECT_EQ(llama.token_id("definitely not a token"), -1);
  // The post-processor's template puts BOS first, as `tokenizers` does by default.
  EXPECT_EQ(llama.encode(""), std::vector<int32_t>{bos});
  const std::vector<int32_t> ids = llama.encode("hi<|eot_id|>");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), bos);
  EXPECT_EQ(ids.back(), eot);
  EXPECT_EQ(llama.decode(ids), "hi");
  EXPECT_EQ(llama.decode(ids, false), "<|begin_of_text|>hi<|eot_id|>");
  // Ids past the tokenizer's vocabulary (models pad theirs) decode to nothing, as in `tokenizers`.
  EXPECT_EQ(llama.decode({1000, 1023}), "");

  const Tokenizer qwen = Tokenizer::from_file(kTokenizers + "/qwen2.json");
  EXPECT_TRUE(qwen.encode("").empty());
  const int32_t im_end = qwen.token_id("<|im_end|>");
  EXPECT_EQ(qwen.encode("<|im_end|>"), std::vector<int32_t>{im_end});
}

TEST(Tokenizer, NfcNormalisation) {
  using unicode::nfc;
  // Examples from UAX #15: composition, singleton decomposition, reordering of marks, Hangul.
  EXPECT_EQ(nfc(U"e\u0301"), U"\u00e9");
  EXPECT_EQ(nfc(U"\u212b"), U"\u00c5");
  EXPECT_EQ(nfc(U"\u1e0b\u0323"), U"\u1e0d\u0307");
  EXPECT_EQ(nfc(U"q\u0307\u0323"), U"q\u0323\u0307");
  EXPECT_EQ(nfc(U"\u1100\u1161\u11a8"), U"\uac01");
  EXPECT_EQ(nfc(U"\uac00\u11a8"), U"\uac01");
  EXPECT_EQ(nfc(U"a\u0308\u0301"), U"\u00e4\u0301");
  EXPECT_EQ(nfc(U"plain ascii"), U"plain ascii");
  const Tokenizer qwen = Tokenizer::from_file(kTokenizers + "/qwen2.json");
  EXPECT_EQ(qwen.encode("Cafe\xcc\x81"), qwen.encode("Caf\xc3\xa9"));
}

TEST(Tokenizer, CharacterClasses) {
  EXPECT_TRUE(unicode::is_letter(U'a'));
  EXPECT_TRUE(unicode::is_letter(0x4E2D));  // CJK
  EXPECT_TRUE(unicode::is_letter(0x0416));  // Cyrillic
  EXPECT_FALSE(unicode::is_letter(U'1'));
  EXPECT_FALSE(unicode::is_letter(0x0301));  // combining mark: category Mn, not L
  EXPECT_TRUE(unicode::is_number(0x0663));   // Arabic-Indic digit
  EXPECT_TRUE(unicode::is_number(0x00B2));   // superscript two (No)
  EXPECT_TRUE(unicode::is_number(0x2167));   // Roman numeral (Nl)
  EXPECT_TRUE(unicode::is_whitespace(0x3000));
  EXPECT_TRUE(unicode::is_whitespace(U'\v'));
  EXPECT_FALSE(unicode::is_whitespace(0x200B));  // zero-width space is Cf, not \s
  EXPECT_EQ(unicode::utf8_lossy("a\xff" "b\xe2\x82"), "a\xef\xbf\xbd" "b\xef\xbf\xbd");
}

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    char tmpl[] = "/tmp/fp8kv_tok_XXXXXX";
    const int fd = ::mkstemp(tmpl);
    ::close(fd);
    path_ = tmpl;
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

nlohmann::json qwen_spec() {
  std::ifstream in(kTokenizers + "/qwen2.json");
  return nlohmann::json::parse(in);
}

using testing::expect_error;

TEST(Tokenizer, Errors) {
  expect_error<FileError>([] { Tokenizer::from_file("/nonexistent/tokenizer.json"); }, {"/nonexistent/tokenizer.json"});
  {
    TempFile f("{\"model\": ");
    expect_error<FileError>([&] { Tokenizer::from_file(f.path()); }, {f.path(), "not valid JSON"});
  }
  {
    auto spec = qwen_spec();
    spec["model"]["type"] = "WordPiece";
    TempFile f(spec.dump());
    expect_error<Unsupported>([&] { Tokenizer::from_file(f.path()); }, {"WordPiece", f.path()});
  }
  {
    auto spec = qwen_spec();
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\w+|\\s+";
    TempFile f(spec.dump());
    expect_error<Unsupported>([&] { Tokenizer::from_file(f.path()); }, {"\\w+|\\s+", f.path()});
  }
  {
    auto spec = qwen_spec();
    spec["decoder"] = {{"type", "WordPiece"}};
    TempFile f(spec.dump());
    expect_error<Unsupported>([&] { Tokenizer::from_file(f.path()); }, {"decoder", f.path()});
  }
  {
    auto spec = qwen_spec();
    spec["model"]["merges"].push_back("zz qq");
    TempFile f(spec.dump());
    expect_error<FileError>([&] { Tokenizer::from_file(f.path()); }, {f.path(), "model.merges", "zz"});
  }
  const Tokenizer tok = Tokenizer::from_file(kTokenizers + "/gpt2.json");
  EXPECT_THROW(tok.encode("bad \xc3 utf-8"), InvalidArgument);
}

}  // namespace
}  // namespace fp8kv::engine

// Byte-level BPE tokenizer read from a Hugging Face `tokenizer.json` (GPT-2 / Qwen2 / Llama-3
// family): the pre-tokenizer split regex, byte-to-unicode mapping, ranked merges, and added /
// special tokens (matched verbatim before BPE).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace fp8kv::engine {

class Tokenizer {
 public:
  // Throws FileError naming the file for a missing or malformed tokenizer.json, Unsupported for a
  // model type other than BPE with a byte-level decoder.
  static Tokenizer from_file(const std::string& tokenizer_json_path);

  // Like `tokenizers`' encode(text) with its default add_special_tokens=True: the post-processor's
  // template applies (Llama-3 puts <|begin_of_text|> first; Qwen2 adds nothing), and added tokens
  // written in the text become their ids. InvalidArgument for text that is not valid UTF-8.
  std::vector<int32_t> encode(const std::string& text) const;
  // Ids without a token (a model's vocabulary is often padded past the tokenizer's) decode to
  // nothing, and bytes that do not form UTF-8 become U+FFFD, both as in `tokenizers`.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const;
  int32_t token_id(const std::string& token) const;  // -1 if unknown
  int64_t vocab_size() const;

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

 private:
  Tokenizer();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fp8kv::engine

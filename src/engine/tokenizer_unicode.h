// Unicode pieces of the byte-level BPE tokenizer: UTF-8 <-> code points, the character classes the
// GPT-2 / Qwen2 / Llama-3 split patterns use (\p{L}, \p{N}, \s), and NFC normalisation (Qwen2's
// normalizer). Tables come from tokenizer_unicode_data.h (generated, Unicode 16.0: the version of
// the Oniguruma regex engine inside Hugging Face `tokenizers` 0.23, checked by probing it with
// letters added in Unicode 16 and 17).
#pragma once

#include <cstdint>
#include <string>

namespace fp8kv::engine::unicode {

bool is_letter(char32_t c);      // General_Category L*
bool is_number(char32_t c);      // General_Category N*
bool is_whitespace(char32_t c);  // Oniguruma's \s: U+0009-000D, U+0085 and categories Zs, Zl, Zp

// Strict UTF-8 decoding; throws InvalidArgument(argument, ...) naming the byte offset of the first
// malformed sequence.
std::u32string decode_utf8(const std::string& text, const char* argument);
std::string encode_utf8(const std::u32string& text);
void append_utf8(std::string& out, char32_t c);

// Lenient decoding for detokenised bytes: each maximal ill-formed subsequence becomes one U+FFFD,
// as Rust's String::from_utf8_lossy (what `tokenizers` decodes with) does.
std::string utf8_lossy(const std::string& bytes);

// Canonical composition (Unicode Normalization Form C).
std::u32string nfc(const std::u32string& text);

}  // namespace fp8kv::engine::unicode

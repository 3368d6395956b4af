#include "fp8kv/engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <queue>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "engine/tokenizer_unicode.h"
#include "fp8kv/error.h"

namespace fp8kv::engine {
namespace {

using nlohmann::json;

// The split regexes of the three families, exactly as they appear in tokenizer.json (after JSON
// unescaping). GPT-2's is also what a ByteLevel pre-tokenizer with use_regex=true applies.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

enum class SplitPattern { kGpt2, kQwen2, kLlama3 };

bool is_crlf(char32_t c) { return c == '\r' || c == '\n'; }
// [^\s\p{L}\p{N}]
bool is_other(char32_t c) { return !unicode::is_whitespace(c) && !unicode::is_letter(c) && !unicode::is_number(c); }

// The end of the whitespace run starting at i, and the end the last two alternatives of every
// pattern give it: \s+(?!\S) backs off one character when non-space follows, \s+ takes a lone one.
size_t whitespace_match(const std::u32string& s, size_t i) {
  size_t e = i;
  while (e < s.size() && unicode::is_whitespace(s[e])) ++e;
  return (e == s.size() || e - i == 1) ? e : e - 1;
}

// 's|'t|'re|'ve|'m|'ll|'d at s[i] == '\''; `fold` makes it (?i:...). Returns the end or 0.
size_t contraction_match(const std::u32string& s, size_t i, bool fold) {
  const auto at = [&](size_t k) -> char32_t {
    if (k >= s.size()) return 0;
    const char32_t c = s[k];
    if (!fold) return c;
    if (c >= 'A' && c <= 'Z') return c - 'A' + 'a';
    return c == 0x17F ? U's' : c;  // LATIN SMALL LETTER LONG S case-folds to 's' in Unicode
  };
  const char32_t a = at(i + 1), b = at(i + 2);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// The end of the regex match that starts at s[i], for the leftmost-first alternation the
// pattern's regex engine (Oniguruma) performs. Every pattern matches every character somewhere
// (letters, numbers, whitespace and "other" each have an alternative), so the result is > i.
size_t match_at(SplitPattern pattern, const std::u32string& s, size_t i) {
  const size_t n = s.size();
  const char32_t c = s[i];
  const auto run = [&](size_t k, bool (*pred)(char32_t), size_t max_len) {
    const size_t start = k;
    while (k < n && k - start < max_len && pred(s[k])) ++k;
    return k;
  };
  constexpr size_t kUnbounded = std::numeric_limits<size_t>::max();

  if (pattern == SplitPattern::kGpt2) {
    if (c == '\'') {
      if (const size_t e = contraction_match(s, i, false)) return e;
    }
    const size_t k = c == ' ' ? i + 1 : i;  // " ?" before letters, numbers and others
    if (k < n && unicode::is_letter(s[k])) return run(k, unicode::is_letter, kUnbounded);
    if (k < n && unicode::is_number(s[k])) return run(k, unicode::is_number, kUnbounded);
    if (k < n && is_other(s[k])) return run(k, is_other, kUnbounded);
    return whitespace_match(s, i);
  }

  // Qwen2 and Llama-3 differ only in how many digits one piece takes.
  if (c == '\'') {
    if (const size_t e = contraction_match(s, i, true)) return e;
  }
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (!is_crlf(c) && !unicode::is_letter(c) && !unicode::is_number(c) && i + 1 < n && unicode::is_letter(s[i + 1])) {
    return run(i + 1, unicode::is_letter, kUnbounded);
  }
  if (unicode::is_letter(c)) return run(i, unicode::is_letter, kUnbounded);
  // \p{N} or \p{N}{1,3}
  if (unicode::is_number(c)) return run(i, unicode::is_number, pattern == SplitPattern::kLlama3 ? 3 : 1);
  // " ?[^\s\p{L}\p{N}]+[\r\n]*"
  const size_t k = c == ' ' ? i + 1 : i;
  if (k < n && is_other(s[k])) return run(run(k, is_other, kUnbounded), is_crlf, kUnbounded);
  // \s*[\r\n]+ : the whitespace run up to and including its last CR/LF.
  size_t e = i;
  size_t last_crlf = n;
  while (e < n && unicode::is_whitespace(s[e])) {
    if (is_crlf(s[e])) last_crlf = e;
    ++e;
  }
  if (last_crlf != n) return last_crlf + 1;
  return whitespace_match(s, i);
}

// GPT-2's byte <-> printable-unicode table: printable Latin-1 bytes map to themselves, the other
// 68 bytes to U+0100 upwards in byte order, so every byte has a visible, non-space character.
struct ByteLevelTable {
  std::array<std::string, 256> byte_to_utf8;
  std::unordered_map<char32_t, uint8_t> char_to_byte;
  ByteLevelTable() {
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t c = printable ? static_cast<char32_t>(b) : next++;
      unicode::append_utf8(byte_to_utf8[static_cast<size_t>(b)], c);
      char_to_byte[c] = static_cast<uint8_t>(b);
    }
  }
};

const ByteLevelTable& byte_level() {
  static const ByteLevelTable table;
  return table;
}

uint64_t pair_key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// A part of the input: either text still to be tokenised or an added token already matched.
struct Segment {
  std::string text;
  int32_t added_id = -1;
};

}  // namespace

struct Tokenizer::Impl {
  std::string path;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;  // "" for ids with no token
  std::vector<bool> is_special;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, merged)
  std::vector<AddedToken> added;
  SplitPattern pattern = SplitPattern::kGpt2;
  bool nfc = false;
  bool add_prefix_space = false;
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  int32_t unk_id = -1;
  std::vector<int32_t> prefix_ids, suffix_ids;  // the post-processor's template around the text

  [[noreturn]] void fail(const std::string& what) const { throw FileError(path, what); }

  void add_id(int32_t id, const std::string& token) {
    if (id < 0) fail("token '" + token + "' has negative id " + std::to_string(id));
    if (static_cast<size_t>(id) >= id_to_token.size()) {
      id_to_token.resize(static_cast<size_t>(id) + 1);
      is_special.resize(static_cast<size_t>(id) + 1, false);
    }
    id_to_token[static_cast<size_t>(id)] = token;
  }

  void parse_model(const json& m);
  void parse_normalizer(const json& n);
  void parse_pre_tokenizer(const json& p);
  void parse_decoder(const json& d);
  void parse_post_processor(const json& p);
  void parse_added_tokens(const json& j);

  std::vector<Segment> split_added(const std::vector<Segment>& in, bool normalized_pass) const;
  void encode_word(const std::string& bytes, std::vector<int32_t>& out) const;
  void encode_text(const std::string& text, std::vector<int32_t>& out) const;
};

namespace {

std::string json_string(const json& j, const char* key, const std::string& fallback = "") {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->is_string() ? it->get<std::string>() : fallback;
}

bool json_bool(const json& j, const char* key, bool fallback = false) {
  const auto it = j.find(key);
  return it != j.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

}  // namespace

void Tokenizer::Impl::parse_model(const json& m) {
  if (!m.is_object()) fail("field 'model' is missing or not an object");
  const std::string type = json_string(m, "type");
  if (type != "BPE") throw Unsupported("tokenizer model type '" + type + "' in " + path + " (only BPE)");
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0) {
    throw Unsupported("BPE dropout in " + path);
  }
  if (!json_string(m, "continuing_subword_prefix").empty() || !json_string(m, "end_of_word_suffix").empty()) {
    throw Unsupported("BPE continuing_subword_prefix / end_of_word_suffix in " + path + " (not byte-level BPE)");
  }
  ignore_merges = json_bool(m, "ignore_merges");
  byte_fallback = json_bool(m, "byte_fallback");
  fuse_unk = json_bool(m, "fuse_unk");

  const auto vocab_it = m.find("vocab");
  if (vocab_it == m.end() || !vocab_it->is_object()) fail("field 'model.vocab' is missing or not an object");
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it->is_number_integer()) fail("field 'model.vocab': token '" + it.key() + "' has a non-integer id");
    const int64_t id = it->get<int64_t>();
    if (id < 0 || id > std::numeric_limits<int32_t>::max()) fail("field 'model.vocab': token '" + it.key() + "' id out of range");
    vocab[it.key()] = static_cast<int32_t>(id);
    add_id(static_cast<int32_t>(id), it.key());
  }
  const std::string unk = json_string(m, "unk_token");
  if (!unk.empty()) {
    const auto u = vocab.find(unk);
    if (u == vocab.end()) fail("field 'model.unk_token': '" + unk + "' is not in the vocab");
    unk_id = u->second;
  }

  const auto merges_it = m.find("merges");
  if (merges_it == m.end() || !merges_it->is_array()) fail("field 'model.merges' is missing or not a list");
  int32_t rank = 0;
  for (const auto& entry : *merges_it) {
    // Two spellings: "left right" (older files, Qwen2) and ["left", "right"] (tokenizers >= 0.20).
    std::string left, right;
    if (entry.is_string()) {
      const std::string s = entry.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        fail("field 'model.merges': entry " + std::to_string(rank) + " '" + s + "' is not two tokens separated by a space");
      }
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
      left = entry[0].get<std::string>();
      right = entry[1].get<std::string>();
    } else {
      fail("field 'model.merges': entry " + std::to_string(rank) + " is neither \"a b\" nor [a, b]");
    }
    const auto l = vocab.find(left), r = vocab.find(right), merged = vocab.find(left + right);
    if (l == vocab.end() || r == vocab.end() || merged == vocab.end()) {
      fail("field 'model.merges': entry " + std::to_string(rank) + " ('" + left + "', '" + right +
           "') uses a token that is not in the vocab");
    }
    // A repeated pair keeps its first (best) rank, as `tokenizers` does.
    merges.emplace(pair_key(l->second, r->second), std::make_pair(rank, merged->second));
    ++rank;
  }
}

void Tokenizer::Impl::parse_normalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = json_string(n, "type");
  if (type == "NFC") {
    nfc = true;
  } else if (type == "Sequence" && n.contains("normalizers") && n["normalizers"].is_array()) {
    for (const auto& inner : n["normalizers"]) parse_normalizer(inner);
  } else {
    throw Unsupported("normalizer " + n.dump() + " in " + path + " (only NFC or none)");
  }
}

void Tokenizer::Impl::parse_pre_tokenizer(const json& p) {
  const auto unsupported = [&] {
    throw Unsupported("pre_tokenizer " + p.dump().substr(0, 300) + " in " + path +
                      " (supported: ByteLevel with its GPT-2 regex, or a Split with the GPT-2, Qwen2 or Llama-3 "
                      "pattern followed by ByteLevel without regex)");
  };
  if (!p.is_object()) unsupported();
  std::vector<json> steps;
  if (json_string(p, "type") == "Sequence" && p.contains("pretokenizers") && p["pretokenizers"].is_array()) {
    for (const auto& s : p["pretokenizers"]) steps.push_back(s);
  } else {
    steps.push_back(p);
  }
  if (steps.size() == 1) {
    // ByteLevel alone: its built-in GPT-2 regex does the splitting.
    const json& b = steps[0];
    if (json_string(b, "type") != "ByteLevel" || !json_bool(b, "use_regex", true)) unsupported();
    pattern = SplitPattern::kGpt2;
    add_prefix_space = json_bool(b, "add_prefix_space");
    return;
  }
  if (steps.size() != 2) unsupported();
  const json& split = steps[0];
  const json& b = steps[1];
  if (json_string(split, "type") != "Split" || json_string(b, "type") != "ByteLevel" || json_bool(b, "use_regex", true) ||
      json_bool(split, "invert") || json_string(split, "behavior") != "Isolated" || !split.contains("pattern") ||
      !split["pattern"].is_object()) {
    unsupported();
  }
  const std::string regex = json_string(split["pattern"], "Regex");
  if (regex == kGpt2Pattern) {
    pattern = SplitPattern::kGpt2;
  } else if (regex == kQwen2Pattern) {
    pattern = SplitPattern::kQwen2;
  } else if (regex == kLlama3Pattern) {
    pattern = SplitPattern::kLlama3;
  } else {
    throw Unsupported("pre-tokenizer split pattern '" + regex + "' in " + path +
                      " (only the GPT-2, Qwen2 and Llama-3 patterns are implemented)");
  }
  add_prefix_space = json_bool(b, "add_prefix_space");
}

void Tokenizer::Impl::parse_decoder(const json& d) {
  const std::string type = d.is_object() ? json_string(d, "type") : "";
  if (type == "ByteLevel") return;
  if (type == "Sequence" && d.contains("decoders") && d["decoders"].is_array() && d["decoders"].size() == 1) {
    parse_decoder(d["decoders"][0]);
    return;
  }
  throw Unsupported("decoder " + d.dump().substr(0, 200) + " in " + path + " (only ByteLevel)");
}

void Tokenizer::Impl::parse_post_processor(const json& p) {
  if (p.is_null()) return;
  const std::string type = json_string(p, "type");
  if (type == "ByteLevel") return;  // offsets only; ids unchanged
  if (type == "Sequence" && p.contains("processors") && p["processors"].is_array()) {
    for (const auto& inner : p["processors"]) parse_post_processor(inner);
    return;
  }
  if (type != "TemplateProcessing") throw Unsupported("post_processor type '" + type + "' in " + path);
  const auto single = p.find("single");
  if (single == p.end() || !single->is_array()) fail("field 'post_processor.single' is missing");
  const json& specials = p.contains("special_tokens") ? p["special_tokens"] : json::object();
  bool seen_text = false;
  for (const auto& piece : *single) {
    if (piece.contains("Sequence")) {
      if (seen_text) fail("field 'post_processor.single' has more than one sequence");
      seen_text = true;
    } else if (piece.contains("SpecialToken")) {
      const std::string name = json_string(piece["SpecialToken"], "id");
      if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array()) {
        fail("field 'post_processor.special_tokens' lacks '" + name + "'");
      }
      for (const auto& id : specials[name]["ids"]) (seen_text ? suffix_ids : prefix_ids).push_back(id.get<int32_t>());
    } else {
      fail("field 'post_processor.single' has an entry that is neither a SpecialToken nor a Sequence");
    }
  }
}

// Splits the text segments of `in` around added tokens, leftmost-longest. Tokens with
// normalized == false match the raw text, the others the normalised text (two passes), as in
// `tokenizers`' AddedVocabulary.
std::vector<Segment> Tokenizer::Impl::split_added(const std::vector<Segment>& in, bool normalized_pass) const {
  // Candidates bucketed by first byte: a text position costs one lookup, not one compare per
  // added token (Llama-3 has 256).
  std::array<std::vector<const AddedToken*>, 256> by_first_byte;
  bool any = false;
  for (const auto& a : added) {
    if (a.normalized == normalized_pass && !a.content.empty()) {
      by_first_byte[static_cast<unsigned char>(a.content[0])].push_back(&a);
      any = true;
    }
  }
  if (!any) return in;
  const auto is_word_char = [](char32_t c) { return unicode::is_letter(c) || unicode::is_number(c) || c == '_'; };
  const auto is_space_byte = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  // The code point that ends just before byte `pos` / starts at `pos` (input is valid UTF-8).
  const auto char_before = [](const std::string& t, size_t pos) {
    size_t k = pos;
    do --k;
    while (k > 0 && (static_cast<unsigned char>(t[k]) & 0xC0) == 0x80);
    return unicode::decode_utf8(t.substr(k, pos - k), "text").front();
  };
  const auto char_at = [](const std::string& t, size_t pos) {
    size_t k = pos + 1;
    while (k < t.size() && (static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) ++k;
    return unicode::decode_utf8(t.substr(pos, k - pos), "text").front();
  };

  std::vector<Segment> out;
  for (const Segment& seg : in) {
    if (seg.added_id >= 0) {
      out.push_back(seg);
      continue;
    }
    const std::string& t = seg.text;
    size_t text_start = 0;  // start of the pending, not yet emitted text
    size_t i = 0;
    while (i < t.size()) {
      const AddedToken* best = nullptr;
      for (const AddedToken* a : by_first_byte[static_cast<unsigned char>(t[i])]) {
        if (t.compare(i, a->content.size(), a->content) != 0) continue;
        if (best && a->content.size() <= best->content.size()) continue;
        if (a->single_word) {
          const size_t end = i + a->content.size();
          if ((i > 0 && is_word_char(char_before(t, i))) || (end < t.size() && is_word_char(char_at(t, end)))) continue;
        }
        best = a;
      }
      if (!best) {
        ++i;
        continue;
      }
      size_t start = i, end = i + best->content.size();
      if (best->lstrip) {
        while (start > text_start && is_space_byte(t[start - 1])) --start;
      }
      if (best->rstrip) {
        while (end < t.size() && is_space_byte(t[end])) ++end;
      }
      if (start > text_start) out.push_back({t.substr(text_start, start - text_start), -1});
      out.push_back({"", best->id});
      text_start = i = end;
    }
    if (text_start < t.size()) out.push_back({t.substr(text_start), -1});
  }
  return out;
}

// Byte-pair encoding of one pre-tokenised word (raw bytes): start from one symbol per byte (its
// byte-level character) and apply the lowest-ranked merge, leftmost first, until none applies.
void Tokenizer::Impl::encode_word(const std::string& bytes, std::vector<int32_t>& out) const {
  const ByteLevelTable& table = byte_level();
  std::string mapped;
  for (unsigned char b : bytes) mapped += table.byte_to_utf8[b];
  if (ignore_merges) {
    const auto whole = vocab.find(mapped);
    if (whole != vocab.end()) {
      out.push_back(whole->second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(bytes.size());
  for (unsigned char b : bytes) {
    const auto it = vocab.find(table.byte_to_utf8[b]);
    if (it != vocab.end()) {
      symbols.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      const auto fb = vocab.find(name);
      if (fb != vocab.end()) {
        symbols.push_back(fb->second);
        continue;
      }
    }
    if (unk_id < 0) {
      throw InvalidArgument("text", "byte " + std::to_string(b) + " has no token in " + path + " and there is no unk_token");
    }
    // fuse_unk merges consecutive unknowns into one.
    if (!(fuse_unk && !symbols.empty() && symbols.back() == unk_id)) symbols.push_back(unk_id);
  }
  // Lowest rank first, leftmost among equals (as `tokenizers` does), kept in a heap over a linked
  // list of symbols so that a long piece (a run of 10^4 spaces) costs O(n log n), not O(n^2).
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t left, right, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  if (symbols.empty()) return;
  const int32_t n = static_cast<int32_t>(symbols.size());
  std::vector<int32_t> next(static_cast<size_t>(n)), prev(static_cast<size_t>(n));
  for (int32_t k = 0; k < n; ++k) {
    next[static_cast<size_t>(k)] = k + 1 < n ? k + 1 : -1;
    prev[static_cast<size_t>(k)] = k - 1;
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  const auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t right = next[static_cast<size_t>(pos)];
    if (right < 0) return;
    const int32_t a = symbols[static_cast<size_t>(pos)], b = symbols[static_cast<size_t>(right)];
    const auto it = merges.find(pair_key(a, b));
    if (it != merges.end()) heap.push({it->second.first, pos, a, b, it->second.second});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push(k);
  std::vector<bool> alive(static_cast<size_t>(n), true);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const auto pos = static_cast<size_t>(c.pos);
    const int32_t right = next[pos];
    // Stale: the left symbol was merged away or changed, or its right neighbour did.
    if (!alive[pos] || right < 0 || symbols[pos] != c.left || symbols[static_cast<size_t>(right)] != c.right) continue;
    symbols[pos] = c.merged;
    alive[static_cast<size_t>(right)] = false;
    next[pos] = next[static_cast<size_t>(right)];
    if (next[pos] >= 0) prev[static_cast<size_t>(next[pos])] = c.pos;
    push(prev[pos]);
    push(c.pos);
  }
  for (int32_t k = 0; k >= 0; k = next[static_cast<size_t>(k)]) out.push_back(symbols[static_cast<size_t>(k)]);
}

// Pre-tokenises text (no added tokens inside) with the split pattern and BPE-encodes every piece.
void Tokenizer::Impl::encode_text(const std::string& text, std::vector<int32_t>& out) const {
  std::u32string cps = unicode::decode_utf8(text, "text");
  if (add_prefix_space && !cps.empty() && cps.front() != ' ') cps.insert(cps.begin(), U' ');
  for (size_t i = 0; i < cps.size();) {
    const size_t end = match_at(pattern, cps, i);
    encode_word(unicode::encode_utf8(cps.substr(i, end - i)), out);
    i = end;
  }
}

void Tokenizer::Impl::parse_added_tokens(const json& j) {
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) fail("field 'added_tokens' is not a list");
    for (const auto& a : j["added_tokens"]) {
      AddedToken t;
      t.content = json_string(a, "content");
      if (t.content.empty() || !a.contains("id") || !a["id"].is_number_integer()) {
        fail("field 'added_tokens': entry " + a.dump() + " lacks a content string or an integer id");
      }
      t.id = a["id"].get<int32_t>();
      t.special = json_bool(a, "special");
      t.single_word = json_bool(a, "single_word");
      t.lstrip = json_bool(a, "lstrip");
      t.rstrip = json_bool(a, "rstrip");
      t.normalized = json_bool(a, "normalized", !t.special);
      add_id(t.id, t.content);
      is_special[static_cast<size_t>(t.id)] = t.special;
      added.push_back(std::move(t));
    }
  }
  for (int32_t id : prefix_ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token.size()) fail("post_processor id " + std::to_string(id) + " is not a token");
  }
  for (int32_t id : suffix_ids) {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token.size()) fail("post_processor id " + std::to_string(id) + " is not a token");
  }
}

Tokenizer::Tokenizer() : impl_(std::make_unique<Impl>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  Tokenizer tok;
  Impl& impl = *tok.impl_;
  impl.path = tokenizer_json_path;
  std::ifstream in(tokenizer_json_path, std::ios::binary);
  if (!in) throw FileError(tokenizer_json_path, std::string("cannot open: ") + std::strerror(errno));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw FileError(tokenizer_json_path, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) impl.fail("not a JSON object");
  try {
    impl.parse_model(j.contains("model") ? j["model"] : json());
    impl.parse_normalizer(j.contains("normalizer") ? j["normalizer"] : json());
    if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null()) {
      throw Unsupported("tokenizer without a pre_tokenizer in " + tokenizer_json_path + " (byte-level BPE needs ByteLevel)");
    }
    impl.parse_pre_tokenizer(j["pre_tokenizer"]);
    impl.parse_decoder(j.contains("decoder") ? j["decoder"] : json());
    impl.parse_post_processor(j.contains("post_processor") ? j["post_processor"] : json());
    impl.parse_added_tokens(j);
  } catch (const json::exception& e) {
    // A field of the wrong JSON type somewhere the parsers above read without checking.
    impl.fail(std::string("malformed field: ") + e.what());
  }
  return tok;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  const Impl& impl = *impl_;
  unicode::decode_utf8(text, "text");  // reject malformed input before anything else
  std::vector<Segment> segments = impl.split_added({{text, -1}}, false);
  if (impl.nfc) {
    for (Segment& s : segments) {
      if (s.added_id < 0) s.text = unicode::encode_utf8(unicode::nfc(unicode::decode_utf8(s.text, "text")));
    }
  }
  segments = impl.split_added(segments, true);
  std::vector<int32_t> ids = impl.prefix_ids;
  for (const Segment& s : segments) {
    if (s.added_id >= 0) {
      ids.push_back(s.added_id);
    } else {
      impl.encode_text(s.text, ids);
    }
  }
  ids.insert(ids.end(), impl.suffix_ids.begin(), impl.suffix_ids.end());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  const ByteLevelTable& table = byte_level();
  std::string bytes;
  for (int32_t id : ids) {
    // Ids without a token (a model's vocab is often padded past the tokenizer's) decode to
    // nothing, as in `tokenizers`.
    if (id < 0 || static_cast<size_t>(id) >= impl.id_to_token.size() || impl.id_to_token[static_cast<size_t>(id)].empty()) {
      continue;
    }
    if (skip_special_tokens && impl.is_special[static_cast<size_t>(id)]) continue;
    const std::string& token = impl.id_to_token[static_cast<size_t>(id)];
    // A token whose characters all come from the byte-level alphabet is bytes; any other (an added
    // token with, say, a space in it) is its own UTF-8 text.
    std::string token_bytes;
    bool all_mapped = true;
    for (char32_t c : unicode::decode_utf8(token, "token")) {
      const auto it = table.char_to_byte.find(c);
      if (it == table.char_to_byte.end()) {
        all_mapped = false;
        break;
      }
      token_bytes.push_back(static_cast<char>(it->second));
    }
    bytes += all_mapped ? token_bytes : token;
  }
  return unicode::utf8_lossy(bytes);
}

int32_t Tokenizer::token_id(const std::string& token) const {
  for (const auto& a : impl_->added) {
    if (a.content == token) return a.id;
  }
  const auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

}  // namespace fp8kv::engine

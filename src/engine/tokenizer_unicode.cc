#include "engine/tokenizer_unicode.h"

#include <algorithm>
#include <iterator>
#include <unordered_map>

#include "engine/tokenizer_unicode_data.h"
#include "fp8kv/error.h"

namespace fp8kv::engine::unicode {
namespace {

using unicode_data::Range;

template <size_t N>
bool in_ranges(const Range (&table)[N], char32_t c) {
  const auto it = std::upper_bound(std::begin(table), std::end(table), c,
                                   [](char32_t x, const Range& r) { return x < r.first; });
  return it != std::begin(table) && c <= std::prev(it)->last;
}

constexpr char32_t kReplacement = 0xFFFD;

// Hangul syllables are composed arithmetically (Unicode 3.12): S = SBase + (L*VCount + V)*TCount + T.
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

int combining_class(char32_t c) {
  const auto& table = unicode_data::kCombiningClasses;
  const auto it = std::upper_bound(std::begin(table), std::end(table), c,
                                   [](char32_t x, const unicode_data::ClassRange& r) { return x < r.first; });
  if (it == std::begin(table) || c > std::prev(it)->last) return 0;
  return std::prev(it)->combining_class;
}

const unicode_data::Decomposition* find_decomposition(char32_t c) {
  const auto& table = unicode_data::kDecompositions;
  const auto it = std::lower_bound(std::begin(table), std::end(table), c,
                                   [](const unicode_data::Decomposition& d, char32_t x) { return d.code_point < x; });
  return it != std::end(table) && it->code_point == c ? it : nullptr;
}

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const unicode_data::Decomposition* d = find_decomposition(c);
  if (!d) {
    out.push_back(c);
    return;
  }
  decompose(d->first, out);
  if (d->second != 0) decompose(d->second, out);
}

// The primary composite of (first, second), or 0.
char32_t compose(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 && second > kTBase &&
      second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  static const std::unordered_map<uint64_t, char32_t> pairs = [] {
    std::unordered_map<uint64_t, char32_t> m;
    for (const auto& d : unicode_data::kDecompositions) {
      if (d.composes) m.emplace((static_cast<uint64_t>(d.first) << 32) | d.second, d.code_point);
    }
    return m;
  }();
  const auto it = pairs.find((static_cast<uint64_t>(first) << 32) | second);
  return it == pairs.end() ? 0 : it->second;
}

// Length of a well-formed UTF-8 sequence starting at s[i] (Unicode Table 3-7), or 0.
size_t well_formed_length(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  const size_t n = s.size();
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return i + 1 < n && (b(i + 1) & 0xC0) == 0x80 ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (i + 1 >= n) return 0;
    const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    if (b(i + 1) < lo || b(i + 1) > hi) return 0;
    return i + 2 < n && (b(i + 2) & 0xC0) == 0x80 ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (i + 1 >= n) return 0;
    const unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    if (b(i + 1) < lo || b(i + 1) > hi) return 0;
    if (i + 2 >= n || (b(i + 2) & 0xC0) != 0x80) return 0;
    return i + 3 < n && (b(i + 3) & 0xC0) == 0x80 ? 4 : 0;
  }
  return 0;
}

// How many bytes of the ill-formed sequence at s[i] form one maximal subpart (W3C/Unicode
// "substitution of maximal subparts": a valid prefix of a sequence counts as one unit).
size_t maximal_subpart(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    need = 1;
  } else if (c >= 0xE0 && c <= 0xEF) {
    need = 2;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 3;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t len = 1;
  for (size_t k = 0; k < need && i + len < s.size(); ++k) {
    const unsigned char x = b(i + len);
    if (k == 0 ? (x < lo || x > hi) : (x & 0xC0) != 0x80) break;
    ++len;
  }
  return len;
}

char32_t decode_at(const std::string& s, size_t i, size_t len) {
  const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
  switch (len) {
    case 1: return b(i);
    case 2: return ((b(i) & 0x1F) << 6) | (b(i + 1) & 0x3F);
    case 3: return ((b(i) & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
    default: return ((b(i) & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
  }
}

}  // namespace

bool is_letter(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return in_ranges(unicode_data::kLetters, c);
}

bool is_number(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return in_ranges(unicode_data::kNumbers, c);
}

bool is_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::u32string decode_utf8(const std::string& text, const char* argument) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t len = well_formed_length(text, i);
    FP8KV_REQUIRE(len != 0, argument, "is not valid UTF-8 at byte ", i);
    out.push_back(decode_at(text, i, len));
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string encode_utf8(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const size_t len = well_formed_length(bytes, i);
    if (len != 0) {
      out.append(bytes, i, len);
      i += len;
    } else {
      append_utf8(out, kReplacement);
      i += maximal_subpart(bytes, i);
    }
  }
  return out;
}

std::u32string nfc(const std::u32string& text) {
  // Below U+0300 every code point is a starter that is its own NFC and composes with nothing
  // that precedes it, so such text is already normalised (the common case: skip the work).
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; })) return text;

  std::u32string d;
  d.reserve(text.size());
  for (char32_t c : text) decompose(c, d);
  // Canonical ordering: stable-sort every run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition: a character joins the last starter unless something between them
  // blocks it (a starter, or a mark of the same or higher class). last_class == -1 means nothing
  // stands between the starter and the current character.
  std::u32string out;
  out.reserve(d.size());
  std::ptrdiff_t starter = -1;
  int last_class = -1;
  for (char32_t c : d) {
    const int cc = combining_class(c);
    if (starter >= 0 && (last_class == -1 || last_class < cc)) {
      const char32_t composite = compose(out[static_cast<size_t>(starter)], c);
      if (composite != 0) {
        out[static_cast<size_t>(starter)] = composite;
        continue;
      }
    }
    if (cc == 0) {
      starter = static_cast<std::ptrdiff_t>(out.size());
      last_class = -1;
    } else {
      last_class = cc;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace fp8kv::engine::unicode

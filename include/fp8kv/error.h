// Errors raised at fp8kv's API edge.
//
// Arguments are validated once, where they enter the library; every failure names the argument and
// the rule it broke ("fp8kv: argument 'block_tables': entry [2][5] = 9000 is outside [0, 4096)").
// Past that edge the code trusts its inputs.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace fp8kv {

// Base class of everything fp8kv throws.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A caller passed an argument that breaks a documented rule (shape, dtype, range, finiteness).
class InvalidArgument : public Error {
 public:
  InvalidArgument(std::string argument, const std::string& rule)
      : Error("fp8kv: argument '" + argument + "': " + rule), argument_(std::move(argument)) {}
  const std::string& argument() const { return argument_; }

 private:
  std::string argument_;
};

// The paged cache has no free block for a request. Recoverable: nothing was written, no other
// sequence was touched, and the caller may free sequences or preempt and try again.
class CacheFullError : public Error {
 public:
  explicit CacheFullError(const std::string& what) : Error("fp8kv: cache full: " + what) {}
};

// A file (checkpoint, config, tokenizer) is missing, truncated or inconsistent.
class FileError : public Error {
 public:
  FileError(const std::string& path, const std::string& what) : Error("fp8kv: " + path + ": " + what) {}
};

// Something is not supported by this build or this device (e.g. a head dim with no kernel).
class Unsupported : public Error {
 public:
  explicit Unsupported(const std::string& what) : Error("fp8kv: unsupported: " + what) {}
};

namespace detail {
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}
}  // namespace detail

// Throws InvalidArgument(argument, rule...) unless `condition` holds. The rule parts are streamed
// together, so numbers can be interpolated: FP8KV_REQUIRE(d > 0, "head_dim", "must be > 0, got ", d).
#define FP8KV_REQUIRE(condition, argument, ...)                                   \
  do {                                                                            \
    if (!(condition)) {                                                           \
      throw ::fp8kv::InvalidArgument((argument), ::fp8kv::detail::concat(__VA_ARGS__)); \
    }                                                                             \
  } while (0)

}  // namespace fp8kv

// Checks that a call is rejected with the error a user would need: the exception type, the
// argument it names, and the words of its message. Shared by the test suites.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "fp8kv/error.h"

namespace fp8kv::testing {

inline void expect_message_contains(const std::exception& e, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\n  lacks: " << p;
}

// Expects `fn` to throw E whose message contains every one of `parts`.
template <typename E, typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "nothing thrown";
  } catch (const E& e) {
    expect_message_contains(e, parts);
  }
}

// Expects `fn` to throw InvalidArgument naming `argument`, whose message contains every one of `parts`.
template <typename Fn>
void expect_invalid_argument(Fn fn, const std::string& argument, const std::vector<std::string>& parts = {}) {
  try {
    fn();
    ADD_FAILURE() << "accepted bad '" << argument << "'";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
    expect_message_contains(e, parts);
  }
}

}  // namespace fp8kv::testing

// Running a helper program (the benchmarks' Python peer scripts) and capturing what it prints.
#pragma once

#include <string>

namespace fp8kv::cli {

// Runs `command` through the shell and returns its exit status (as pclose reports it), with its
// standard output in `*output`; -1 when it could not be started.
int run_and_capture(const std::string& command, std::string* output);

}  // namespace fp8kv::cli

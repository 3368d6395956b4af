#include "cli/subprocess.h"

#include <cstdio>

namespace fp8kv::cli {

int run_and_capture(const std::string& command, std::string* output) {
  output->clear();
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  while (fgets(buffer, sizeof(buffer), pipe) != nullptr) *output += buffer;
  return pclose(pipe);
}

}  // namespace fp8kv::cli

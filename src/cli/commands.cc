#include "cli/commands.h"

namespace fp8kv::cli {

void register_commands(CLI::App& app) {
  (void)app;
}

}  // namespace fp8kv::cli

#include "cli/commands.h"

namespace fp8kv::cli {

void register_commands(CLI::App& app) {
  register_plan(app);
  register_bench(app);
  register_run(app);
  (void)app;
}

}  // namespace fp8kv::cli

// fp8kv command-line program: subcommands are registered by src/cli/*.cc.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.h"
#include "fp8kv/error.h"

int main(int argc, char** argv) {
  CLI::App app{"fp8kv: FP8 KV cache and attention kernels for LLM inference"};
  app.require_subcommand(1);
  fp8kv::cli::register_commands(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const fp8kv::Error& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
  return 0;
}

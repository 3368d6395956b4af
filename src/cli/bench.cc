// `fp8kv bench <what>`: the benchmarks. Each kind registers itself from its own file.
#include "cli/commands.h"

namespace fp8kv::cli {

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks against the ceilings and peers measured in the same run");
  bench->require_subcommand(1);
  register_bench_decode(*bench);
  register_bench_prefill(*bench);
  register_bench_engine(*bench);
  (void)bench;
}

}  // namespace fp8kv::cli

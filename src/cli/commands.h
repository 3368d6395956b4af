// Registration of the fp8kv subcommands. Each subcommand lives in its own src/cli/<name>.cc and
// adds itself to the app here; the callbacks run inside CLI11's parse, so fp8kv::Error thrown
// there is reported by main() with exit code 2.
#pragma once

#include <CLI/CLI.hpp>

namespace fp8kv::cli {

void register_commands(CLI::App& app);

void register_plan(CLI::App& app);    // plan.cc
void register_run(CLI::App& app);     // run.cc
void register_bench(CLI::App& app);   // bench.cc: creates `bench`, then calls the three below
void register_bench_decode(CLI::App& bench);   // bench_decode.cc
void register_bench_prefill(CLI::App& bench);  // bench_prefill.cc
void register_bench_engine(CLI::App& bench);   // bench_engine.cc

}  // namespace fp8kv::cli

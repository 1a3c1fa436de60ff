#include <CLI/CLI.hpp>
#include "tools/commands.h"
namespace defkv::cli {
Handler register_run(CLI::App& app) {
  app.add_subcommand("run", "(not yet implemented)");
  return [] { return 2; };
}
}  // namespace defkv::cli

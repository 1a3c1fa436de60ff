#include <CLI/CLI.hpp>
#include "tools/commands.h"
namespace defkv::cli {
Handler register_quantize(CLI::App& app) {
  app.add_subcommand("quantize", "(not yet implemented)");
  return [] { return 2; };
}
}  // namespace defkv::cli

// defkv: command-line front end. A thin user of the library; each subcommand
// lives in its own cmd_*.cpp.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "tools/commands.h"
#include "tools/flag_checks.h"

int main(int argc, char** argv) {
  CLI::App app{"defkv: LLM inference on CPUs with a bounded, DefensiveKV-evicted KV cache"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("defkv ") + DEFKV_VERSION);

  std::vector<std::pair<CLI::App*, defkv::cli::Handler>> commands;
  auto add = [&](defkv::cli::Handler (*reg)(CLI::App&)) {
    size_t before = app.get_subcommands({}).size();
    defkv::cli::Handler h = reg(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) commands.emplace_back(subs.back(), std::move(h));
  };
  add(defkv::cli::register_run);
  add(defkv::cli::register_quantize);
  add(defkv::cli::register_synth);
  add(defkv::cli::register_bench);
  add(defkv::cli::register_chat);
  add(defkv::cli::register_eval);
  add(defkv::cli::register_tokenize);
  defkv::cli::check_numeric_flags(app);

  // CLI11 reports an unknown first word only as "a subcommand is required";
  // name it instead.
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (auto& [sub, handler] : commands) {
      known = known || sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "defkv: error: unknown command '%s' (commands: %s; see defkv --help)\n", argv[1],
                   names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, handler] : commands)
      if (sub->parsed()) return handler();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "defkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}

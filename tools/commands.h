// Subcommand registration for the defkv CLI. Each cmd_*.cpp adds one
// subcommand to the app and returns the handler to run when it is chosen.
#pragma once

#include <functional>

namespace CLI { class App; }

namespace defkv::cli {

using Handler = std::function<int()>;

Handler register_run(CLI::App& app);
Handler register_quantize(CLI::App& app);
Handler register_synth(CLI::App&);
Handler register_bench(CLI::App&);
Handler register_chat(CLI::App&);
Handler register_eval(CLI::App&);
Handler register_tokenize(CLI::App&);

}  // namespace defkv::cli

// KV-cache flags shared by `defkv run`, `defkv bench` and `defkv eval`:
// registration (one help text per flag), conversion to the C API's
// defkv_context_params (run, bench) or engine::ContextParams (eval, which
// drives the evaluation library directly), and validation: the engine's
// (engine::validate_params, its message naming the flag) plus the refusal of
// flags that would do nothing.
//
//   --kv-budget N | --kv-ratio R | --kv-mem SIZE   at most one: the KV budget
//   --kv-policy P       eviction policy (needs a budget unless 'full')
//   --kv-schedule S     oneshot | bounded
//   --kv-type T         f16 | f32 | q8_0
//   --kv-window W, --kv-pool K, --kv-sinks S, --chunk N
#pragma once

#include <cstdint>
#include <string>

#include "runtime/api/defkv.h"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace defkv::engine {
struct ContextParams;
}

namespace defkv::cli {

struct KvFlags {
  int64_t budget_tokens = 0;  // --kv-budget: entries per (layer, KV head) on average
  double ratio = 0;           // --kv-ratio: fraction of the prompt kept
  std::string mem;            // --kv-mem: "256M", "1G", "65536" (binary units)
  std::string type = "f16";   // --kv-type
  std::string policy = "defensivekv";
  std::string schedule;       // "": the default (bounded with a budget)
  int window_tokens = 32;     // --kv-window
  int pool_kernel = 5;        // --kv-pool
  int sink_tokens = 4;        // --kv-sinks
  int chunk_tokens = 0;       // --chunk (0: the default)

  CLI::Option* opt_budget = nullptr;  // null when the budget flags are not registered
  CLI::Option* opt_ratio = nullptr;
  CLI::Option* opt_mem = nullptr;
  CLI::Option* opt_policy = nullptr;
  CLI::Option* opt_schedule = nullptr;

  // A budget flag was given on the command line.
  bool has_budget() const;
  // --kv-mem in bytes (0 when not given).
  int64_t mem_bytes() const;
  // "full" without a budget, else the --kv-policy value.
  std::string effective_policy() const;
};

struct KvFlagSet {
  bool budget = true;           // --kv-budget/--kv-ratio/--kv-mem/--kv-policy/--kv-schedule
  const char* default_type = "f16";
  const char* ratio_help = "the prompt";  // what --kv-ratio is a fraction of
};

// Registers the flags on `sub`, storing into `f` (which must outlive the parse).
void add_kv_flags(CLI::App* sub, KvFlags& f, const KvFlagSet& set = {});

// "256M", "1.5G", "64K", "4096" -> bytes (K/M/G binary; optional B/KiB/KB...).
// Throws std::invalid_argument naming `flag`.
int64_t parse_bytes(const std::string& s, const std::string& flag = "--kv-mem");

// Validates the flags and writes the KV fields of *p (budget, policy,
// schedule, type, window, sinks, pool, prefill chunk, interim policy); other
// fields are left as they are. Throws std::invalid_argument naming the flag.
void apply_kv_flags(const KvFlags& f, defkv_context_params* p);

// The same for the engine (eval): writes the KV fields of *cp.
void apply_kv_flags(const KvFlags& f, engine::ContextParams* cp);

// Names of the C API's enums, as the flags spell them ("?" when unknown).
const char* policy_name(int32_t policy);  // defkv_kv_policy
const char* kv_type_name(int32_t type);   // defkv_kv_type

}  // namespace defkv::cli

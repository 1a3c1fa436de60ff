// KV-cache flags shared by run, bench and eval (see kv_flags.h).
#include "tools/kv_flags.h"

#include <CLI/CLI.hpp>

#include <stdexcept>
#include <string>

#include "runtime/engine/params.h"
#include "tools/flag_checks.h"

namespace defkv::cli {
namespace {

std::vector<std::string> policy_names() {
  std::vector<std::string> v;
  for (const evict::PolicyTraits& t : evict::policies()) v.push_back(t.name);
  return v;
}

// Integer > 0 with a readable message (defkv::cli::positive() prints DBL_MAX).
const CLI::Validator kPositiveInt(
    [](std::string& s) -> std::string {
      try {
        size_t used = 0;
        const long long v = std::stoll(s, &used);
        if (used == s.size() && v > 0) return {};
      } catch (const std::exception&) {
      }
      return "must be a positive integer (got '" + s + "')";
    },
    "POSITIVE");

const CLI::Validator kByteSize(
    [](std::string& s) -> std::string {
      try {
        parse_bytes(s);
        return {};
      } catch (const std::exception& e) {
        std::string msg = e.what();
        const std::string prefix = "--kv-mem: ";
        return msg.rfind(prefix, 0) == 0 ? msg.substr(prefix.size()) : msg;
      }
    },
    "SIZE");

int32_t api_policy(const std::string& s, const char* flag) {
  const int32_t p = defkv_kv_policy_from_name(s.c_str());
  if (p < 0) throw std::invalid_argument(std::string(flag) + ": unknown policy " + s);
  return p;
}

// The flag of an engine::ContextParams member (engine::ParamError::field).
std::string flag_name(const std::string& field) {
  static const std::pair<const char*, const char*> names[] = {
      {"budget_tokens", "--kv-budget"},   {"kv_ratio", "--kv-ratio"},         {"kv_mem_bytes", "--kv-mem"},
      {"kv_type", "--kv-type"},           {"evict.policy", "--kv-policy"},    {"evict.window", "--kv-window"},
      {"evict.kernel", "--kv-pool"},      {"evict.n_sink", "--kv-sinks"},
      {"chunk_tokens", "--chunk"}};
  for (const auto& [engine_name, flag] : names)
    if (field == engine_name) return flag;
  return field;
}

int32_t api_type(const std::string& s) {
  if (s == "f16") return DEFKV_KV_F16;
  if (s == "f32") return DEFKV_KV_F32;
  if (s == "q8_0") return DEFKV_KV_Q8_0;
  throw std::invalid_argument("--kv-type: unknown type " + s + " (f16, f32 or q8_0)");
}

void to_engine(const KvFlags& f, engine::ContextParams* cp);

// Flags that would do nothing are refused (a policy without a budget; the
// engine ignores it);
// then the engine validates the parameters, and its message names the flag.
void check_flags(const KvFlags& f) {
  const bool policy_given = f.opt_policy && f.opt_policy->count() > 0;
  if (!f.has_budget() && policy_given && f.policy != "full")
    throw std::invalid_argument("--kv-policy " + f.policy +
                                " needs a KV budget (--kv-budget, --kv-ratio or --kv-mem)");
  engine::ContextParams cp;
  to_engine(f, &cp);
  try {
    engine::validate_params(cp);
  } catch (const engine::ParamError& e) {
    throw std::invalid_argument(flag_name(e.field) + " " + e.rest);
  }
}

}  // namespace

const char* policy_name(int32_t policy) {
  const char* n = defkv_kv_policy_name(policy);
  return n ? n : "?";
}

const char* kv_type_name(int32_t type) {
  switch (type) {
    case DEFKV_KV_F16: return "f16";
    case DEFKV_KV_F32: return "f32";
    case DEFKV_KV_Q8_0: return "q8_0";
  }
  return "?";
}

bool KvFlags::has_budget() const {
  auto given = [](const CLI::Option* o) { return o && o->count() > 0; };
  return given(opt_budget) || given(opt_ratio) || given(opt_mem);
}

int64_t KvFlags::mem_bytes() const { return opt_mem && opt_mem->count() ? parse_bytes(mem) : 0; }

std::string KvFlags::effective_policy() const { return has_budget() ? policy : "full"; }

int64_t parse_bytes(const std::string& s, const std::string& flag) {
  if (s.empty()) throw std::invalid_argument(flag + ": empty size");
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    throw std::invalid_argument(flag + ": '" + s + "' is not a size (e.g. 256M, 1G, 65536)");
  }
  const std::string suf = s.substr(used);
  double mul = 1;
  if (suf == "" || suf == "B") mul = 1;
  else if (suf == "K" || suf == "k" || suf == "KiB" || suf == "KB") mul = 1024.0;
  else if (suf == "M" || suf == "m" || suf == "MiB" || suf == "MB") mul = 1024.0 * 1024;
  else if (suf == "G" || suf == "g" || suf == "GiB" || suf == "GB") mul = 1024.0 * 1024 * 1024;
  else throw std::invalid_argument(flag + ": unknown unit '" + suf + "' in '" + s + "' (use K, M or G)");
  if (!(v > 0)) throw std::invalid_argument(flag + ": size must be positive (got '" + s + "')");
  if (v * mul >= 9.2e18) throw std::invalid_argument(flag + ": size '" + s + "' is too large");
  return int64_t(v * mul);
}

void add_kv_flags(CLI::App* sub, KvFlags& f, const KvFlagSet& set) {
  f.type = set.default_type;
  if (set.budget) {
    f.opt_budget = sub->add_option("--kv-budget", f.budget_tokens,
                                   "KV budget in tokens per (layer, KV head) on average: enables eviction; at "
                                   "least --kv-window + --kv-sinks (unset: full cache, no eviction)")
                       ->check(kPositiveInt)
                       ->default_str("");
    f.opt_ratio = sub->add_option("--kv-ratio", f.ratio,
                                  std::string("KV budget as the fraction of ") + set.ratio_help +
                                      " kept, in (0, 1] (0.2 keeps 20%); fixed when the first prompt is evaluated")
                      ->check(CLI::Range(1e-9, 1.0))
                      ->default_str("");
    f.opt_mem = sub->add_option("--kv-mem", f.mem,
                                "KV budget as a ceiling on the KV pool's memory, e.g. 256M, 1.5G, 65536 "
                                "(binary units K/M/G); the budget is the most tokens per head that fit")
                    ->check(kByteSize)
                    ->default_str("");
    f.opt_budget->excludes(f.opt_ratio)->excludes(f.opt_mem);
    f.opt_ratio->excludes(f.opt_mem);
    f.opt_policy = sub->add_option("--kv-policy", f.policy,
                                   "Eviction policy; needs a budget unless 'full'. defensivekv: worst-case "
                                   "(max) attention score per entry, head-adaptive budget; layer-defensivekv: "
                                   "also layer-adaptive; criticalkv, adakv, snapkv: the baselines; streaming: "
                                   "sinks + most recent")
                       ->check(CLI::IsMember(policy_names()))
                       ->capture_default_str();
    f.opt_schedule = sub->add_option("--kv-schedule", f.schedule,
                    "When eviction runs. bounded (default with a budget): chunked prefill and decode-time "
                    "evictions keep resident KV under budget + one chunk; oneshot (the paper's): prefill "
                    "everything, compress once, no eviction while decoding")
        ->check(CLI::IsMember({"oneshot", "bounded"}));
  }
  sub->add_option("--kv-type", f.type, "KV cache element type: f16, f32 or q8_0")
      ->check(CLI::IsMember({"f16", "f32", "q8_0"}))
      ->capture_default_str();
  sub->add_option("--kv-window", f.window_tokens,
                  "Observation window W: the newest W queries score the entries and are always kept")
      ->check(kPositiveInt)
      ->capture_default_str();
  sub->add_option("--kv-pool", f.pool_kernel, "Score pooling kernel along positions (odd)")
      ->check(kPositiveInt)
      ->capture_default_str();
  sub->add_option("--kv-sinks", f.sink_tokens, "Streaming policy: the first tokens, always kept (0: none); every policy counts them in the minimum budget")
      ->check(defkv::cli::non_negative())
      ->capture_default_str();
  sub->add_option("--chunk", f.chunk_tokens,
                  "Prefill chunk in tokens per forward pass (0: with the bounded schedule a third of the budget "
                  "in multiples of 64, between max(64, 2*window) and 256, so resident KV stays within budget + a "
                  "third; else 256)")
      ->check(defkv::cli::non_negative())
      ->capture_default_str();
}

void apply_kv_flags(const KvFlags& f, defkv_context_params* p) {
  check_flags(f);
  p->kv_budget_tokens = 0;
  p->kv_ratio = 0;
  p->kv_mem_bytes = 0;
  if (f.opt_budget && f.opt_budget->count()) p->kv_budget_tokens = f.budget_tokens;
  if (f.opt_ratio && f.opt_ratio->count()) p->kv_ratio = f.ratio;
  if (f.opt_mem && f.opt_mem->count()) p->kv_mem_bytes = parse_bytes(f.mem);
  if (f.has_budget()) p->kv_policy = api_policy(f.policy, "--kv-policy");
  p->kv_schedule = f.schedule == "oneshot"   ? DEFKV_SCHEDULE_ONESHOT
                   : f.schedule == "bounded" ? DEFKV_SCHEDULE_BOUNDED
                                             : DEFKV_SCHEDULE_DEFAULT;
  p->kv_type = api_type(f.type);
  p->kv_window = uint32_t(f.window_tokens);
  p->kv_sinks = int32_t(f.sink_tokens);  // 0: no sinks
  p->kv_pool = uint32_t(f.pool_kernel);
  p->prefill_chunk_tokens = uint32_t(f.chunk_tokens);  // 0: the engine's default
}

void apply_kv_flags(const KvFlags& f, engine::ContextParams* cp) {
  check_flags(f);
  to_engine(f, cp);
}

namespace {

void to_engine(const KvFlags& f, engine::ContextParams* cp) {
  if (!quant::parse_dtype(f.type, &cp->kv_type)) throw std::invalid_argument("--kv-type: unknown type " + f.type);
  cp->evict.window = uint32_t(f.window_tokens);
  cp->evict.kernel = uint32_t(f.pool_kernel);
  cp->evict.n_sink = uint32_t(f.sink_tokens);
  cp->chunk_tokens = uint32_t(f.chunk_tokens);
  cp->budget_tokens.reset();
  cp->kv_ratio.reset();
  cp->kv_mem_bytes.reset();
  cp->schedule.reset();
  cp->evict.policy = evict::Policy::full;
  if (!f.has_budget()) return;
  if (f.opt_budget->count()) cp->budget_tokens = f.budget_tokens;
  if (f.opt_ratio->count()) cp->kv_ratio = f.ratio;
  if (f.opt_mem->count()) cp->kv_mem_bytes = parse_bytes(f.mem);
  if (!evict::parse_policy(f.policy, &cp->evict.policy))
    throw std::invalid_argument("--kv-policy: unknown policy " + f.policy);
  if (!f.schedule.empty()) {
    engine::Schedule s;
    if (!engine::parse_schedule(f.schedule, &s)) throw std::invalid_argument("--kv-schedule: unknown " + f.schedule);
    cp->schedule = s;
  }
}

}  // namespace

}  // namespace defkv::cli

// The policy table: every policy's name and traits, in one place.
#include <array>

#include "runtime/evict/evict.h"

namespace defkv::evict {
namespace {

//                                 policy                      name                 scored vnorm  defens layer
constexpr std::array<PolicyTraits, 7> kPolicies = {{
    {Policy::full,              "full",              false, false, false, false},
    {Policy::streaming,         "streaming",         false, false, false, false},
    {Policy::snapkv,            "snapkv",            true,  false, false, false},
    {Policy::adakv,             "adakv",             true,  false, false, false},
    {Policy::criticalkv,        "criticalkv",        true,  true,  false, false},
    {Policy::defensivekv,       "defensivekv",       true,  true,  true,  false},
    {Policy::layer_defensivekv, "layer-defensivekv", true,  true,  true,  true},
}};

}  // namespace

std::span<const PolicyTraits> policies() { return kPolicies; }

const PolicyTraits& traits(Policy p) {
  for (const PolicyTraits& t : kPolicies)
    if (t.policy == p) return t;
  return kPolicies[0];  // unreachable for a valid enum value
}

const char* policy_name(Policy p) { return traits(p).name; }

bool parse_policy(std::string_view s, Policy* out) {
  for (const PolicyTraits& t : kPolicies)
    if (s == t.name) { *out = t.policy; return true; }
  if (s == "layer_defensivekv") { *out = Policy::layer_defensivekv; return true; }
  return false;
}

}  // namespace defkv::evict

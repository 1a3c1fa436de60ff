#include "tools/flag_checks.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>

namespace defkv::cli {
namespace {

std::string trimmed(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t") - b + 1);
}

// strtoll/strtoull with base 0, as CLI11 converts; "" when the value fits or
// is not a number at all (CLI11 then reports it).
std::string integer_error(const std::string& in, bool is_unsigned) {
  const std::string s = trimmed(in);
  if (s.empty()) return "";
  if (is_unsigned && s[0] == '-') return "must not be negative (got " + s + ")";
  errno = 0;
  char* end = nullptr;
  if (is_unsigned) (void)std::strtoull(s.c_str(), &end, 0);
  else (void)std::strtoll(s.c_str(), &end, 0);
  if (end == s.c_str()) return "";
  if (errno == ERANGE) return "is out of range (got " + s + ")";
  return "";
}

std::string float_error(const std::string& in) {
  const std::string s = trimmed(in);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str()) return "";
  if (!std::isfinite(v)) return "must be a finite number (got " + s + ")";
  return "";
}

void walk(CLI::App& app) {
  for (CLI::Option* o : app.get_options()) {
    // The declared type: get_type_name() appends the validators' descriptions
    // ("UINT:NONNEGATIVE").
    const std::string full = o->get_type_name();
    const std::string type = full.substr(0, full.find(':'));
    if (type == "UINT" || type == "INT") {
      const bool is_unsigned = type == "UINT";
      o->check(CLI::Validator(
          [is_unsigned](std::string& v) { return integer_error(v, is_unsigned); },
          "", "integer range"));
    } else if (type == "FLOAT") {
      o->check(CLI::Validator(
          [](std::string& v) { return float_error(v); },
          "", "finite"));
    }
    if (o->check_name("--threads") && (type == "UINT" || type == "INT")) {
      o->check(CLI::Validator(
          [](std::string& v) {
            const long long n = std::strtoll(trimmed(v).c_str(), nullptr, 0);
            if (n < 0 || n > kMaxThreads)
              return "must be in [0, " + std::to_string(kMaxThreads) + "] (got " + trimmed(v) + ")";
            return std::string();
          },
          "", "thread count"));
    }
  }
  for (CLI::App* sub : app.get_subcommands({})) walk(*sub);
}

}  // namespace

void check_numeric_flags(CLI::App& app) { walk(app); }

namespace {

// value > 0 (strict) or >= 0; a value that is not a number passes (CLI11
// reports it).
CLI::Validator sign_check(bool strict, const char* tag, const char* name) {
  return CLI::Validator(
      [strict](std::string& v) {
        const std::string s = trimmed(v);
        char* end = nullptr;
        const double x = std::strtod(s.c_str(), &end);
        if (end != s.c_str() && !(strict ? x > 0 : x >= 0))
          return std::string(strict ? "must be > 0" : "must be >= 0") + " (got " + s + ")";
        return std::string();
      },
      tag, name);
}

}  // namespace

CLI::Validator non_negative() { return sign_check(false, "NONNEGATIVE", "non-negative"); }

CLI::Validator positive() { return sign_check(true, "POSITIVE", "positive"); }

}  // namespace defkv::cli

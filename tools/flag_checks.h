// Checks every numeric flag of the CLI gets, whatever subcommand defines it
// (CLI11 converts integers but lets 64-bit overflow and a negative value of
// an unsigned flag wrap, and accepts nan/inf for floats).
#pragma once

#include <CLI/CLI.hpp>

namespace defkv::cli {

// Most threads a --threads flag accepts: more than any CPU this runs on, far
// fewer than would exhaust memory with thread stacks.
constexpr long kMaxThreads = 1024;

// Adds to every option of app and its subcommands, by the option's type:
// integers: the value must fit (no wrap-around), unsigned ones must not be
// negative; floating point: the value must be finite. --threads / -t options
// are limited to [0, kMaxThreads].
void check_numeric_flags(CLI::App& app);

// value >= 0, with a message that says so (CLI::NonNegativeNumber prints the
// whole range up to DBL_MAX).
CLI::Validator non_negative();
// value > 0, likewise.
CLI::Validator positive();

}  // namespace defkv::cli

#!/usr/bin/env bash
# The whole Catch2 suite under AddressSanitizer + UBSan, and the concurrency
# tests (contexts sharing one model, cancel and misuse from another thread)
# under ThreadSanitizer. Too slow for CI beside the rest (a full sanitized
# build and a several-times slower suite on 2 cores): run it before a
# submission and report its last line. Run from anywhere:
#   scripts/test-sanitizers.sh            (both)
#   scripts/test-sanitizers.sh asan|tsan  (one)
# Build directories: build-asan (shared with scripts/test.d/api.sh) and
# build-tsan; logs in them under test-logs/. Prints a line per program and
# "N passed, N failed"; exit status non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export DEFKV_SHARED="${DEFKV_SHARED:-$ROOT/../shared}"
which=${1:-all}
total_pass=0
total_fail=0
# shellcheck source=scripts/run_catch.sh
source scripts/run_catch.sh
# Sanitized programs run several times slower: an hour each before a program
# counts as hung. DEFKV_SANITIZE asks the heaviest sweeps for a smaller subset
# (test_archs' GQA sweep); the normal suite runs them whole.
CATCH_TIMEOUT=3600
export DEFKV_SANITIZE=1

# setup_build DIR SANITIZER: configures DIR once (oneDNN off: it is not
# instrumented, and its JIT code confuses the sanitizers).
setup_build() {
  if [[ ! -f "$1/build.ninja" ]]; then
    mkdir -p "$1"
    meson setup "$1" -Doptimization=1 -Ddebug=false -Db_sanitize="$2" -Db_lundef=false -Donednn=disabled \
      >"$1/setup.log" 2>&1 || { cat "$1/setup.log"; return 1; }
  fi
}

if [[ $which == all || $which == asan ]]; then
  B=build-asan
  LOG_DIR="$B/test-logs"
  if setup_build "$B" address,undefined && mkdir -p "$LOG_DIR" &&
     nice ninja -C "$B" >"$LOG_DIR/build.log" 2>&1; then
    export ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
    for exe in "$B"/tests/test_*; do
      [[ -x "$exe" && -f "$exe" ]] || continue
      DEFKV_BUILD="$ROOT/$B" run_catch "asan-ubsan:$(basename "$exe")" "$exe"
    done
    unset ASAN_OPTIONS UBSAN_OPTIONS
  else
    tail -30 "$LOG_DIR/build.log"; echo "asan-ubsan build failed"; total_fail=$((total_fail + 1))
  fi
fi

if [[ $which == all || $which == tsan ]]; then
  B=build-tsan
  LOG_DIR="$B/test-logs"
  if setup_build "$B" thread && mkdir -p "$LOG_DIR" &&
     nice ninja -C "$B" tests/test_api tests/test_engine >"$LOG_DIR/build.log" 2>&1; then
    # libgomp is not instrumented: its barriers look like races to TSan. One
    # OpenMP thread per context keeps the parallel regions single-threaded, so
    # every thread TSan sees is one the API itself must make safe.
    export OMP_NUM_THREADS=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
    DEFKV_BUILD="$ROOT/$B" run_catch "tsan:test_api[threads]" "$B/tests/test_api" "[threads]"
    DEFKV_BUILD="$ROOT/$B" run_catch "tsan:test_api[cancel]" "$B/tests/test_api" "[cancel]"
    DEFKV_BUILD="$ROOT/$B" run_catch "tsan:test_api misuse" "$B/tests/test_api" "api: misuse returns errors and never crashes"
    unset OMP_NUM_THREADS TSAN_OPTIONS
  else
    tail -30 "$LOG_DIR/build.log"; echo "tsan build failed"; total_fail=$((total_fail + 1))
  fi
fi

if [[ $((total_pass + total_fail)) -eq 0 ]]; then echo "no test ran"; echo "0 passed, 1 failed"; exit 1; fi
echo "$total_pass passed, $total_fail failed"
[[ $total_fail -eq 0 ]]

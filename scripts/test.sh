#!/usr/bin/env bash
# Builds defkv (if needed) and runs the whole test suite: every Catch2 test
# program of the native build, then the kernel tests of an aarch64 (NEON)
# cross build under qemu-user when the cross toolchain is installed.
# Prints a per-program line and, last, "N passed, N failed" (test cases
# summed over all programs). Exit status is non-zero on any failure or when
# no test ran.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR="${DEFKV_BUILD_DIR:-build}"
export DEFKV_SHARED="${DEFKV_SHARED:-$ROOT/../shared}"
export DEFKV_BUILD="${DEFKV_BUILD:-$ROOT/$BUILD_DIR}"

if [[ ! -f "$BUILD_DIR/build.ninja" ]]; then
  meson setup "$BUILD_DIR" --buildtype=release >/dev/null || { echo "meson setup failed"; echo "0 passed, 1 failed"; exit 1; }
fi
if ! ninja -C "$BUILD_DIR" >"$BUILD_DIR/ninja.log" 2>&1; then
  tail -40 "$BUILD_DIR/ninja.log"
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

total_pass=0
total_fail=0
LOG_DIR="$BUILD_DIR/test-logs"
mkdir -p "$LOG_DIR"

# shellcheck source=scripts/run_catch.sh
source scripts/run_catch.sh

for exe in "$BUILD_DIR"/tests/test_*; do
  [[ -x "$exe" && -f "$exe" ]] || continue
  run_catch "$(basename "$exe")" "$exe"
done

# Extra suites (cross builds, sanitizers) hook in here.
for extra in scripts/test.d/*.sh; do
  [[ -f "$extra" ]] || continue
  # shellcheck source=/dev/null
  source "$extra"
done

if [[ $((total_pass + total_fail)) -eq 0 ]]; then
  echo "no test ran"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "$total_pass passed, $total_fail failed"
[[ $total_fail -eq 0 ]]

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

# run_catch NAME CMD... : runs one Catch2 program, adds its test-case counts.
run_catch() {
  local name=$1; shift
  local log="$LOG_DIR/$name.log"
  local start=$SECONDS
  timeout 1800 "$@" >"$log" 2>&1
  local rc=$?
  local pass=0 fail=0 line
  if line=$(grep -E '^All tests passed \(' "$log" | tail -1) && [[ -n "$line" ]]; then
    pass=$(sed -E 's/.* in ([0-9]+) test cases?\)/\1/' <<<"$line")
  elif line=$(grep -E '^test cases: ' "$log" | tail -1) && [[ -n "$line" ]]; then
    pass=$(sed -nE 's/.*\| *([0-9]+) passed.*/\1/p' <<<"$line"); pass=${pass:-0}
    fail=$(sed -nE 's/.*\| *([0-9]+) failed.*/\1/p' <<<"$line"); fail=${fail:-0}
  fi
  if [[ $rc -ne 0 && $fail -eq 0 ]]; then fail=1; fi   # crash, timeout or no summary
  total_pass=$((total_pass + pass)); total_fail=$((total_fail + fail))
  printf '%-28s %4d passed, %d failed  (%ds)\n' "$name" "$pass" "$fail" $((SECONDS - start))
  if [[ $fail -ne 0 ]]; then tail -60 "$log"; fi
}

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

# Sourced by scripts/test.sh and scripts/test-sanitizers.sh. Needs LOG_DIR,
# total_pass and total_fail set by the caller; CATCH_TIMEOUT (seconds per
# program, default 1800) may be set by it.
# run_catch NAME CMD... : runs one Catch2 program, adds its test-case counts.
run_catch() {
  local name=$1; shift
  local log="$LOG_DIR/$name.log"
  local start=$SECONDS
  timeout "${CATCH_TIMEOUT:-1800}" "$@" >"$log" 2>&1
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
